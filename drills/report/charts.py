"""Inline SVG charts of the drill report: a phase timeline per drill and the RTO history.

Plain SVG strings with no script, font or image: the report stays one self-contained file
that prints. Colours come from CSS classes that the report's stylesheet defines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from drills.config.clock import PHASES, human

WIDTH = 720
LABEL_W = 96
VALUE_W = 120
ROW_H = 22
AXIS_H = 30
OTHER = "other"
# The target is drawn on the timeline only when the drill used a visible share of it.
TARGET_ON_SCALE = 0.2


def duration(seconds: float | None) -> str:
    """`clock.human()`, with milliseconds below a tenth of a second (where it says '0.0 s')."""
    if seconds is not None and 0 <= seconds < 0.1:
        return f"{seconds * 1000:.0f} ms"
    return human(seconds)


def timeline_svg(
    phases: dict[str, float], measured_s: float | None, target_s: float | None
) -> Markup:
    """A Gantt row per phase, laid end to end in the order they ran, drawn to scale.

    Time the stopwatch measured outside any phase (between phases, the final verdict) is
    shown as an `other` row, so that the bars add up to the measured RTO.
    """
    rows = [(name, seconds) for name, seconds in phases.items() if seconds is not None]
    spent = sum(seconds for _, seconds in rows)
    if measured_s is not None and measured_s - spent > max(0.05, 0.01 * measured_s):
        rows.append((OTHER, measured_s - spent))
    total = max(spent, measured_s or 0.0)
    if not rows or total <= 0:
        return Markup('<p class="muted">No phase was timed.</p>')
    scale_end = total
    if target_s and total >= TARGET_ON_SCALE * target_s:
        scale_end = max(total, target_s)
    area = WIDTH - LABEL_W - VALUE_W
    height = len(rows) * ROW_H + AXIS_H
    parts = [_svg_open(height, f"Phase timeline: {duration(total)} in {len(rows)} phases")]
    start = 0.0
    for index, (name, seconds) in enumerate(rows):
        y = index * ROW_H
        x = LABEL_W + start / scale_end * area
        width = max(seconds / scale_end * area, 1.5)
        share = seconds / total * 100
        parts.append(
            f'<text x="{LABEL_W - 6}" y="{y + 15}" text-anchor="end" class="lbl">'
            f"{escape(name)}</text>"
            f'<rect x="{x:.1f}" y="{y + 4}" width="{width:.1f}" height="{ROW_H - 8}" '
            f'class="ph ph-{_phase_class(name)}"><title>{escape(name)}: {duration(seconds)}'
            f"</title></rect>"
            f'<text x="{WIDTH - VALUE_W + 6}" y="{y + 15}" class="val">{duration(seconds)}'
            f" ({share:.0f}%)</text>"
        )
        start += seconds
    parts.append(_axis(len(rows) * ROW_H, scale_end, area))
    if scale_end > total:
        x = LABEL_W + area
        parts.append(
            f'<line x1="{x}" y1="0" x2="{x}" y2="{len(rows) * ROW_H}" class="target"/>'
            f'<text x="{x - 4}" y="{len(rows) * ROW_H - 4}" text-anchor="end" class="tgt">'
            f"RTO target {duration(target_s)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _phase_class(name: str) -> str:
    return name if name in PHASES else OTHER


def _axis(y: float, end: float, area: float) -> str:
    parts = [f'<line x1="{LABEL_W}" y1="{y}" x2="{LABEL_W + area}" y2="{y}" class="axis"/>']
    for tick in nice_ticks(end):
        x = LABEL_W + tick / end * area
        parts.append(
            f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" class="axis"/>'
            f'<text x="{x:.1f}" y="{y + 16}" text-anchor="middle" class="tick">'
            f"{duration(tick) if tick else '0'}</text>"
        )
    return "".join(parts)


def nice_ticks(end: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 times a power of ten) from 0 to `end`."""
    if end <= 0:
        return [0.0]
    raw = end / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    ticks, value = [], 0.0
    while value <= end * 1.0001:
        ticks.append(round(value, 6))
        value += step
    return ticks


