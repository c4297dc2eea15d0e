"""The recoverable window of a pitr drill, drawn: what can be recovered to, and its holes.

One bar on a time axis from the promise's start (or the oldest point shown) to the newest
recoverable point: the recoverable pieces in green, each hole in the WAL in red (grey when
`[pitr] accept_gaps_before` accepts it), the drill's target as a mark. Inline SVG, like the
other charts: no script, font or image.

    >>> window_svg(drill["pitr"])  # doctest: +SKIP
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from markupsafe import Markup, escape

from drills.report.charts import WIDTH

LEFT, RIGHT = 12, 12
BAR_Y, BAR_H = 22, 18
HEIGHT = 76


def window_svg(pitr: Any) -> Markup | None:
    """The window of a drill.json ``pitr`` entry; None when it has none to draw."""
    if not isinstance(pitr, dict):
        return None
    ranges = [(_time(a), _time(b)) for a, b in pitr.get("window_ranges") or []]
    ranges = [(a, b) for a, b in ranges if a and b]
    holes = [h for h in pitr.get("holes") or [] if isinstance(h, dict)]
    target = _time(pitr.get("target"))
    promised = [_time(t) for t in pitr.get("promised") or []]
    moments = [t for pair in ranges for t in pair] + [t for t in promised if t]
    moments += [t for h in holes for t in (_time(h.get("since")), _time(h.get("until"))) if t]
    moments += [target] if target else []
    if len(moments) < 2 or max(moments) <= min(moments):
        return None
    start, end = min(moments), max(moments)
    area = WIDTH - LEFT - RIGHT

    def x_of(moment: datetime) -> float:
        return LEFT + (moment - start).total_seconds() / (end - start).total_seconds() * area

    title = f"Recoverable window: {len(ranges)} pieces, {len(holes)} holes"
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" class="chart">'
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{BAR_Y}" width="{area}" height="{BAR_H}" class="win-none"/>',
    ]
    for a, b in ranges:
        parts.append(_bar(x_of(a), x_of(b), "win-ok", f"recoverable {_label(a)} .. {_label(b)}"))
    for hole in holes:
        since, until = _time(hole.get("since")) or start, _time(hole.get("until")) or end
        css = "win-accepted" if hole.get("accepted") else "win-hole"
        count = hole.get("segments")
        what = f"{count} WAL segment{'' if count == 1 else 's'} missing from {hole.get('first')}"
        if hole.get("accepted"):
            what += " (accepted: older than the promise)"
        parts.append(_bar(x_of(since), x_of(until), css, what))
    if promised and promised[0]:
        x = x_of(promised[0])
        parts.append(
            f'<line x1="{x:.1f}" y1="{BAR_Y - 6}" x2="{x:.1f}" y2="{BAR_Y + BAR_H + 6}" '
            'class="axis"><title>the promise starts here</title></line>'
        )
    if target:
        x = x_of(target)
        parts.append(
            f'<line x1="{x:.1f}" y1="{BAR_Y - 8}" x2="{x:.1f}" y2="{BAR_Y + BAR_H + 8}" '
            f'class="target"><title>target {_label(target)}</title></line>'
            f'<text x="{x:.1f}" y="{BAR_Y - 10}" text-anchor="middle" class="tgt">target</text>'
        )
    for moment, anchor in ((start, "start"), (end, "end")):
        parts.append(
            f'<text x="{x_of(moment):.1f}" y="{BAR_Y + BAR_H + 22}" text-anchor="{anchor}" '
            f'class="tick">{escape(_label(moment))}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _bar(x1: float, x2: float, css: str, title: str) -> str:
    width = max(x2 - x1, 2.0)
    return (
        f'<rect x="{x1:.1f}" y="{BAR_Y}" width="{width:.1f}" height="{BAR_H}" class="{css}">'
        f"<title>{escape(title)}</title></rect>"
    )


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _label(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
