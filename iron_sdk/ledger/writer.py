"""Write-behind for settlements: the caller's thread never waits for the ledger's commit.

A call's reservation stays in the ledger until its settlement is written, so every
other process keeps seeing at least the reserved amount: deferring the write can never
let a budget be overspent. One writer thread drains the queue in batches (one
transaction each), so many concurrent calls share a commit. Reads (``state``,
``usage``, ``scopes``) flush first, so this process always reads its own writes; the
queue is flushed at exit.

Nothing acknowledged is lost to a crash: ``settle`` and ``release`` validate their
numbers in the caller's thread (a bad one raises there, nothing is queued), then append
the entry to this process's journal (see :mod:`iron_sdk.ledger.journal`) before they
return; the next process to open the ledger replays the journal of a dead one.

One bad item never hurts the others: a batch that fails is written again item by item
(settlement is idempotent, so what the failed batch did write is not charged twice);
an item that keeps failing is logged (ids only) and dropped, and its reservation is left
to its lease (charged at the reserved amount, marked unsettled, when the lease runs out).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from iron_sdk.batcher import Batcher
from iron_sdk.ledger.base import (
    Ledger,
    LedgerError,
    ScopeState,
    Settlement,
    UsageRow,
    unique_scopes,
)
from iron_sdk.ledger.journal import Entry, Journal, orphans

log = logging.getLogger("iron_sdk.ledger")
OnSettled = Callable[[Settlement, list[ScopeState]], None]
_RETRIES = 3


def _attempt(op: str, rid: str, fn: Callable[[], object]) -> bool:
    """``fn()`` with retries on storage errors; False once it failed for good (logged)."""
    for attempt in range(_RETRIES):
        try:
            fn()
            return True
        except LedgerError as exc:
            error: Exception = exc
            if attempt < _RETRIES - 1:
                time.sleep(0.05 * (attempt + 1))
        except Exception as exc:  # a bad item: retrying cannot help
            error = exc
            break
    log.error("ledger %s of call %s failed (%s); dropped, its reservation is left to its "
              "lease", op, rid, type(error).__name__)
    return False


Written = list[tuple[Settlement, list[ScopeState]]]


def apply_batch(ledger: Ledger, batch: Sequence[Entry]) -> tuple[Written, int]:
    """Write ``batch`` (settlements and released ids); return what was settled (with its
    states) and how many entries failed for good.

    One transaction when it can; when that fails, item by item, so one poison item never
    drops, delays for long or multiplies anyone else's settlement.
    """
    settlements = [b for b in batch if isinstance(b, Settlement)]
    done: Written = []
    failed = 0
    try:
        if settlements:
            done = list(zip(settlements, ledger.settle_many(settlements), strict=True))
    except Exception:  # isolate the culprit; idempotency makes the re-writes safe
        for item in settlements:
            def one(item: Settlement = item) -> None:
                done.append((item, ledger.settle_many([item])[0]))

            failed += not _attempt("settle", item.reservation_id, one)
    for rid in (b for b in batch if isinstance(b, str)):
        failed += not _attempt("release", rid, lambda rid=rid: ledger.release(rid))
    return done, failed


def replay_journals(ledger: Ledger, directory: Path | None = None) -> int:
    """Write what dead processes acknowledged but never committed to ``ledger``; return the
    number of entries replayed. Safe to call at any time, from any process."""
    identity = ledger.identity
    directory = directory or (ledger.home / "journal" if ledger.home else None)
    if identity is None or directory is None:
        return 0
    count = 0
    found = orphans(directory, identity)
    for path, entries in found:
        log.info("replaying %d ledger journal entries of a dead process (%s)", len(entries),
                 path.name)
        _, failed = apply_batch(ledger, entries)
        if entries and failed == len(entries):  # the ledger is down: keep it for later
            log.warning("ledger journal %s kept for the next opener", path.name)
            found.close()
            break
        count += len(entries)
    return count


class WriteBehindLedger(Ledger):
    """Wraps a ledger; ``settle`` and ``release`` are journaled then queued, everything else
    is direct. ``journal_dir`` defaults to ``<inner.home>/journal``; ``fsync=True`` also
    makes each journal entry survive a power loss (one fsync per settlement)."""

    def __init__(self, inner: Ledger, on_settled: OnSettled | None = None, *,
                 window_s: float = 0.02, journal_dir: Path | None = None,
                 fsync: bool = False) -> None:
        self.inner = inner
        self.home = inner.home
        self.on_settled = on_settled
        identity = inner.identity
        directory = journal_dir or (inner.home / "journal" if inner.home else None)
        self._journal: Journal | None = None
        if identity is not None and directory is not None:
            replay_journals(inner, directory)
            self._journal = Journal(directory, identity, fsync=fsync)
        self._batcher: Batcher[Entry] = Batcher(self._write, window_s=window_s,
                                               name="iron-ledger-writer")

    @property
    def identity(self) -> str | None:
        return self.inner.identity

    @property
    def journal(self) -> Journal | None:
        return self._journal

    # -- journaled, then queued ---------------------------------------------------------
    def settle(self, reservation_id: str, scopes: Sequence[str], cost_micro: int, *,
               agent_id: str, model: str, input_tokens: int,
               output_tokens: int) -> list[ScopeState] | None:  # type: ignore[override]
        """Validate, journal and queue the settlement; returns None (states reach
        ``on_settled`` once written). Raises InvalidAmountError (a ValueError) for a bad
        number, with nothing queued."""
        item = Settlement(reservation_id, unique_scopes(scopes), cost_micro, agent_id, model,
                          input_tokens, output_tokens)
        item.check()
        self._submit(item)
        return None

    def release(self, reservation_id: str) -> None:
        self._submit(reservation_id)

    def _submit(self, entry: Entry) -> None:
        if self._journal is not None:
            self._journal.append(entry)  # before the caller is answered
        self._batcher.put(entry)

    def flush(self) -> None:
        """Block until everything queued so far is written."""
        self._batcher.flush()

    def _write(self, batch: list[Entry]) -> None:
        try:
            done, _ = apply_batch(self.inner, batch)
        finally:
            if self._journal is not None:
                self._journal.committed(len(batch))
        self.inner.upkeep()
        if self.on_settled is not None:
            for item, states in done:
                try:
                    self.on_settled(item, states)
                except Exception:  # a listener's bug must not stop the writer
                    log.exception("on_settled listener failed")

    # -- direct (reads flush first, so this process reads its own writes) ----------------
    def reserve(self, reservation_id: str, scopes: Sequence[str], amount_micro: int,
                ttl_s: float, *, agent_id: str = "", model: str = "") -> bool:
        return self.inner.reserve(reservation_id, scopes, amount_micro, ttl_s,
                                  agent_id=agent_id, model=model)

    def renew(self, reservation_ids: Sequence[str], ttl_s: float) -> int:
        return self.inner.renew(reservation_ids, ttl_s)

    def expire_leases(self) -> int:
        self.flush()
        return self.inner.expire_leases()

    def set_limit(self, scope: str, limit_micro: int | None, *, period: str = "total",
                  tz: str = "UTC") -> None:
        self.inner.set_limit(scope, limit_micro, period=period, tz=tz)

    def state(self, scope: str) -> ScopeState:
        self.flush()
        return self.inner.state(scope)

    def scopes(self) -> list[str]:
        self.flush()
        return self.inner.scopes()

    def usage(self) -> list[UsageRow]:
        self.flush()
        return self.inner.usage()

    def reset(self, scope: str) -> None:
        self.flush()
        self.inner.reset(scope)

    def close(self) -> None:
        self.flush()
        if self._journal is not None:
            self._journal.close()
        self.inner.close()
