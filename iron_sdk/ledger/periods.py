"""Budget periods: which calendar period a moment falls in, for a scope's period and zone.

A period is named by a *key* that says everything about it: ``""`` for ``total`` (one
period forever), else ``"<d|w|m>:<YYYY-MM-DD of its first day>@<zone>"`` — e.g.
``"d:2026-12-01@UTC"``, ``"w:2026-11-30@UTC"`` (ISO week, from Monday),
``"m:2026-12-01@Europe/Paris"``. Spend is kept per (scope, key), so a new period starts
from zero the moment the wall clock (``time.time()``) crosses its boundary; nothing has
to run at midnight. A reservation remembers the key it was made under and its settlement
is charged there, even when settled after the boundary.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PeriodName = Literal["total", "daily", "weekly", "monthly"]
PERIODS: tuple[str, ...] = ("total", "daily", "weekly", "monthly")
TOTAL: tuple[str, str] = ("total", "UTC")
_LETTER = {"daily": "d", "weekly": "w", "monthly": "m"}
_NAME = {v: k for k, v in _LETTER.items()}


@dataclass(frozen=True, slots=True)
class Period:
    key: str
    name: str
    start: float | None  # epoch seconds of its first instant; None for total
    end: float | None  # epoch seconds when the next period starts; None for total


TOTAL_PERIOD = Period("", "total", None, None)


def check_period(period: str, tz: str) -> None:
    """Raise ValueError for an unknown period name or time zone."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}; got {period!r}")
    _zone(tz)


@lru_cache(maxsize=64)
def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz!r} (use an IANA name such as "
                         "'Europe/Paris')") from exc


def _next_start(name: str, first: dt.date) -> dt.date:
    if name == "daily":
        return first + dt.timedelta(days=1)
    if name == "weekly":
        return first + dt.timedelta(days=7)
    return dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _midnight(day: dt.date, zone: ZoneInfo) -> float:
    return dt.datetime.combine(day, dt.time(0), tzinfo=zone).timestamp()


def _build(name: str, tz: str, first: dt.date) -> Period:
    zone = _zone(tz)
    return Period(f"{_LETTER[name]}:{first.isoformat()}@{tz}", name, _midnight(first, zone),
                  _midnight(_next_start(name, first), zone))


_current: dict[tuple[str, str], Period] = {}  # (period, tz) -> the last period computed


def current(period: str, tz: str, now: float) -> Period:
    """The period of kind ``period`` in zone ``tz`` that contains ``now`` (cached)."""
    if period == "total":
        return TOTAL_PERIOD
    cached = _current.get((period, tz))
    if cached is not None and cached.start <= now < cached.end:  # type: ignore[operator]
        return cached
    check_period(period, tz)
    day = dt.datetime.fromtimestamp(now, _zone(tz)).date()
    if period == "weekly":
        day -= dt.timedelta(days=day.weekday())
    elif period == "monthly":
        day = day.replace(day=1)
    found = _current[(period, tz)] = _build(period, tz, day)
    return found


@lru_cache(maxsize=256)
def of_key(key: str) -> Period:
    """The period a key names (see the module docstring)."""
    if not key:
        return TOTAL_PERIOD
    letter, rest = key.split(":", 1)
    first, tz = rest.split("@", 1)
    return _build(_NAME[letter], tz, dt.date.fromisoformat(first))
