"""Charts for the dashboard as inline SVG, drawn on the server: no JavaScript, nothing to fetch.

Two kinds: grouped bars with interval whiskers (refusal rates, judge scores) and lines over
integer steps with labelled markers (the optimizer's reward per beam level). Colours come
from CSS classes (``series-N``) in the packaged stylesheet. All text is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

WIDTH = 640
HEIGHT = 260
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 28, 44


@dataclass(frozen=True)
class Bar:
    value: float | None  # None: this series has no value in the group (nothing drawn)
    low: float | None = None
    high: float | None = None
    n: int | None = None


@dataclass(frozen=True)
class BarGroup:
    label: str
    bars: Sequence[Bar]  # one per series, in series order


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[int, float | None]]


@dataclass(frozen=True)
class Marker:
    x: int
    label: str


@dataclass(frozen=True)
class _Frame:
    low: float
    high: float
    width: int = WIDTH
    plot_h: float = HEIGHT - TOP - BOTTOM
    parts: list[str] = field(default_factory=list)

    @property
    def plot_w(self) -> float:
        return self.width - LEFT - RIGHT

    def y(self, value: float) -> float:
        span = (self.high - self.low) or 1.0
        clamped = min(max(value, self.low), self.high)
        return TOP + self.plot_h * (1 - (clamped - self.low) / span)


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _open(title: str, kind: str, width: int = WIDTH) -> list[str]:
    return [
        f'<svg class="chart {kind}" role="img" width="{width}" height="{HEIGHT}" '
        f'viewBox="0 0 {width} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]


def _y_axis(frame: _Frame, ticks: Sequence[float], percent: bool) -> None:
    for tick in ticks:
        y = frame.y(tick)
        text = f"{tick:.0%}" if percent else f"{tick:.2f}".rstrip("0").rstrip(".")
        frame.parts.append(f'<line class="grid" x1="{LEFT}" x2="{frame.width - RIGHT}" y1="{_fmt(y)}" y2="{_fmt(y)}"/>')
        frame.parts.append(f'<text class="tick" x="{LEFT - 6}" y="{_fmt(y + 4)}" text-anchor="end">{text}</text>')


def _legend(names: Sequence[str]) -> str:
    out, x = [], LEFT
    for i, name in enumerate(names):
        out.append(f'<rect class="swatch series-{i % 6}" x="{x}" y="8" width="10" height="10"/>')
        out.append(f'<text class="legend" x="{x + 14}" y="17">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return "".join(out)


def bar_chart(
    title: str,
    series: Sequence[str],
    groups: Sequence[BarGroup],
    low: float,
    high: float,
    percent: bool = False,
    width: int = WIDTH,
) -> Markup:
    """Grouped bars from ``low`` to ``high`` (0–1 shown as percentages when ``percent``), whiskers low–high."""
    frame = _Frame(low, high, width)
    frame.parts.extend(_open(title, "bar-chart", width))
    span = high - low
    steps = int(span) if not percent and span == int(span) and 2 <= span <= 10 else 4  # whole-number ticks for 1-5
    _y_axis(frame, [low + (high - low) * i / steps for i in range(steps + 1)], percent)
    slot = frame.plot_w / max(1, len(groups))
    bar_w = min(36.0, slot * 0.8 / max(1, len(series)))
    for g, group in enumerate(groups):
        start = LEFT + g * slot + (slot - bar_w * len(series)) / 2
        for s, bar in enumerate(group.bars):
            if bar.value is None:
                continue
            x, base = start + s * bar_w, frame.y(low)
            height = max(base - frame.y(bar.value), 2.0)  # a zero still shows, as a stub on the axis
            label = f"{series[s]}, {group.label}: " + (f"{bar.value:.1%}" if percent else f"{bar.value:.2f}")
            if bar.low is not None and bar.high is not None:
                label += f" (95% interval {bar.low:.2f}–{bar.high:.2f}" + (f", n={bar.n})" if bar.n else ")")
            frame.parts.append(
                f'<rect class="bar series-{s % 6}" x="{_fmt(x + 1)}" y="{_fmt(base - height)}" '
                f'width="{_fmt(bar_w - 2)}" height="{_fmt(height)}"><title>{escape(label)}</title></rect>'
            )
            if bar.low is not None and bar.high is not None:
                mid, y1, y2 = x + bar_w / 2, frame.y(bar.low), frame.y(bar.high)
                frame.parts.append(
                    f'<path class="whisker" d="M{_fmt(mid)} {_fmt(y1)}V{_fmt(y2)}'
                    f'M{_fmt(mid - 4)} {_fmt(y1)}h8M{_fmt(mid - 4)} {_fmt(y2)}h8"/>'
                )
        centre = LEFT + g * slot + slot / 2
        frame.parts.append(
            f'<text class="group" x="{_fmt(centre)}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">'
            f"{escape(group.label)}</text>"
        )
    frame.parts.append(_legend(series))
    frame.parts.append("</svg>")
    return Markup("".join(frame.parts))


def line_chart(
    title: str,
    series: Sequence[Series],
    markers: Sequence[Marker] = (),
    x_label: str = "",
    low: float | None = None,
    high: float | None = None,
) -> Markup:
    """Lines over integer x (one point per step; gaps where a value is None) with labelled vertical markers."""
    xs = sorted({x for s in series for x, _ in s.points} | {m.x for m in markers}) or [0]
    values = [y for s in series for _, y in s.points if y is not None]
    lo = low if low is not None else (min(values) if values else 0.0)
    hi = high if high is not None else (max(values) if values else 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    frame = _Frame(lo, hi)
    frame.parts.extend(_open(title, "line-chart"))
    _y_axis(frame, [lo + (hi - lo) * i / 4 for i in range(5)], percent=False)
    first, last = xs[0], xs[-1]

    def x_at(x: int) -> float:
        return LEFT + frame.plot_w * ((x - first) / (last - first) if last > first else 0.5)

    for x in xs:
        frame.parts.append(
            f'<text class="tick" x="{_fmt(x_at(x))}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{x}</text>'
        )
    if x_label:
        frame.parts.append(
            f'<text class="axis-label" x="{LEFT + frame.plot_w / 2}" y="{HEIGHT - 8}" text-anchor="middle">'
            f"{escape(x_label)}</text>"
        )
    for marker in markers:
        mx = _fmt(x_at(marker.x))
        frame.parts.append(
            f'<line class="marker" x1="{mx}" x2="{mx}" y1="{TOP}" y2="{HEIGHT - BOTTOM}">'
            f"<title>{escape(marker.label)}</title></line>"
            f'<text class="marker-label" x="{mx}" y="{TOP + 10}" text-anchor="middle">{escape(marker.label)}</text>'
        )
    for i, one in enumerate(series):
        known = [(x, y) for x, y in one.points if y is not None]
        segments: list[list[str]] = []
        current: list[str] = []
        for x, y in one.points:
            if y is None:
                segments.append(current)
                current = []
            else:
                current.append(f"{_fmt(x_at(x))},{_fmt(frame.y(y))}")
        segments.append(current)
        for segment in segments:
            if len(segment) > 1:
                frame.parts.append(f'<polyline class="line series-{i % 6}" points="{" ".join(segment)}"/>')
        radius = 5 if i == 0 else 3.5  # the first series drawn larger: equal values still show both
        for x, y in known:
            frame.parts.append(
                f'<circle class="point series-{i % 6}" cx="{_fmt(x_at(x))}" cy="{_fmt(frame.y(y))}" r="{radius}">'
                f"<title>{escape(f'{one.name}, level {x}: {y:.3f}')}</title></circle>"
            )
    frame.parts.append(_legend([s.name for s in series]))
    frame.parts.append("</svg>")
    return Markup("".join(frame.parts))
