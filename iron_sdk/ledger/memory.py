"""In-process ledger: plain dicts under one lock. For tests and single-process use."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from iron_sdk.ledger.base import (
    Ledger,
    LedgerError,
    ScopeState,
    UsageRow,
    check_amount,
    exceeded,
    unique_scopes,
)


class MemoryLedger(Ledger):
    """Dict-backed ledger. Expiry uses the monotonic clock (no cross-process meaning here)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: dict[str, int] = {}  # only scopes that have a limit
        self._spent: dict[str, int] = {}
        # scope -> reservation id -> (amount, expires); only limited scopes get entries.
        self._held: dict[str, dict[str, tuple[int, float]]] = {}
        self._scopes_of: dict[str, tuple[str, ...]] = {}  # reservation id -> its scopes
        self._usage: dict[tuple[str, str], list[int]] = {}  # calls, in, out, cost

    def _reserved(self, scope: str, now: float) -> int:
        held = self._held.get(scope)
        if not held:
            return 0
        total = 0
        for rid, (amount, expires) in list(held.items()):
            if expires < now:  # lease ran out: purge so a lost caller cannot pin budget
                self._drop(rid)
            else:
                total += amount
        return total

    def _drop(self, reservation_id: str) -> None:
        for scope in self._scopes_of.pop(reservation_id, ()):
            held = self._held.get(scope)
            if held is not None:
                held.pop(reservation_id, None)

    def _state(self, scope: str, now: float) -> ScopeState:
        return ScopeState(scope, self._limits.get(scope), self._spent.get(scope, 0),
                          self._reserved(scope, now))

    def reserve(self, reservation_id: str, scopes: Sequence[str], amount_micro: int,
                ttl_s: float) -> bool:
        check_amount("amount_micro", amount_micro)
        uniq = unique_scopes(scopes)
        with self._lock:
            limited = [s for s in uniq if s in self._limits]
            if not limited:
                return False
            if reservation_id in self._scopes_of:
                raise LedgerError(f"reservation id {reservation_id!r} is already in use")
            now = time.monotonic()
            for scope in limited:
                limit = self._limits[scope]
                used = self._spent.get(scope, 0) + self._reserved(scope, now)
                if used + amount_micro > limit:
                    raise exceeded(scope, limit, used, amount_micro)
            entry = (amount_micro, now + ttl_s)
            for scope in limited:
                self._held.setdefault(scope, {})[reservation_id] = entry
            self._scopes_of[reservation_id] = tuple(limited)
            return True

    def settle(self, reservation_id: str, scopes: Sequence[str], cost_micro: int, *,
               agent_id: str, model: str, input_tokens: int,
               output_tokens: int) -> list[ScopeState]:
        check_amount("cost_micro", cost_micro)
        uniq = unique_scopes(scopes)
        with self._lock:
            self._drop(reservation_id)
            for scope in uniq:
                self._spent[scope] = self._spent.get(scope, 0) + cost_micro
            row = self._usage.setdefault((agent_id, model), [0, 0, 0, 0])
            row[0] += 1
            row[1] += input_tokens
            row[2] += output_tokens
            row[3] += cost_micro
            now = time.monotonic()
            return [self._state(scope, now) for scope in uniq]

    def release(self, reservation_id: str) -> None:
        with self._lock:
            self._drop(reservation_id)

    def set_limit(self, scope: str, limit_micro: int | None) -> None:
        with self._lock:
            if limit_micro is None:
                self._limits.pop(scope, None)
            else:
                check_amount("limit_micro", limit_micro)
                self._limits[scope] = limit_micro

    def state(self, scope: str) -> ScopeState:
        with self._lock:
            return self._state(scope, time.monotonic())

    def scopes(self) -> list[str]:
        with self._lock:
            return sorted(self._limits.keys() | self._spent.keys())

    def usage(self) -> list[UsageRow]:
        with self._lock:
            return [UsageRow(agent, model, *vals)
                    for (agent, model), vals in sorted(self._usage.items())]

    def reset(self, scope: str) -> None:
        with self._lock:
            if scope in self._spent:
                self._spent[scope] = 0

    def close(self) -> None:
        pass
