"""What the ledger tests share: a wall clock they move, and each kind of ledger."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from iron_sdk.ledger import Ledger, MemoryLedger, SQLiteLedger, open_ledger

KINDS = ["memory", "sqlite", "redis"]


class Clock:
    """Stands in for time.time() (the ledgers read the wall clock through it); tests move
    it instead of sleeping."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


def make_ledger(request: pytest.FixtureRequest, path: Path) -> Ledger:
    """A ledger of the kind ``request.param`` names (SQLite at ``path``; Redis from the
    ``redis_url`` fixture)."""
    if request.param == "memory":
        return MemoryLedger()
    if request.param == "sqlite":
        return SQLiteLedger(path)
    return open_ledger(request.getfixturevalue("redis_url"))
