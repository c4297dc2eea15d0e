"""What the test-runner reports show of a drill: pytest-html columns and extras, Allure details.

pytest-html: the columns Drill, RTO target, RTO measured and Verdict, and the drill's phase
table, targets and checks as the test's extras. Allure (when `--alluredir` is given): the
estate and the drill kind as labels, one step per phase named with its time, the RTO and
RPO as steps, and the drill record, the backup's manifest and container logs as
attachments. JUnit XML: the drill, its verdict, RTO and RPO as the test's properties. A drill
that did not recover reads "not recovered" in each (`drills.report.targets`), never "met".

The containers of the drill's run reach these reports through the record (`containers`,
`logs`: filled by the plugin from `drills.runtime.facts`); this module reads the record only.

Loaded by the recovery-drills plugin: `pytest_plugins = ["drills.report.pytest_extras"]`;
the plugin imports it first for `NODE_RECORD`, so it asks pytest not to rewrite its asserts
(it has none): PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from markupsafe import escape

from drills.config.errors import DrillError
from drills.config.schema import redact_text
from drills.record import DrillRecord
from drills.report.charts import duration
from drills.report.targets import NOT_RECOVERED, recovered, rpo_text, rto_text

log = logging.getLogger(__name__)

NODE_RECORD = pytest.StashKey[DrillRecord]()
"""Where the plugin keeps a drill test's record on its item."""


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """After the plugin has set the drill's verdict: describe the drill on the report."""
    report = yield
    record: DrillRecord | None = item.stash.get(NODE_RECORD, None)
    if record is None:
        return report
    try:
        if report.when == "call":
            # The teardown report, which junitxml reads properties from, copies these.
            item.user_properties.extend(_properties(record))
            if item.config.pluginmanager.has_plugin("html"):
                report.extras = [*getattr(report, "extras", []), _html_extra(record)]
            if item.config.pluginmanager.has_plugin("allure_listener"):
                _allure_details(item, record)
        report.drill = _row(record)
    except Exception as exc:
        # An error here would be a pytest INTERNALERROR that stops every later drill: the
        # reports lose a detail instead, and the record says which.
        log.exception("report details of the %s drill", record.kind)
        record.notes.append(f"the test-runner reports lack details of this drill: {exc!r}")
    return report


# --- pytest-html --------------------------------------------------------------------------

COLUMNS = (
    ("drill", "Drill", True),
    ("rto-target", "RTO target", False),
    ("rto-measured", "RTO measured", False),
    ("verdict", "Verdict", True),
)


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_header(cells: list[str]) -> None:
    """Add the drill columns after the test's name."""
    for offset, (css, title, sortable) in enumerate(COLUMNS):
        attributes = f' class="sortable" data-column-type="{css}"' if sortable else ""
        cells.insert(2 + offset, f"<th{attributes}>{title}</th>")


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_row(report: pytest.TestReport, cells: list[str]) -> None:
    """Fill the drill columns (empty for a test that opened no drill record)."""
    row = getattr(report, "drill", None) or {}
    for offset, (css, _, _) in enumerate(COLUMNS):
        cells.insert(2 + offset, f'<td class="col-{css}">{escape(row.get(css, ""))}</td>')


def _row(record: DrillRecord) -> dict[str, str]:
    measured = duration(record.rto.measured_s)
    if not recovered(record.verdict) and record.verdict != "not_run":
        spent = f" ({measured} spent)" if record.rto.measured_s is not None else ""
        measured = NOT_RECOVERED + spent
    return {
        "drill": record.kind,
        "rto-target": duration(record.rto.target_s),
        "rto-measured": measured,
        "verdict": record.verdict.replace("_", " "),
    }


def _properties(record: DrillRecord) -> list[tuple[str, str]]:
    """The drill's JUnit properties."""
    rto, rpo = record.rto, record.rpo
    found = [
        ("drill", record.kind),
        ("verdict", record.verdict),
        ("rto", rto_text(record.verdict, rto.target_s, rto.measured_s)),
        ("rpo", rpo_text(record.verdict, rpo.target_s, rpo.measured_s)),
        ("recovered", "true" if recovered(record.verdict) else "false"),
    ]
    for name, target in (("rto", rto), ("rpo", rpo)):
        for field, value in (("target_s", target.target_s), ("measured_s", target.measured_s)):
            if value is not None:
                found.append((f"{name}_{field}", f"{value:.3f}"))
    return found


