"""The drill report of a real demo drill, opened in headless Chromium as a person would.

`drill demo` drills the embedded estate end to end; its report is then loaded in headless
Chromium (tests/browser.py): the page must load with no
console error and no request beyond the file itself, the verdict banner, the RTO table and
the timeline chart must be visible, it must print on A4, and a screenshot is saved next to
the report (`drill-report.png`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import (
    HEIGHT,
    WIDTH,
    assert_a4,
    console_errors,
    open_page,
    png_pixels,
    png_size,
    requested,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> Path:
    """The HTML report of a real `drill demo` (whatever its verdict)."""
    work = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, "-m", "drills.cli", "demo", "--report-dir", str(work / "reports")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=work,
    )
    report = (work / "reports" / "latest" / "drill-report.html").resolve()
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert report.exists(), result.stdout + result.stderr
    return report


@pytest.fixture(scope="module")
def page(demo_report, tmp_path_factory) -> dict:
    """Load the report; collect its console, network, layout, screenshot and PDF."""
    loaded = open_page(demo_report, tmp_path_factory.mktemp("chromium-profile"), LAYOUT)
    screenshot = demo_report.with_name("drill-report.png")
    screenshot.write_bytes(loaded["png"])
    return {**loaded, "screenshot": screenshot}


# What a reader sees: each element's box, and whether it is displayed at all.
LAYOUT = """
(() => {
  const seen = (selector) => {
    const node = document.querySelector(selector);
    if (!node) return null;
    const box = node.getBoundingClientRect();
    const style = getComputedStyle(node);
    return {width: box.width, height: box.height, top: box.top,
            shown: style.display !== "none" && style.visibility !== "hidden",
            text: node.innerText || node.textContent || ""};
  };
  return {
    banner: seen("#verdict"),
    table: seen("#targets table"),
    timeline: seen("#drill-database svg.chart"),
    bars: document.querySelectorAll("#drill-database svg.chart rect").length,
    history: seen("#history svg.chart"),
    title: document.title,
  };
})()
"""


def test_page_loads_with_no_console_error_and_no_request_beyond_itself(page):
    assert console_errors(page["events"]) == []
    assert requested(page["events"]) == [page["url"]]


def test_banner_rto_table_and_timeline_are_visible(page):
    layout = page["layout"]
    for part in ("banner", "table", "timeline"):
        box = layout[part]
        assert box is not None, f"no {part} on the page"
        assert box["shown"], part
        assert box["width"] > 300, (part, box)
        assert box["height"] > 20, (part, box)
    assert layout["banner"]["top"] < 100  # the verdict is the first thing a reader sees
    assert layout["banner"]["text"].startswith(
        ("PASS: recovery drill of", "FAIL: recovery drill of")
    )
    assert "RTO" in layout["table"]["text"]
    assert "RPO" in layout["table"]["text"]
    assert layout["bars"] >= 3
    assert layout["title"].startswith("Drill ")


def test_screenshot_is_saved_next_to_the_report_and_shows_a_page(page):
    data = page["screenshot"].read_bytes()
    assert png_size(data) == (WIDTH, HEIGHT)
    assert len(data) > 50_000, "a blank or nearly blank page"
    # A page of text, tables and colours has many distinct filtered byte values; a blank one few.
    assert len(set(png_pixels(data))) > 100


def test_report_prints_on_a4_pages(page):
    assert_a4(page["pdf"], min_pages=2)