@dataclass(frozen=True)
class Point:
    """One run on the history chart."""

    label: str
    measured_s: float | None
    verdict: str | None


# Candidate ticks of the logarithmic axis, in seconds: 1 s, 10 s, 1 min, 10 min, 1 h, ...
_LOG_TICKS = (0.01, 0.1, 1, 10, 60, 600, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600)


def history_svg(
    kind: str, points: Sequence[Point], target_s: float | None, measure: str = "RTO"
) -> Markup:
    """The measured RTO (or `measure`: RPO) of one drill kind over the runs, on a log scale,
    with its target.

    A log scale keeps a 5-second restore and a 2-hour target on one chart, and shows a
    restore that doubles as clearly at 5 s as at 50 min. Only recoveries are points of the
    trend line: a run that failed did not recover, and is a red cross at the time it spent,
    titled "not recovered".
    """
    values = [p.measured_s for p in points if p.measured_s]
    if not values:
        return Markup(f'<p class="muted">No measured {escape(measure)} yet.</p>')
    known = [*values, *([target_s] if target_s else [])]
    low, high = math.log10(min(known) / 2), math.log10(max(known) * 2)
    top, plot_h, left, right = 10, 150, 70, 20
    area = WIDTH - left - right

    def y_of(seconds: float) -> float:
        return top + plot_h - (math.log10(seconds) - low) / (high - low) * plot_h

    def x_of(index: int) -> float:
        return left + (area / 2 if len(points) == 1 else index / (len(points) - 1) * area)

    height = top + plot_h + AXIS_H + 8
    parts = [_svg_open(height, f"{measure} history of the {kind} drill over {len(points)} runs")]
    parts.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + area}" y2="{top + plot_h}" '
        'class="axis"/>'
    )
    for tick in _LOG_TICKS:
        if low <= math.log10(tick) <= high:
            y = y_of(tick)
            parts.append(
                f'<line x1="{left}" y1="{y:.1f}" x2="{left + area}" y2="{y:.1f}" class="grid"/>'
                f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                f"{duration(tick)}</text>"
            )
    if target_s:
        y = y_of(target_s)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + area}" y2="{y:.1f}" class="target"/>'
            f'<text x="{left + area}" y="{y - 4:.1f}" text-anchor="end" class="tgt">'
            f"target {duration(target_s)}</text>"
        )
    line = [
        f"{x_of(i):.1f},{y_of(p.measured_s):.1f}"
        for i, p in enumerate(points)
        if p.measured_s and p.verdict == "pass"
    ]
    if len(line) > 1:
        parts.append(f'<polyline points="{" ".join(line)}" class="trend"/>')
    for index, point in enumerate(points):
        parts.append(_history_dot(x_of(index), point, y_of, top + plot_h))
    for index in sorted({0, len(points) - 1}):
        # The last label ends at its point, so that it is not cut at the chart's right edge.
        anchor = "end" if index and index == len(points) - 1 else "middle"
        parts.append(
            f'<text x="{x_of(index):.1f}" y="{top + plot_h + 16}" text-anchor="{anchor}" '
            f'class="tick">{escape(points[index].label)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _history_dot(x: float, point: Point, y_of, bottom: float) -> str:
    if point.verdict != "pass":
        # Not a recovery time: a cross where the time spent was, or on the axis.
        y = y_of(point.measured_s) + 5 if point.measured_s else bottom - 2
        spent = f" after {duration(point.measured_s)}" if point.measured_s else ""
        return (
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="middle" class="dot-fail">×'
            f"<title>{escape(point.label)}: not recovered{spent} "
            f"({escape(point.verdict or '?')})</title></text>"
        )
    return (
        f'<circle cx="{x:.1f}" cy="{y_of(point.measured_s):.1f}" r="3.5" class="dot">'
        f"<title>{escape(point.label)}: recovered in {duration(point.measured_s)}</title></circle>"
    )


def _svg_open(height: float, title: str) -> str:
    return (
        f'<svg viewBox="0 0 {WIDTH} {height:.0f}" '
        f'width="100%" role="img" class="chart"><title>{escape(title)}</title>'
    )
