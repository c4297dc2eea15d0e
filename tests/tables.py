"""The catalogues' tables: shown on the terminal after their module ran, and written under
reports/ for the docs to quote.

    print_catalogue = published(RESULTS, catalogue_markdown, "fault catalogue", "faults.md")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def published(results: list[dict], render: Callable[[list[dict]], str], title: str, name: str):
    """A module-scoped autouse fixture: once the module's tests ran, `render(results)` (a
    Markdown table) goes to the terminal after a `title` line, and to reports/`name`."""

    @pytest.fixture(scope="module", autouse=True)
    def publish(request: pytest.FixtureRequest):
        yield
        if not results:
            return
        table = render(results)
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", title)
            reporter.write_line(table)
        out = ROOT / "reports" / name
        out.parent.mkdir(exist_ok=True)
        out.write_text(table)

    return publish
