"""A small file mapped into memory, shared by every process on the machine that maps it.

What processes sharing a SQLite ledger must agree on but need not keep (the limits
version, the rate windows) lives in one of these beside the ledger: reading and writing it
is a memory access, and :meth:`SharedMap.locked` (``flock``) makes a read-modify-write
atomic across processes. ``flock`` belongs to the open file, which a forked child shares
with its parent: a child that must exclude its parent opens its own :class:`SharedMap`.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Iterator
from pathlib import Path


class SharedMap:
    """``path`` (0600, created and grown with zeros as needed), ``size`` bytes of it mapped
    as :attr:`map`. Raises OSError or ValueError when it cannot be."""

    def __init__(self, path: Path, size: int) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(self._fd).st_size < size:
                with self.locked():
                    if os.fstat(self._fd).st_size < size:
                        os.ftruncate(self._fd, size)  # sparse: the zeros cost no disk
            self.map = mmap.mmap(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclude every other open file of this path (other processes) while it runs."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self.map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)
