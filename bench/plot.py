"""A hand-written SVG line chart of restore time against database size, one line per method.

No plotting library: the chart is a few dozen SVG elements, written as text.

    >>> svg = time_against_size({"runbook": [(0.35, 4.1), (1.4, 18.8)]})
    >>> svg.startswith("<svg")
    True
"""

from __future__ import annotations

import math
from html import escape

WIDTH, HEIGHT = 820, 480
LEFT, RIGHT, TOP, BOTTOM = 70, 300, 40, 60
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(top / step) + 1)]


def _number(value: float) -> str:
    return f"{value:g}" if value >= 1 or value == 0 else f"{value:.2g}"


def time_against_size(
    series: dict[str, list[tuple[float, float]]],
    title: str = "Restore time against database size (medians)",
    x_label: str = "database size on disk (GB)",
    y_label: str = "seconds",
) -> str:
    """An SVG document: one polyline with markers per series of (size, seconds) points."""
    points = [p for line in series.values() for p in line]
    xs = _ticks(max((x for x, _ in points), default=1.0))
    ys = _ticks(max((y for _, y in points), default=1.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + plot_w * x / xs[-1]

    def sy(y: float) -> float:
        return TOP + plot_h * (1 - y / ys[-1])

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="22" font-size="15">{escape(title)}</text>',
    ]
    for y in ys:
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            'stroke="#e0e0e0"/>'
        )
        out.append(
            f'<text x="{LEFT - 8}" y="{sy(y) + 4:.1f}" text-anchor="end">{_number(y)}</text>'
        )
    for x in xs:
        out.append(
            f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{TOP}" y2="{TOP + plot_h}" '
            'stroke="#f0f0f0"/>'
        )
        out.append(
            f'<text x="{sx(x):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">'
            f"{_number(x)}</text>"
        )
    out.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#555"/>'
    )
    out.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 15}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    out.append(
        f'<text transform="translate(18 {TOP + plot_h / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    for index, (name, line) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        line = sorted(line)
        if len(line) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        for x, y in line:
            out.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{colour}">'
                f"<title>{escape(name)}: {y:.1f} s at {x:.2f} GB</title></circle>"
            )
        legend_y = TOP + 10 + 20 * index
        legend_x = LEFT + plot_w + 16
        out.append(
            f'<line x1="{legend_x}" x2="{legend_x + 22}" y1="{legend_y}" y2="{legend_y}" '
            f'stroke="{colour}" stroke-width="3"/>'
        )
        out.append(f'<text x="{legend_x + 28}" y="{legend_y + 4}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def series_of(documents: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """(database GB, median seconds) per method label, from benchmark result documents."""
    series: dict[str, list[tuple[float, float]]] = {}
    for document in documents:
        for data in document["scales"].values():
            size = data["estate"]["database_bytes"] / 1e9
            for entry in data["summary"]["methods"].values():
                series.setdefault(entry["label"], []).append((size, entry["median_s"]))
    return series


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.plot results/a.json results/b.json -o both.svg`: one chart of
    several runs (e.g. the scales measured separately)."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m bench.plot")
    parser.add_argument("results", nargs="+", help="bench/results/<timestamp>.json files")
    parser.add_argument("-o", "--output", required=True, help="the SVG to write")
    args = parser.parse_args(argv)
    documents = [json.loads(Path(path).read_text()) for path in args.results]
    Path(args.output).write_text(time_against_size(series_of(documents)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
