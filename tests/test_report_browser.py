"""The drill report of a real demo drill, opened in headless Chromium as a person would.

`drill demo` drills the embedded estate end to end; its report is then loaded in Debian's
`chromium` (installed by scripts/setup.sh; nothing is installed at test time), driven over
the DevTools protocol on a pipe (no port, no extra package): the page must load with no
console error and no request beyond the file itself, the verdict banner, the RTO table and
the timeline chart must be visible, it must print on A4, and a screenshot is saved next to
the report (`drill-report.png`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1280, 2000


class Chromium:
    """Headless Chromium driven over `--remote-debugging-pipe` (fd 3 in, fd 4 out)."""

    def __init__(self, profile: Path) -> None:
        binary = shutil.which("chromium")
        if binary is None:
            pytest.fail("no chromium: install Debian's chromium (scripts/setup.sh does)")
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()

        def wire_pipes() -> None:
            read_end, write_end = os.dup(to_browser), os.dup(from_browser)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        argv = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-pipe",
            f"--window-size={WIDTH},{HEIGHT}", "about:blank",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            argv,
            pass_fds=(3, 4),
            preexec_fn=wire_pipes,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._last_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Call a DevTools method and return its result; events meanwhile are kept."""
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._last_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 30) -> None:
        """Wait until an event has been received."""
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._read(deadline))

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise AssertionError("chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise AssertionError(f"chromium exited (code {self.process.poll()})")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def close(self) -> None:
        """Close the browser; kill it if it does not go."""
        try:
            self.send("Browser.close")
            self.process.wait(timeout=10)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(timeout=10)
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)


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
    browser = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        browser.send("Page.navigate", {"url": demo_report.as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        layout = browser.send(
            "Runtime.evaluate",
            {"expression": LAYOUT, "returnByValue": True},
            session=session,
        )["result"]["value"]
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
        pdf = browser.send(
            "Page.printToPDF",
            {"paperWidth": 8.27, "paperHeight": 11.69, "preferCSSPageSize": True},
            session=session,
        )
    finally:
        browser.close()
    screenshot = demo_report.with_name("drill-report.png")
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    return {
        "events": browser.events,
        "layout": layout,
        "screenshot": screenshot,
        "pdf": base64.b64decode(pdf["data"]),
        "url": demo_report.as_uri(),
    }


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
    errors = [
        e["params"]
        for e in page["events"]
        if e.get("method") in ("Runtime.exceptionThrown", "Runtime.consoleAPICalled")
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert errors == []
    requested = [
        e["params"]["request"]["url"]
        for e in page["events"]
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requested == [page["url"]]


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
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (WIDTH, HEIGHT)
    assert len(data) > 50_000, "a blank or nearly blank page"
    # A page of text, tables and colours has many distinct filtered byte values; a blank one few.
    assert len(set(_idat(data))) > 100


def _idat(png: bytes) -> bytes:
    chunks, offset = [], 8
    while offset < len(png):
        length, kind = struct.unpack(">I4s", png[offset : offset + 8])
        if kind == b"IDAT":
            chunks.append(png[offset + 8 : offset + 8 + length])
        offset += 12 + length
    return zlib.decompress(b"".join(chunks))


def test_report_prints_on_a4_pages(page):
    pdf = page["pdf"]
    assert pdf.startswith(b"%PDF")
    pages = re.findall(rb"/Type\s*/Page\b(?!s)", pdf)
    assert len(pages) >= 2
    # A4 is 595 x 842 points; every page of the print has that box.
    boxes = re.findall(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", pdf)
    assert boxes
    for width, height in boxes:
        assert abs(float(width) - 595) < 2
        assert abs(float(height) - 842) < 2