def _html_extra(record: DrillRecord) -> dict[str, Any]:
    from pytest_html import extras

    def cell(text: Any) -> str:
        return f"<td>{escape(redact_text(str(text)))}</td>"

    phases = "".join(
        f"<tr>{cell(name)}{cell(duration(seconds))}</tr>"
        for name, seconds in record.watch.phases.items()
    )
    checks = "".join(
        f"<tr>{cell(c.name)}{cell('passed' if c.passed else 'FAILED')}{cell(c.detail)}</tr>"
        for c in record.checks
    )
    targets = "".join(
        f"<tr>{cell(name)}{cell(duration(t.target_s))}{cell(duration(t.measured_s))}"
        f"{cell(text(record.verdict, t.target_s, t.measured_s))}</tr>"
        for name, t, text in (("RTO", record.rto, rto_text), ("RPO", record.rpo, rpo_text))
    )
    cause = ""
    if record.error:
        cause = f"<p><strong>Cause:</strong> {escape(redact_text(record.error))}</p>"
    return extras.html(
        f"<div><h4>{escape(record.kind)} drill: {escape(record.verdict)}</h4>{cause}"
        f"<table><tr><th></th><th>Target</th><th>Measured</th><th>Verdict</th></tr>{targets}"
        f"</table><table><tr><th>Phase</th><th>Time</th></tr>{phases}</table>"
        f"<table><tr><th>Check</th><th>Result</th><th>Evidence</th></tr>{checks}</table></div>"
    )


# --- Allure -------------------------------------------------------------------------------


def _allure_details(item: pytest.Item, record: DrillRecord) -> None:
    import allure
    from allure_commons.types import AttachmentType

    estate = getattr(item.funcargs.get("drill_config"), "estate", None)
    if estate is not None:
        allure.dynamic.label("estate", estate.name)
        allure.dynamic.epic(estate.name)
    allure.dynamic.label("kind", record.kind)
    allure.dynamic.feature(record.kind)
    for name, seconds in record.watch.phases.items():
        _step(f"{name}: {duration(seconds)}", {"seconds": f"{seconds:.3f}"})
    for name, target, text in (("RTO", record.rto, rto_text), ("RPO", record.rpo, rpo_text)):
        _step(f"{name}: {text(record.verdict, target.target_s, target.measured_s)}", {})
    if record.verdict == "fail":
        cause = redact_text(record.error or "failed")
        _step(f"verdict: fail: {cause}", {}, AssertionError(cause))
    document = json.dumps(record.as_dict(), indent=2, default=str)
    allure.attach(redact_text(document), "drill record", AttachmentType.JSON)
    manifest = _manifest_text(item, record)
    if manifest is not None:
        allure.attach(manifest, f"manifest {record.backup['manifest']}", AttachmentType.JSON)
    for name, text in (record.extra.get("logs") or {}).items():
        allure.attach(redact_text(text), f"log of {name}", AttachmentType.TEXT)


def _step(title: str, params: dict[str, str], error: BaseException | None = None) -> None:
    # allure.step() cannot take parameters outside a decorated function; its hooks can.
    from allure_commons import plugin_manager

    step_id = str(uuid.uuid4())
    plugin_manager.hook.start_step(uuid=step_id, title=title, params=params)
    plugin_manager.hook.stop_step(
        uuid=step_id, exc_type=type(error) if error else None, exc_val=error, exc_tb=None
    )


def _manifest_text(item: pytest.Item, record: DrillRecord) -> str | None:
    key = (record.backup or {}).get("manifest")
    storage = item.funcargs.get("drill_storage")
    if not key or storage is None:
        return None
    try:
        return redact_text(storage.read_bytes(key).decode(errors="replace"))
    except DrillError as exc:
        return json.dumps({"error": f"the manifest could not be read again: {exc}"})
