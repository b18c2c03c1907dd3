"""In-process ledger: plain dicts under one lock. For tests and single-process use."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from iron_sdk.ledger import periods
from iron_sdk.ledger.base import (
    SETTLED_RETENTION_S,
    Ledger,
    LedgerError,
    ScopeState,
    Settlement,
    UsageRow,
    check_amount,
    check_ttl,
    exceeded,
    unique_scopes,
)

_Key = tuple[str, str]  # (scope, period key)


@dataclass(slots=True)
class _Held:
    amount: int
    expires: float
    agent_id: str
    model: str
    charge: tuple[_Key, ...]  # every scope of the call with its period key
    held: tuple[_Key, ...]  # the limited ones, which hold the amount


@dataclass(slots=True)
class _Done:
    at: float
    unsettled: _Held | None  # charged at its reserved amount when its lease ran out


class MemoryLedger(Ledger):
    """Dict-backed ledger (wall-clock leases, like the shared ledgers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: dict[str, tuple[int, str, str]] = {}  # scope -> limit, period, tz
        self._spent: dict[_Key, int] = {}
        self._held: dict[_Key, dict[str, int]] = {}
        self._res: dict[str, _Held] = {}
        self._done: dict[str, _Done] = {}  # insertion order is time order
        self._usage: dict[tuple[str, str], list[int]] = {}  # calls, in, out, cost, unsettled
        self._ops = 0

    # -- helpers (lock held) ----------------------------------------------------------
    def _key(self, scope: str, now: float) -> str:
        cfg = self._limits.get(scope)
        return "" if cfg is None else periods.current(cfg[1], cfg[2], now).key

    def _state(self, scope: str, key: str) -> ScopeState:
        cfg = self._limits.get(scope)
        period = periods.of_key(key)
        return ScopeState(scope, None if cfg is None else cfg[0], self._spent.get((scope, key), 0),
                          sum(self._held.get((scope, key), {}).values()), period.name,
                          period.start, period.end)

    def _charge(self, keys: Sequence[_Key], amount: int) -> None:
        for k in keys:
            self._spent[k] = self._spent.get(k, 0) + amount

    def _usage_row(self, agent_id: str, model: str) -> list[int]:
        return self._usage.setdefault((agent_id, model), [0, 0, 0, 0, 0])

    def _unhold(self, rid: str, res: _Held) -> None:
        for k in res.held:
            held = self._held.get(k)
            if held is not None:
                held.pop(rid, None)

    def _finish(self, rid: str, now: float, unsettled: _Held | None = None) -> None:
        self._done.pop(rid, None)
        self._done[rid] = _Done(now, unsettled)
        self._ops += 1
        if self._ops % 64 == 0:
            cutoff = now - SETTLED_RETENTION_S
            for old in [r for r, d in self._done.items() if d.at < cutoff]:
                del self._done[old]

    def _expire(self, now: float) -> int:
        expired = [(rid, res) for rid, res in self._res.items() if res.expires < now]
        for rid, res in expired:
            del self._res[rid]
            self._unhold(rid, res)
            self._charge(res.charge, res.amount)
            row = self._usage_row(res.agent_id, res.model)
            row[3] += res.amount
            row[4] += 1
            self._finish(rid, now, res)
        return len(expired)

    # -- operations -------------------------------------------------------------------
    def reserve(self, reservation_id: str, scopes: Sequence[str], amount_micro: int,
                ttl_s: float, *, agent_id: str = "", model: str = "") -> bool:
        check_amount("amount_micro", amount_micro)
        check_ttl(ttl_s)
        uniq = unique_scopes(scopes)
        with self._lock:
            limited = [s for s in uniq if s in self._limits]
            if not limited:
                return False
            if reservation_id in self._res or reservation_id in self._done:
                raise LedgerError(f"reservation id {reservation_id!r} is already in use")
            now = time.time()
            charge = tuple((s, self._key(s, now)) for s in uniq)
            held = tuple(k for k in charge if k[0] in self._limits)
            for k in held:
                limit = self._limits[k[0]][0]
                used = self._spent.get(k, 0) + sum(self._held.get(k, {}).values())
                if used + amount_micro > limit:
                    raise exceeded(k[0], limit, used, amount_micro)
            for k in held:
                self._held.setdefault(k, {})[reservation_id] = amount_micro
            self._res[reservation_id] = _Held(amount_micro, now + ttl_s, agent_id, model,
                                              charge, held)
            return True

    def settle(self, reservation_id: str, scopes: Sequence[str], cost_micro: int, *,
               agent_id: str, model: str, input_tokens: int,
               output_tokens: int) -> list[ScopeState]:
        item = Settlement(reservation_id, tuple(scopes), cost_micro, agent_id, model,
                          input_tokens, output_tokens)
        item.check()
        uniq = unique_scopes(scopes)
        with self._lock:
            now = time.time()
            rid = reservation_id
            done = self._done.get(rid)
            res = done.unsettled if done is not None else self._res.pop(rid, None)
            keys = dict(res.charge) if res is not None else {}
            if done is None or done.unsettled is not None:
                if done is not None and res is not None:  # lease ran out: true cost now
                    self._charge(res.charge, cost_micro - res.amount)
                    row = self._usage_row(res.agent_id, res.model)
                    row[3] -= res.amount
                    row[4] -= 1
                else:
                    if res is not None:
                        self._unhold(rid, res)
                    for s in uniq:
                        keys.setdefault(s, self._key(s, now))
                    self._charge([(s, keys[s]) for s in uniq], cost_micro)
                row = self._usage_row(agent_id, model)
                row[0] += 1
                row[1] += input_tokens
                row[2] += output_tokens
                row[3] += cost_micro
                self._finish(rid, now)
            return [self._state(s, keys.get(s) or self._key(s, now)) for s in uniq]

    def release(self, reservation_id: str) -> None:
        with self._lock:
            now = time.time()
            done = self._done.get(reservation_id)
            if done is not None:
                res = done.unsettled
                if res is not None:  # charged when its lease ran out; it cost nothing
                    self._charge(res.charge, -res.amount)
                    row = self._usage_row(res.agent_id, res.model)
                    row[3] -= res.amount
                    row[4] -= 1
                    self._finish(reservation_id, now)
                return
            res = self._res.pop(reservation_id, None)
            if res is not None:
                self._unhold(reservation_id, res)
            self._finish(reservation_id, now)

    def renew(self, reservation_ids: Sequence[str], ttl_s: float) -> int:
        check_ttl(ttl_s)
        with self._lock:
            expires = time.time() + ttl_s
            n = 0
            for rid in reservation_ids:
                res = self._res.get(rid)
                if res is not None:
                    res.expires = expires
                    n += 1
            return n

    def expire_leases(self) -> int:
        with self._lock:
            return self._expire(time.time())

    def set_limit(self, scope: str, limit_micro: int | None, *, period: str = "total",
                  tz: str = "UTC") -> None:
        if limit_micro is not None:
            check_amount("limit_micro", limit_micro)
            periods.check_period(period, tz)
        with self._lock:
            if limit_micro is None:
                self._limits.pop(scope, None)
            else:
                self._limits[scope] = (limit_micro, period, tz)

    def state(self, scope: str) -> ScopeState:
        with self._lock:
            now = time.time()
            self._expire(now)
            return self._state(scope, self._key(scope, now))

    def scopes(self) -> list[str]:
        with self._lock:
            return sorted(self._limits.keys() | {s for s, _ in self._spent})

    def usage(self) -> list[UsageRow]:
        with self._lock:
            self._expire(time.time())
            return [UsageRow(agent, model, *vals)
                    for (agent, model), vals in sorted(self._usage.items())]

    def reset(self, scope: str) -> None:
        with self._lock:
            key = (scope, self._key(scope, time.time()))
            if key in self._spent:
                self._spent[key] = 0

    def close(self) -> None:
        pass
