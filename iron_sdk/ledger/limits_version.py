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
from pathlib import Path

from iron_sdk.shared_map import SharedMap

_SIZE = 8


class LimitsVersion:
    def __init__(self, ledger_path: Path) -> None:
        self.path = ledger_path.with_name(ledger_path.name + ".limits")
        self._shared: SharedMap | None = None
        with contextlib.suppress(OSError, ValueError):  # else read() says None
            self._shared = SharedMap(self.path, _SIZE)

    def read(self) -> int | None:
        """The counter now, or None when it cannot be kept (ask SQLite every time)."""
        shared = self._shared
        return None if shared is None else int.from_bytes(shared.map[:_SIZE], "little")

    def bump(self) -> None:
        """A limit changed and is committed: move the counter (call after COMMIT)."""
        shared = self._shared
        if shared is None:
            return
        with shared.locked():
            shared.map[:_SIZE] = ((self.read() or 0) + 1).to_bytes(_SIZE, "little")

    def close(self) -> None:
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.close()
