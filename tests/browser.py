"""Headless Chromium for the page tests: load a self-contained HTML page as a person would.

Debian's `chromium` (installed by scripts/setup.sh; nothing is installed at test time) is
driven over the DevTools protocol on a pipe (no port, no extra package). `open_page()` loads
a file and returns what a reader and a printer get of it: console errors, every request the
page made, the layout of chosen elements, a screenshot and an A4 print.
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
import time
import zlib
from pathlib import Path

import pytest

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


def open_page(path: Path, profile: Path, layout: str) -> dict:
    """Load `path`; return its events, the `layout` script's value, a PNG screenshot and an
    A4 PDF print."""
    browser = Chromium(profile)
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
        browser.send("Page.navigate", {"url": path.as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        value = browser.send(
            "Runtime.evaluate",
            {"expression": layout, "returnByValue": True},
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
    return {
        "events": browser.events,
        "layout": value,
        "png": base64.b64decode(shot["data"]),
        "pdf": base64.b64decode(pdf["data"]),
        "url": path.as_uri(),
    }


def console_errors(events: list[dict]) -> list[dict]:
    """Exceptions, console calls and error log entries of a page."""
    return [
        e["params"]
        for e in events
        if e.get("method") in ("Runtime.exceptionThrown", "Runtime.consoleAPICalled")
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]


def requested(events: list[dict]) -> list[str]:
    """Every URL the page asked for."""
    return [
        e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    ]


def pdf_pages(pdf: bytes) -> tuple[int, list[tuple[float, float]]]:
    """How many pages a PDF has, and the (width, height) in points of every page box."""
    assert pdf.startswith(b"%PDF")
    count = len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf))
    boxes = re.findall(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", pdf)
    return count, [(float(w), float(h)) for w, h in boxes]


def assert_a4(pdf: bytes, min_pages: int = 1) -> None:
    """The print has at least `min_pages` pages, every one A4 (595 x 842 points)."""
    count, boxes = pdf_pages(pdf)
    assert count >= min_pages
    assert boxes
    for width, height in boxes:
        assert abs(width - 595) < 2
        assert abs(height - 842) < 2


def png_size(data: bytes) -> tuple[int, int]:
    """The width and height of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def png_pixels(png: bytes) -> bytes:
    """The filtered pixel bytes of a PNG (a blank page has few distinct values)."""
    chunks, offset = [], 8
    while offset < len(png):
        length, kind = struct.unpack(">I4s", png[offset : offset + 8])
        if kind == b"IDAT":
            chunks.append(png[offset + 8 : offset + 8 + length])
        offset += 12 + length
    return zlib.decompress(b"".join(chunks))
