"""A small file mapped into memory, shared by every process on the machine that maps it.

What processes sharing a SQLite ledger must agree on but need not keep (the limits
version, the rate windows) lives in one of these beside the ledger: reading and writing it
is a memory access, and :meth:`SharedMap.locked` (``flock``) makes a read-modify-write
atomic across processes. ``flock`` belongs to the open file, which a forked child shares
with its parent, so a child's first :meth:`~SharedMap.locked` opens the file again for its
own lock (the mapping it inherited stays: it is the same shared memory).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

_forks = 0  # bumped in a forked child: open files made before it are shared with the parent
_reopen = threading.Lock()


def _forked() -> None:
    global _forks, _reopen
    _forks += 1
    _reopen = threading.Lock()  # another thread of the parent may have held it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def _flock_holding_gil(fd: int, operation: int) -> int:
    """``flock(fd, operation)`` keeping the GIL: 0, or -1 when it failed (it would block).

    ``fcntl.flock`` lets go of the GIL around the call, and a write-behind or audit thread
    waiting for it then runs its batch while this caller, back from a 1 µs system call,
    waits to get it back: 15 µs a ``flock`` in a runtime with those threads, two per
    rate-limited call (``benchmarks/policy_overhead.py``). Only a lock that is free is
    taken this way; one another process holds is waited for by ``fcntl.flock``."""
    global _flock_holding_gil
    try:
        import ctypes

        call = ctypes.PyDLL(None).flock  # a PyDLL function is called with the GIL held
        call.argtypes, call.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    except (ImportError, OSError, AttributeError):  # no C library to call: fcntl's own
        def call(fd: int, operation: int) -> int:
            try:
                fcntl.flock(fd, operation)
            except OSError:
                return -1
            return 0
    _flock_holding_gil = call
    return int(call(fd, operation))


class SharedMap:
    """``path`` (0600, created and grown with zeros as needed), ``size`` bytes of it mapped
    as :attr:`map`. Raises OSError or ValueError when it cannot be."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._forks = _forks  # the process generation self._fd was opened in
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
        """Exclude every other process (a forked parent or child included) while it runs."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def acquire(self) -> None:
        """Take the file lock (:meth:`locked` without a generator, for the hot path)."""
        if self._forks != _forks:  # no system call per lock to notice a fork
            self._own_file()
        if _flock_holding_gil(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # another holds it: wait, the GIL released

    def release(self) -> None:
        _flock_holding_gil(self._fd, fcntl.LOCK_UN)

    def _own_file(self) -> None:
        with _reopen:
            if self._forks != _forks:
                inherited, self._fd = self._fd, os.open(self.path, os.O_RDWR)
                self._forks = _forks
                os.close(inherited)  # this process's copy: the parent's lock stays

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self.map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)
