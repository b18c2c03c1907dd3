"""Keep the event loop free: blocking work runs in a bounded thread pool.

Two calls, one policy:

- ``await offload.run(func, *args)``: always off the loop (ledger calls, anything that
  may wait on a lock or a disk);
- ``await offload.run_sized(size, func, *args)``: inline when ``size`` (bytes of the
  input, e.g. ``len(raw_body)``) is at most ``inline_max``, off the loop otherwise. A
  PII scan of a 2 KB prompt costs less than the thread hop (~50 µs), a scan of 10 MB
  costs seconds: the common case stays fast, the rare one cannot freeze ``/healthz``.

At most ``max_threads`` calls run at once (an ``anyio.CapacityLimiter``); the rest wait
their turn without blocking the loop. A cancelled request does not abandon its thread:
the work (a settlement, say) finishes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

INLINE_MAX = 32 * 1024  # bytes: at or below this, run on the loop
MAX_THREADS = 8


class Offload:
    """One per app (``app.state.offload``); safe to share between requests."""

    def __init__(self, *, max_threads: int = MAX_THREADS, inline_max: int = INLINE_MAX) -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be >= 1")
        self.max_threads = max_threads
        self.inline_max = inline_max
        self._limiter: anyio.CapacityLimiter | None = None  # made inside the loop

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.max_threads)
        return self._limiter

    async def run(self, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` in a worker thread; its exception is raised here."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self.limiter)

    async def run_sized(self, size: int, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` inline if ``size <= inline_max``, else in a worker thread."""
        if size <= self.inline_max:
            return func(*args)
        return await self.run(func, *args)

    def inline(self, size: int) -> bool:
        """Whether :meth:`run_sized` would run an input of ``size`` bytes on the loop."""
        return size <= self.inline_max
