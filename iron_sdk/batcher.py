"""A background thread that hands queued items to a function in batches.

Used for work that must happen but need not delay the LLM call: ledger settlements
and audit lines. The thread wakes on the first item and waits ``window_s`` so that a
batch (one transaction, one ``write``) covers every call in that window; waking once per
window instead of once per call also keeps it from contending with the caller's thread.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("iron_sdk")
_live: weakref.WeakSet[Batcher] = weakref.WeakSet()  # type: ignore[type-arg]


class Batcher(Generic[T]):
    def __init__(self, handle: Callable[[list[T]], None], *, window_s: float = 0.02,
                 name: str = "iron-batcher") -> None:
        self.handle = handle
        self.window_s = window_s
        self.name = name
        self._queue: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        _live.add(self)

    def put(self, item: T) -> None:
        with self._idle:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name=self.name)
                # An empty context: a service thread started mid-session keeps no session.
                contextvars.Context().run(self._thread.start)
        self._queue.put(item)

    def flush(self) -> None:
        """Block until every item put so far has been handled."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            if self.window_s:
                time.sleep(self.window_s)
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self.handle(batch)
            except Exception:  # the handler logs its own failures; never stop the thread
                log.exception("%s: batch of %d failed", self.name, len(batch))
            finally:
                with self._idle:
                    self._pending -= len(batch)
                    self._idle.notify_all()


def _after_fork_in_child() -> None:
    # The writer thread does not exist in a forked child; what the parent queued is the
    # parent's to write. The child starts with empty queues and starts its own thread.
    for batcher in list(_live):
        batcher._idle = threading.Condition()
        batcher._queue = queue.SimpleQueue()
        batcher._pending = 0
        batcher._thread = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _flush_all() -> None:
    # Two passes: a ledger batch may emit events into the audit batcher after it drained.
    for _ in range(2):
        for batcher in list(_live):
            with contextlib.suppress(Exception):  # interpreter shutdown: best effort
                batcher.flush()
