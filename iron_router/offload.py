"""Keep the event loop free: blocking work runs in a bounded thread pool.

Two calls, one policy:

- ``await offload.run(func, *args)``: always off the loop (ledger calls, anything that
  may wait on a lock or a disk); ``size=len(raw)`` when the work reads a whole body (below);
- ``await offload.run_sized(size, func, *args)``: inline when ``size`` (bytes of the
  input, e.g. ``len(raw_body)``) is at most ``inline_max``, off the loop otherwise. A
  PII scan of a 2 KB prompt costs less than the thread hop (~50 µs), a scan of 10 MB
  costs seconds: the common case stays fast, the rare one cannot freeze ``/healthz``.

At most ``max_threads`` calls run at once (a ``ThreadPoolExecutor`` of that many threads,
through ``loop.run_in_executor``: on this 2-core machine a hop costs ~65 µs of wall time
against ~95 µs through ``anyio.to_thread``); the rest wait their turn without blocking the
loop. A cancelled request does not abandon its thread: the caller waits for the work (a
settlement, say) to finish, then the cancellation goes on.

A thread does not free the loop by itself: whoever runs Python holds the GIL, and one C
call (a regex search, a JSON parse, a pass of the cyclic garbage collector) holds it
until it returns. The PII scan searches long texts a window at a time
(:mod:`iron_sdk.safety.windows`); the collector is the other one. Scanning a 10 MB prompt
dense with PII keeps some 350 000 findings alive at once, and each full collection walks
all of them plus the router's own heap: 30-150 ms with the loop waiting, several times
over. So work on an input over ``hold_gc_over`` bytes (``run(..., size=len(raw))``)
runs with the collector's full passes held off (:func:`full_collections_held`); young
collections, which find most garbage, go on, and the first full pass after it finds the
findings freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

T = TypeVar("T")

INLINE_MAX = 32 * 1024  # bytes: at or below this, run on the loop
MAX_THREADS = 8
HOLD_GC_OVER = 1024 * 1024  # bytes: bigger inputs run with full collections held off
_NEVER = 1 << 30  # a threshold for the oldest generation that is never reached


class _CollectorHold:
    """Counts the blocks that hold full collections off; the first one in raises the
    oldest generation's threshold, the last one out restores it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._saved: tuple[int, int, int] = gc.get_threshold()

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._saved = gc.get_threshold()
                gc.set_threshold(self._saved[0], self._saved[1], _NEVER)
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    gc.set_threshold(*self._saved)


_hold = _CollectorHold()


def full_collections_held() -> AbstractContextManager[None]:
    """While the block runs (in any thread, nested or overlapping), the cyclic collector
    makes no full pass; young ones go on. While big calls overlap without a pause, full
    passes wait for the last of them."""
    return _hold.held()


class Offload:
    """One per app (``app.state.offload``); safe to share between requests."""

    def __init__(self, *, max_threads: int = MAX_THREADS, inline_max: int = INLINE_MAX,
                 hold_gc_over: int = HOLD_GC_OVER) -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be >= 1")
        self.max_threads = max_threads
        self.inline_max = inline_max
        self.hold_gc_over = hold_gc_over
        self._executor: ThreadPoolExecutor | None = None  # threads start on first use

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.max_threads,
                                                thread_name_prefix="iron-offload")
        return self._executor

    async def run(self, func: Callable[..., T], *args: object, size: int = 0) -> T:
        """``func(*args)`` in a worker thread; its exception is raised here. ``size``:
        bytes of its input; over ``hold_gc_over``, full collections wait until it is
        done (see the module docstring)."""
        loop = asyncio.get_running_loop()
        if size > self.hold_gc_over:
            done = loop.run_in_executor(self.executor, _held, func, args)
        else:
            done = loop.run_in_executor(self.executor, func, *args)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            while not done.done():  # the work is not abandoned: wait it out
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait((done,))
            if not done.cancelled():
                done.exception()  # retrieved: its outcome is nobody's now
            raise

    async def run_sized(self, size: int, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` inline if ``size <= inline_max``, else in a worker thread."""
        if size <= self.inline_max:
            return func(*args)
        return await self.run(func, *args, size=size)

    def inline(self, size: int) -> bool:
        """Whether :meth:`run_sized` would run an input of ``size`` bytes on the loop."""
        return size <= self.inline_max


def _held(func: Callable[..., T], args: tuple[object, ...]) -> T:
    with full_collections_held():
        return func(*args)
