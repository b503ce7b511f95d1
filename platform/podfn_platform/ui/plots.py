"""Small inline SVG charts, drawn on the server from Postgres rows.

No charting library and no script: the page stays one request, works with
scripts off, and every number comes from the same query the page shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT, PAD = 560, 160, 30
COLOURS = {"succeeded": "#2e8540", "failed": "#c0392b", "timed_out": "#d68910",
           "cancelled": "#7f8c8d", "p50": "#2874a6", "p95": "#8e44ad", "queued": "#2874a6"}


def _frame(title: str, top: float, unit: str, body: str, legend: Sequence[str]) -> Markup:
    keys = "".join(
        f'<rect x="{PAD + i * 95}" y="4" width="10" height="10" fill="{COLOURS.get(k, "#555")}"/>'
        f'<text x="{PAD + 14 + i * 95}" y="13">{escape(k)}</text>' for i, k in enumerate(legend))
    return Markup(
        f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>{keys}"
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - 5}" y2="{HEIGHT - PAD}" '
        f'stroke="#999"/>'
        f'<text x="2" y="{PAD}" class="axis">{_number(top)}{escape(unit)}</text>'
        f'<text x="2" y="{HEIGHT - PAD}" class="axis">0</text>'
        f"{body}</svg>")


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.2f}"


def _x(i: int, n: int) -> float:
    return PAD + (WIDTH - PAD - 10) * (i / max(n - 1, 1))


def _y(value: float, top: float) -> float:
    return HEIGHT - PAD - (HEIGHT - PAD * 2) * (value / top if top else 0)


def stacked_bars(title: str, minutes: Sequence[datetime], series: Mapping[str, Sequence[int]]
                 ) -> Markup:
    """One bar per minute, stacked by outcome (calls per minute)."""
    n = len(minutes)
    totals = [sum(s[i] for s in series.values()) for i in range(n)]
    top = max(totals, default=0) or 1
    width = max((WIDTH - PAD - 10) / max(n, 1) - 1, 1)
    bars = []
    for i in range(n):
        base = float(HEIGHT - PAD)
        for key, values in series.items():
            height = (HEIGHT - PAD * 2) * values[i] / top
            if values[i]:
                bars.append(f'<rect x="{PAD + i * (width + 1):.1f}" y="{base - height:.1f}" '
                            f'width="{width:.1f}" height="{height:.1f}" '
                            f'fill="{COLOURS.get(key, "#555")}"><title>'
                            f'{minutes[i]:%H:%M} {escape(key)}: {values[i]}</title></rect>')
            base -= height
    return _frame(title, top, " calls/min", "".join(bars), list(series))


def lines(title: str, points: Sequence[datetime], series: Mapping[str, Sequence[float | None]],
          unit: str) -> Markup:
    """One line per series over time (duration percentiles, queue depth)."""
    n = len(points)
    values = [v for s in series.values() for v in s if v is not None]
    top = max(values, default=0) or 1
    paths = []
    for key, ys in series.items():
        coords = [f"{_x(i, n):.1f},{_y(v, top):.1f}" for i, v in enumerate(ys) if v is not None]
        colour = COLOURS.get(key, "#555")
        if coords:
            paths.append(f'<polyline fill="none" stroke="{colour}" '
                         f'stroke-width="2" points="{" ".join(coords)}"/>')
        if len(coords) <= n // 4:  # sparse: mark each point, a lone one is no line
            paths.extend(f'<circle cx="{c.split(",")[0]}" cy="{c.split(",")[1]}" r="2.5" '
                         f'fill="{colour}"/>' for c in coords)
    if n:
        paths.append(f'<text x="{PAD}" y="{HEIGHT - 12}" class="axis">{points[0]:%H:%M}</text>'
                     f'<text x="{WIDTH - 45}" y="{HEIGHT - 12}" class="axis">'
                     f"{points[-1]:%H:%M}</text>")
    return _frame(title, top, unit, "".join(paths), list(series))
