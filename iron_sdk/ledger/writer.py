"""Write-behind for settlements: the caller's thread never waits for the ledger's commit.

A call's reservation stays in the ledger until its settlement is written, so every
other process keeps seeing at least the reserved amount: deferring the write can never
let a budget be overspent. One writer thread drains the queue in batches (one
transaction each), so many concurrent calls share a commit. Reads (``state``,
``usage``, ``scopes``) flush first, so this process always reads its own writes; the
queue is flushed at exit. A hard kill can lose the last few milliseconds of
settlements; their leases then expire.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from iron_sdk.batcher import Batcher
from iron_sdk.ledger.base import Ledger, LedgerError, ScopeState, Settlement, UsageRow

log = logging.getLogger("iron_sdk.ledger")
OnSettled = Callable[[Settlement, list[ScopeState]], None]
_RETRIES = 3


class WriteBehindLedger(Ledger):
    """Wraps a ledger; ``settle`` and ``release`` are queued, everything else is direct."""

    def __init__(self, inner: Ledger, on_settled: OnSettled | None = None, *,
                 window_s: float = 0.02) -> None:
        self.inner = inner
        self.on_settled = on_settled
        self._batcher: Batcher[Settlement | str] = Batcher(
            self._write, window_s=window_s, name="iron-ledger-writer")

    # -- queued -------------------------------------------------------------------------
    def settle(self, reservation_id: str, scopes: Sequence[str], cost_micro: int, *,
               agent_id: str, model: str, input_tokens: int,
               output_tokens: int) -> list[ScopeState] | None:  # type: ignore[override]
        """Queue the settlement; returns None (states reach ``on_settled`` once written)."""
        self._batcher.put(Settlement(reservation_id, tuple(scopes), cost_micro, agent_id,
                                     model, input_tokens, output_tokens))
        return None

    def release(self, reservation_id: str) -> None:
        self._batcher.put(reservation_id)

    def flush(self) -> None:
        """Block until everything queued so far is written."""
        self._batcher.flush()

    def _write(self, batch: list[Settlement | str]) -> None:
        settlements = [b for b in batch if isinstance(b, Settlement)]
        for attempt in range(_RETRIES):
            try:
                states = self.inner.settle_many(settlements) if settlements else []
                for rid in (b for b in batch if isinstance(b, str)):
                    self.inner.release(rid)
                break
            except LedgerError as exc:
                if attempt == _RETRIES - 1:
                    log.error("ledger write of %d settlements failed, dropped: %s",
                              len(settlements), exc)
                    return
                time.sleep(0.05 * (attempt + 1))
        if self.on_settled is not None:
            for item, item_states in zip(settlements, states, strict=True):
                try:
                    self.on_settled(item, item_states)
                except Exception:  # a listener's bug must not stop the writer
                    log.exception("on_settled listener failed")

    # -- direct (reads flush first, so this process reads its own writes) ----------------
    def reserve(self, reservation_id: str, scopes: Sequence[str], amount_micro: int,
                ttl_s: float) -> bool:
        return self.inner.reserve(reservation_id, scopes, amount_micro, ttl_s)

    def set_limit(self, scope: str, limit_micro: int | None) -> None:
        self.inner.set_limit(scope, limit_micro)

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
        self.inner.close()
