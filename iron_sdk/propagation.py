"""Sessions follow the work: threads and pool tasks started in a session run in it.

Context variables do not follow a thread on their own. As OpenTelemetry's threading
instrumentation does for its context, :func:`install` wraps ``threading.Thread.start``
and ``concurrent.futures.ThreadPoolExecutor.submit`` so that the caller's whole
:mod:`contextvars` context (the session and every other variable) is copied and the
thread's ``run`` or the task runs inside the copy. That covers ``Thread`` and its
subclasses (``Timer``), ``ThreadPoolExecutor.submit``/``map``, ``loop.run_in_executor``
and ``asyncio.to_thread`` (which copies the context itself).

Nothing is copied unless a session is current: outside protected functions the
wrappers call the originals at once. Pool worker threads are started with no session,
so a pool first used inside a session does not keep that session for later tasks.
``import iron_sdk`` patches nothing; ``@protect_agent`` installs this on first use.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iron_sdk.session import _current

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

_lock = threading.Lock()
_originals: tuple[Callable[..., Any], Callable[..., Any]] | None = None  # start, submit


def installed() -> bool:
    return _originals is not None


def install() -> None:
    """Carry the session into threads and pool tasks started inside it (idempotent)."""
    global _originals
    if _originals is not None:
        return
    with _lock:
        if _originals is not None:
            return
        from concurrent.futures import ThreadPoolExecutor  # not imported by import iron_sdk

        start, submit = threading.Thread.start, ThreadPoolExecutor.submit

        def start_in_session(self: threading.Thread) -> None:
            if _current.get() is not None and self.ident is None:  # not started yet
                _run_in_copy(self)
            start(self)

        def submit_in_session(self: ThreadPoolExecutor, fn: Callable[..., Any], /,
                              *args: Any, **kwargs: Any) -> Future[Any]:
            if _current.get() is None:
                return submit(self, fn, *args, **kwargs)
            run = contextvars.copy_context().run
            token = _current.set(None)  # a worker this submit starts must not keep it
            try:
                return submit(self, run, fn, *args, **kwargs)
            finally:
                _current.reset(token)

        threading.Thread.start = start_in_session  # type: ignore[method-assign]
        ThreadPoolExecutor.submit = submit_in_session  # type: ignore[method-assign]
        _originals = (start, submit)


def uninstall() -> None:
    """Restore ``Thread.start`` and ``ThreadPoolExecutor.submit`` (for tests)."""
    global _originals
    with _lock:
        if _originals is None:
            return
        from concurrent.futures import ThreadPoolExecutor

        threading.Thread.start, ThreadPoolExecutor.submit = _originals  # type: ignore[method-assign]
        _originals = None


def _run_in_copy(thread: threading.Thread) -> None:
    """Make ``thread.run`` (its class's, whatever the subclass) run in a copy of this
    context; an instance attribute, so subclasses that override ``run`` are covered."""
    context = contextvars.copy_context()
    run = thread.run

    def run_in_context() -> None:
        try:
            context.run(run)
        finally:
            thread.__dict__.pop("run", None)  # no thread → closure → thread cycle left

    thread.run = run_in_context  # type: ignore[method-assign]
