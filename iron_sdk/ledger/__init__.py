"""Budget ledgers: reserve before each LLM call, settle after it."""

from __future__ import annotations

import os

from iron_sdk.ledger.base import (
    InvalidAmountError,
    Ledger,
    LedgerError,
    ScopeState,
    Settlement,
    UsageRow,
)
from iron_sdk.ledger.memory import MemoryLedger
from iron_sdk.ledger.sqlite import SQLiteLedger

__all__ = ["InvalidAmountError", "Ledger", "LedgerError", "MemoryLedger", "SQLiteLedger",
           "ScopeState", "Settlement", "UsageRow", "open_ledger"]

_FORMS = ("'memory', 'sqlite:///abs/path.db', a plain filesystem path, "
          "or 'redis://host:port/db'")


def open_ledger(url: str) -> Ledger:
    """Open the ledger ``url`` names: ``"memory"``, ``"sqlite:///abs/path.db"``, a path, or
    ``"redis://host:port/db"``; first replay what dead processes acknowledged but never
    committed to it (see :mod:`iron_sdk.ledger.journal`)."""
    ledger = _open(url)
    from iron_sdk.ledger.writer import replay_journals

    try:
        replay_journals(ledger)
    except BaseException:
        ledger.close()
        raise
    return ledger


def _open(url: str) -> Ledger:
    if url == "memory":
        return MemoryLedger()
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if not path.startswith("/"):
            raise ValueError(f"sqlite ledger URL needs an absolute path; expected {_FORMS}")
        return SQLiteLedger(path)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from iron_sdk.ledger.redis import RedisLedger

        return RedisLedger(url)
    if "://" in url:
        # Only the scheme is echoed: the rest of a URL may carry credentials.
        scheme = url.split("://", 1)[0]
        raise ValueError(f"unsupported ledger URL scheme '{scheme}://'; expected {_FORMS}")
    # ':memory:' would give every per-thread connection its own empty database.
    if not url or url == ":memory:":
        raise ValueError(f"unsupported ledger {url!r}; expected {_FORMS}")
    return SQLiteLedger(os.path.expanduser(url))
