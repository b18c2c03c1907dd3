"""What the pages show, read from the ledger, the policy store and the audit log.
Blocking: the views call these in the thread pool."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from iron_router.admin_api import operator_store
from iron_router.dashboard.auditlog import AuditTail, CallEvent
from iron_router.dashboard.charts import Series, top_series
from iron_router.dashboard.format import clock, latency, money, tokens
from iron_sdk.policy.operations import layers_for, list_tokens
from iron_sdk.runtime import Runtime

WINDOWS: dict[str, tuple[int, int, str]] = {  # name: (bucket seconds, buckets, label format)
    "hour": (60, 60, "%H:%M"),
    "day": (1800, 48, "%H:%M"),
    "month": (86400, 30, "%b %d"),
}


@dataclass(frozen=True)
class BudgetRow:
    name: str  # agent name, or the scope for teams and global
    scope: str
    limit: int | None
    spent: int
    reserved: int
    period: str | None
    calls: int = 0
    last_seen: float | None = None
    disabled: str | None = None  # None, or the scope whose kill switch is on
    scale: int = 0  # without a limit, the bar is relative to this (the biggest such spender)

    @property
    def left(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.spent - self.reserved)

    def pct(self, amount: int) -> float:
        """``amount`` as a share of the bar (of the limit, or without one of ``scale``)."""
        whole = self.limit if self.limit else max(self.scale, self.spent + self.reserved, 1)
        return round(min(100.0, 100.0 * amount / whole), 2) if whole > 0 else 0.0

    @property
    def used_pct(self) -> str:
        if not self.limit:
            return ""
        return f"{100 * (self.spent + self.reserved) / self.limit:.0f}%"

    @property
    def level(self) -> str:
        if self.limit is None:
            return "none"
        used = (self.spent + self.reserved) / self.limit if self.limit else 1
        return "over" if used >= 1 else "high" if used >= 0.8 else "ok"


def budget_rows(runtime: Runtime, tail: AuditTail) -> tuple[list[BudgetRow], list[BudgetRow]]:
    """(one row per agent, one per other scope: teams and global)."""
    ledger, store = runtime.ledger, operator_store(runtime)
    tail.refresh()
    scopes = set(ledger.scopes()) | set(store.all())
    calls: dict[str, int] = {}
    for row in ledger.usage():
        calls[row.agent_id] = calls.get(row.agent_id, 0) + row.calls
    agents = ({s.split(":", 1)[1] for s in scopes if s.startswith("agent:")} | set(calls)
              | set(tail.last_seen) | {r.agent for r in store.tokens() if not r.admin})
    rows = []
    for name in sorted(agents):
        scope = f"agent:{name}"
        off = next((s for s, p in layers_for(store, scope).items() if p.disabled), None)
        rows.append(_row(ledger.state(scope), name, calls=calls.get(name, 0),
                         last_seen=tail.last_seen.get(name), disabled=off))
    others = [_row(ledger.state(s), s, disabled=s if store.get(s).disabled else None)
              for s in sorted(scopes) if not s.startswith("agent:")]
    return _scaled(rows), _scaled(others)


def _scaled(rows: list[BudgetRow]) -> list[BudgetRow]:
    scale = max((r.spent + r.reserved for r in rows if r.limit is None), default=0)
    return [dataclasses.replace(r, scale=scale) for r in rows]


def _row(state: Any, name: str, **extra: Any) -> BudgetRow:
    period = getattr(state, "period", None)  # ledgers with periodic budgets expose it
    return BudgetRow(name=name, scope=state.scope, limit=state.limit_micro,
                     spent=state.spent_micro, reserved=state.reserved_micro,
                     period=str(period) if period else None, **extra)


def spend_charts(tail: AuditTail, window: str, now: float | None = None,
                 ) -> tuple[list[str], dict[str, list[Series]]]:
    """Bucket labels and, per ``agent`` and ``model``, the series to draw."""
    step, buckets, fmt = WINDOWS[window]
    now = now or time.time()
    tail.refresh()
    start = (int(now) // step + 1) * step - step * buckets
    labels = [time.strftime(fmt, time.gmtime(start + i * step)) for i in range(buckets)]
    return labels, {by: top_series(tail.spend_series(by, start, step, buckets), buckets)
                    for by in ("agent", "model")}


def live_row(event: CallEvent) -> dict[str, Any]:
    """A call event as a table row: display strings only (pages and the live stream)."""
    kind = event.get("type")
    cost = event.get("cost_micro")
    decision = {"call_completed": "allowed", "call_failed": "failed"}.get(kind) or (
        f"blocked: {event.get('reason') or 'policy'}")
    return {"seq": event.seq, "time": clock(event.get("ts")),
            "agent": str(event.get("agent_id", "")), "model": str(event.get("model") or "?"),
            "tokens": "—" if kind == "call_blocked" else
                      f"{tokens(event.get('input_tokens'))} → {tokens(event.get('output_tokens'))}",
            "cost": "—" if kind == "call_blocked" else money(cost if isinstance(cost, int)
                                                             else None),
            "decision": decision,
            "tone": "ok" if kind == "call_completed" else "bad",
            "latency": latency(event.get("latency_ms"))}


def blocked_row(event: CallEvent) -> dict[str, Any]:
    findings = event.get("findings")
    kinds = [str(k) for k in findings] if isinstance(findings, list) else []
    scope = event.get("scope")
    return {"time": clock(event.get("ts")), "agent": str(event.get("agent_id", "")),
            "model": str(event.get("model") or "?"), "reason": str(event.get("reason") or "?"),
            "scope": str(scope) if scope else f"agent:{event.get('agent_id', '')}",
            "kinds": kinds}


def token_rows(runtime: Runtime) -> list[dict[str, Any]]:
    return sorted(list_tokens(operator_store(runtime)), key=lambda t: -float(t["issued"]))
