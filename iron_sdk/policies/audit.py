"""The built-in audit sink: one chained JSON line per governance event under ``$IRON_HOME``.

Lines carry an HMAC chain (see :mod:`iron_sdk.audit_chain`) keyed from the home secret;
``iron-runtime audit verify`` checks it. Events are serialised, MAC'd and appended by a
background batcher, off the LLM call's path; each batch is one locked ``write``, so
several processes sharing the file keep one chain.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from iron_sdk.audit_chain import DEFAULT_MAX_BYTES, ChainWriter, audit_key, parse_line
from iron_sdk.batcher import Batcher
from iron_sdk.events import Event
from iron_sdk.hookspecs import hookimpl
from iron_sdk.identity import load_secret

if TYPE_CHECKING:
    from iron_sdk.runtime import Runtime

MAX_BYTES_ENV = "IRON_AUDIT_MAX_BYTES"


def max_bytes_from_env() -> int:
    """Size at which ``audit.jsonl`` rotates: ``IRON_AUDIT_MAX_BYTES`` or 10 MiB."""
    value = os.environ.get(MAX_BYTES_ENV)
    return int(value) if value and int(value) > 0 else DEFAULT_MAX_BYTES


class AuditLog:
    """Events are queued on the caller's thread and written by the batcher; ``flush()``
    waits for them."""

    def __init__(self, path: Path, *, max_bytes: int | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._writer: ChainWriter | None = None
        self._batcher: Batcher[Event] = Batcher(self._write, name="iron-audit")

    @hookimpl
    def iron_configure(self, runtime: Runtime) -> None:
        key = audit_key(load_secret(runtime.config.home, create=True))
        self._writer = ChainWriter(self.path, key,
                                   max_bytes=self.max_bytes or max_bytes_from_env())
        self._writer.open()

    @hookimpl
    def iron_unconfigure(self) -> None:
        self._batcher.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @hookimpl(trylast=True)
    def iron_event(self, event: Event) -> None:
        self._batcher.put(event)

    def flush(self) -> None:
        self._batcher.flush()

    def _write(self, events: list[Event]) -> None:
        if self._writer is not None:
            self._writer.append(events)


def read_events(path: Path) -> list[Event]:
    """All events of one audit log file (tests, CLI); each carries its ``seq`` and ``mac``."""
    if not path.exists():
        return []
    return [e for line in path.read_bytes().splitlines() if (e := parse_line(line))]
