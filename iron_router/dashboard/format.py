"""How the dashboard writes amounts, times and tokens (pages and live events alike)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from iron_sdk.errors import MICRO


def money(micro: int | None) -> str:
    """``$12.34``, ``$0.042``, ``$0.000012``: down to the micro-dollar, no trailing zeros
    beyond the cents."""
    if micro is None:
        return "—"
    sign = "-" if micro < 0 else ""
    micro = abs(micro)
    if micro >= MICRO:
        return f"{sign}${micro / MICRO:,.2f}"
    whole, _, frac = f"{micro / MICRO:.6f}".rstrip("0").partition(".")
    return f"{sign}${whole}.{frac.ljust(2, '0')}"


def clock(ts: float | None) -> str:
    """``14:37:18`` (UTC)."""
    if not ts:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def stamp(ts: float | None) -> str:
    """``2026-12-01 14:37 UTC``."""
    if not ts:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "never"
    delta = max(0.0, (now or time.time()) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= size:
            return f"{int(delta // size)} {unit} ago"
    return f"{int(delta)} s ago"


def tokens(count: object) -> str:
    return f"{count:,}" if isinstance(count, int) else "—"


def latency(ms: object) -> str:
    if not isinstance(ms, int | float):
        return "—"
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"
