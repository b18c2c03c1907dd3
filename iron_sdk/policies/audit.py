"""The built-in audit sink: one JSON line per governance event under ``$IRON_HOME``.

Each batch of lines is written with a single ``write`` on an ``O_APPEND`` descriptor,
so lines from several processes sharing the file never interleave.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from iron_sdk.batcher import Batcher
from iron_sdk.events import Event
from iron_sdk.hookspecs import hookimpl

if TYPE_CHECKING:
    from iron_sdk.runtime import Runtime


class AuditLog:
    """Events are serialised and appended by a background batcher (one ``write`` per
    batch), off the LLM call's path; ``flush()`` waits for them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._batcher: Batcher[Event] = Batcher(self._write, name="iron-audit")

    @hookimpl
    def iron_configure(self, runtime: Runtime) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @hookimpl
    def iron_unconfigure(self) -> None:
        self._batcher.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @hookimpl(trylast=True)
    def iron_event(self, event: Event) -> None:
        self._batcher.put(event)

    def flush(self) -> None:
        self._batcher.flush()

    def _write(self, events: list[Event]) -> None:
        if self._fd is not None:
            os.write(self._fd, "".join(json.dumps(e, separators=(",", ":")) + "\n"
                                       for e in events).encode())


def read_events(path: Path) -> list[Event]:
    """All events of an audit log (tests, CLI)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
