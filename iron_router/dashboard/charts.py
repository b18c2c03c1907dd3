"""Charts as inline SVG, drawn on the server (they read without JavaScript)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from iron_router.dashboard.format import money

PALETTE = ("#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d",
           "#dc2626", "#64748b")
MAX_SERIES = 8


@dataclass(frozen=True)
class Series:
    name: str
    values: list[int]  # micro-USD per bucket
    color: str

    @property
    def total(self) -> int:
        return sum(self.values)


def top_series(raw: dict[str, list[int]], buckets: int) -> list[Series]:
    """The biggest series by total, the rest summed as ``other``, each with its colour."""
    ranked = sorted(raw.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    shown = ranked[:MAX_SERIES] if len(ranked) <= MAX_SERIES + 1 else ranked[:MAX_SERIES - 1]
    rest = ranked[len(shown):]
    out = [Series(name, values, PALETTE[i]) for i, (name, values) in enumerate(shown)]
    if rest:
        summed = [sum(v[i] for _, v in rest) for i in range(buckets)]
        out.append(Series(f"other ({len(rest)})", summed, PALETTE[-1]))
    return out


def _nice_max(value: int) -> int:
    """A round axis maximum (1, 2 or 5 × 10^n micro-USD) at or above ``value``."""
    if value <= 0:
        return 10
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def line_chart(series: list[Series], labels: list[str], *, title: str, width: int = 1100,
               height: int = 280) -> str:
    """An SVG line chart: one path per series over the buckets, a y axis in USD and a few
    x labels. ``labels`` names each bucket."""
    left, right, top, bottom = 84, 16, 14, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    buckets = max(len(labels), 1)
    peak = _nice_max(max((max(s.values, default=0) for s in series), default=0))

    def x(i: int) -> float:
        return left + (plot_w * i / (buckets - 1) if buckets > 1 else plot_w / 2)

    def y(v: int) -> float:
        return top + plot_h - plot_h * v / peak

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>"]
    for k in range(5):
        value = peak * k // 4
        gy = y(value)
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{gy:.1f}" '
                     f'y2="{gy:.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 8}" y="{gy + 4:.1f}" '
                     f'text-anchor="end">{escape(money(value))}</text>')
    ticks = sorted({0, buckets // 4, buckets // 2, 3 * buckets // 4, buckets - 1})
    for i in ticks:
        if 0 <= i < len(labels):
            anchor = "start" if i == 0 else "end" if i == buckets - 1 else "middle"
            parts.append(f'<text class="axis" x="{x(i):.1f}" y="{height - 8}" '
                         f'text-anchor="{anchor}">{escape(labels[i])}</text>')
    for s in series:
        points = " L".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(s.values))
        parts.append(f'<path class="line" d="M{points}" stroke="{s.color}">'
                     f"<title>{escape(s.name)}: {escape(money(s.total))}</title></path>")
        for i, v in enumerate(s.values):
            if v:
                parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" '
                             f'fill="{s.color}"><title>{escape(s.name)} · {escape(labels[i])}'
                             f" · {escape(money(v))}</title></circle>")
    if not series:
        parts.append(f'<text class="empty" x="{left + plot_w / 2}" y="{top + plot_h / 2}" '
                     'text-anchor="middle">No spend in this window</text>')
    parts.append("</svg>")
    return "".join(parts)
