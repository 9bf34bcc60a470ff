"""The scale curve of `medindex bench-scale --json` runs as a PNG: write rate, store RSS and
search latency (p50, p95, taken while the ingest wrote) against points, one line per run.

    .venv/bin/python docs/scale_plot.py OUT.png RUN.json [RUN.json ...]

A run's file: its output, stdout and stderr (the progress lines) together or the last line.

Drawn with Pillow (a dependency already): three panels stacked, axes from zero.
"""

from __future__ import annotations

import json
import sys
from itertools import pairwise
from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, PANEL, MARGIN = 900, 260, 70
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (140, 86, 75), (227, 119, 194), (23, 190, 207))  # fmt: skip
LEGEND_COLUMNS, LEGEND_ROW = 4, 16
PANELS = (
    ("write rate, images/s", ("images_per_s",)),
    (
        "store worker RSS, MiB (its anonymous part dashed, measured since run 8)",
        ("store_rss_mib", "store_anon_mib"),
    ),
    ("filtered search during the ingest, ms (p50, p95 dashed)", ("search_p50_ms", "search_p95_ms")),
)


def main(out: Path, runs: list[Path]) -> None:
    if len(runs) > len(COLOURS):
        raise SystemExit(f"at most {len(COLOURS)} runs in one plot")
    steps = [_steps(path) for path in runs]
    legend_rows = -(-len(runs) // LEGEND_COLUMNS)
    image = Image.new("RGB", (WIDTH, len(PANELS) * PANEL + 30 + LEGEND_ROW * legend_rows), "white")
    draw = ImageDraw.Draw(image)
    most = max(step["points"] for run in steps for step in run)
    for i, (title, keys) in enumerate(PANELS):
        top = 20 + i * PANEL
        values = [s[k] for run in steps for s in run for k in keys if s.get(k) is not None]
        high = max(values, default=1) * 1.1
        _axes(draw, top, title, most, high)
        for colour, run in zip(COLOURS, steps, strict=False):  # a colour a run, checked above
            for dashed, key in enumerate(keys):
                points = [(_x(s["points"], most), _y(s[key], high, top)) for s in run
                          if s.get(key) is not None]  # fmt: skip
                _line(draw, points, colour, dashed=bool(dashed))
    for n, (colour, path) in enumerate(zip(COLOURS, runs, strict=False)):
        row, column = divmod(n, LEGEND_COLUMNS)
        y = len(PANELS) * PANEL + 22 + LEGEND_ROW * row
        draw.text((MARGIN + 10 + 190 * column, y), path.stem, fill=colour)
    image.save(out)


def _steps(path: Path) -> list[dict]:
    """A run's steps: its final line's, else its progress lines (a run stopped before its
    end)."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    final = [line["steps"] for line in lines if "steps" in line]
    return final[-1] if final else [line["progress"] for line in lines if "progress" in line]


def _x(points: float, most: float) -> float:
    return MARGIN + (WIDTH - 2 * MARGIN) * points / most


def _y(value: float, high: float, top: int) -> float:
    return top + PANEL - 40 - (PANEL - 60) * value / high


def _axes(draw: ImageDraw.ImageDraw, top: int, title: str, most: int, high: float) -> None:
    bottom = top + PANEL - 40
    draw.text((MARGIN, top), title, fill="black")
    draw.line([(MARGIN, top + 20), (MARGIN, bottom), (WIDTH - MARGIN, bottom)], fill="black")
    for k in range(5):
        value = high * k / 4
        y = _y(value, high, top)
        draw.line([(MARGIN - 4, y), (MARGIN, y)], fill="black")
        draw.text((8, y - 6), f"{value:,.0f}", fill="black")
        points = most * k / 4
        draw.text((_x(points, most) - 20, bottom + 6), f"{points:,.0f}", fill="black")


def _line(draw: ImageDraw.ImageDraw, points: list, colour: tuple, dashed: bool) -> None:
    for a, b in pairwise(points):
        if dashed:
            for t in range(0, 10, 2):
                s, e = t / 10, (t + 1) / 10
                draw.line([_at(a, b, s), _at(a, b, e)], fill=colour, width=2)
        else:
            draw.line([a, b], fill=colour, width=2)
    for x, y in points:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)


def _at(a: tuple, b: tuple, t: float) -> tuple:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(arg) for arg in sys.argv[2:]])
