"""A counter every process sharing a SQLite ledger reads for free: has any limit changed?

Most scopes have no limit, and before this counter every reservation asked SQLite so
(one query, and a GIL hand-off to the writer thread, on every call). Now a process asks
once per scope list and remembers the answer together with the counter it read *before*
asking; while the counter has not moved, the answer stands.

The counter is 8 bytes in ``<ledger>.limits`` (0600), mapped into memory: reading it is a
memory load, no system call. Whoever changes a limit bumps it *after* the change is
committed, under ``flock`` (so two bumps never collapse into one): a reader that read the
old value before the commit asks SQLite again on its next reservation; a reservation made
before the bump is ordered before the change, as if it had come a moment earlier.

Every writer of limits must bump (:meth:`SQLiteLedger.set_limit` does); a file where the
counter cannot be kept (no mmap) gives ``None`` and the ledger asks SQLite every time.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

_SIZE = 8


class LimitsVersion:
    def __init__(self, ledger_path: Path) -> None:
        self.path = ledger_path.with_name(ledger_path.name + ".limits")
        self._map: mmap.mmap | None = None
        self._fd = -1
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(self._fd).st_size < _SIZE:
                with self._locked():
                    if os.fstat(self._fd).st_size < _SIZE:
                        os.ftruncate(self._fd, _SIZE)
            self._map = mmap.mmap(self._fd, _SIZE)
        except (OSError, ValueError):
            self.close()

    def read(self) -> int | None:
        """The counter now, or None when it cannot be kept (ask SQLite every time)."""
        mapped = self._map
        return None if mapped is None else int.from_bytes(mapped[:_SIZE], "little")

    def bump(self) -> None:
        """A limit changed and is committed: move the counter (call after COMMIT)."""
        mapped = self._map
        if mapped is None:
            return
        with self._locked():
            mapped[:_SIZE] = ((self.read() or 0) + 1).to_bytes(_SIZE, "little")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        mapped, self._map = self._map, None
        if mapped is not None:
            with contextlib.suppress(BufferError, ValueError):
                mapped.close()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
