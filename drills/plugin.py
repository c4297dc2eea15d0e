"""The pytest plugin of recovery-drills: options, markers, drill records and drill.json.

Options (each also readable from drill.toml or the environment, see docs/configuration.md):
`--drill-config PATH`, `--drill-set KEY=VALUE` (repeatable, CLI overrides of config keys),
`--drill-run-dir DIR` (where drill.json is written), `--drill-accept-shrink REASON` (accept an
implausible shrink for this run, the reason recorded). A scenario asks for the `drill`
fixture to open its record; the outcome of the test becomes the drill's verdict.
"""

from __future__ import annotations

import json
import platform
import signal
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drills import __version__
from drills.config.errors import DrillError
from drills.record import DrillRecord
from drills.report.pytest_extras import NODE_RECORD
from drills.runtime.facts import describe_containers

RECORDS_KEY = pytest.StashKey[list]()
# The test-runner reports (pytest-html columns and extras, Allure steps and attachments).
pytest_plugins = ["drills.report.pytest_extras"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("recovery-drills")
    group.addoption("--drill-config", default=None, help="drill.toml of the estate to drill")
    group.addoption(
        "--drill-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a configuration key, e.g. storage.url=file:///backups",
    )
    group.addoption("--drill-run-dir", default=None, help="write drill.json into this directory")
    group.addoption(
        "--drill-accept-shrink",
        default=None,
        metavar="REASON",
        help="accept, for this run, implausible shrinkage (a deliberate purge); the reason "
        "goes into the evidence",
    )
    group.addoption(
        "--drill-only",
        default=None,
        metavar="KINDS",
        help="run only these drills, comma-separated (database,files,config,system,freshness)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running; part of the CI test command")
    config.addinivalue_line("markers", "drill(kind): a drill scenario of that kind")
    config.stash[RECORDS_KEY] = []
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, _frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C: pytest then runs the finalizers that remove containers.
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    only = config.getoption("--drill-only")
    if not only:
        return
    kinds = {kind.strip() for kind in only.split(",") if kind.strip()}
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("drill")
        (keep if marker is None or marker.args[0] in kinds else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def overrides_from(config: pytest.Config) -> dict[str, str]:
    """The `--drill-set KEY=VALUE` options as a dict."""
    result = {}
    for item in config.getoption("--drill-set") or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise pytest.UsageError(f"--drill-set {item}: expected KEY=VALUE")
        result[key.strip()] = value
    return result


@pytest.fixture
def drill(request: pytest.FixtureRequest):
    """Open the record of this test's drill: `record = drill("database")`."""
    records = request.config.stash[RECORDS_KEY]

    def open_record(kind: str) -> DrillRecord:
        record = DrillRecord(kind)
        records.append(record)
        request.node.stash[NODE_RECORD] = record
        return record

    return open_record


@pytest.fixture(scope="session")
def accept_shrink(pytestconfig: pytest.Config) -> str | None:
    """The reason given with `drill run --accept-shrink REASON`, else None."""
    reason = pytestconfig.getoption("--drill-accept-shrink")
    return reason.strip() if reason and reason.strip() else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    record = item.stash.get(NODE_RECORD, None)
    if record is None:
        return report
    if report.skipped:
        record.verdict = "not_run"
        record.error = skip_reason(report)
    elif report.failed:
        record.verdict = "fail"
        if record.error is None:
            record.error = _causes(record, cause_of(call))
            if call.excinfo is not None:
                exc = call.excinfo.value
                record.extra["error_type"] = type(exc).__name__
                # The report's failure box: the first cause, and whose logs to show.
                record.extra["first_cause"] = getattr(exc, "first_cause", "") or record.error
                record.extra["culprit"] = getattr(exc, "container", None)
        if call.excinfo is not None and isinstance(call.excinfo.value, DrillError):
            # A named cause needs no traceback, and a traceback may print secrets.
            report.longrepr = f"{type(call.excinfo.value).__name__}: {record.error}"
    elif report.when == "call":
        record.verdict = "pass"
    if report.when == "call":
        _describe_containers(item, record, with_logs=report.failed)
    return report


def _describe_containers(item: pytest.Item, record: DrillRecord, with_logs: bool) -> None:
    """The run's containers into the record, where the reports read them."""
    # item.funcargs holds every fixture of the test's closure, the session's ones included.
    client, session = item.funcargs.get("docker_client"), item.funcargs.get("run_session")
    if client is None or session is None:
        return
    try:
        describe_containers(client, session.run_id, record, with_logs=with_logs)
    except Exception as exc:
        # An error here would be a pytest INTERNALERROR that stops every later drill.
        record.notes.append(f"the run's containers could not be described: {exc!r}")


def skip_reason(report: pytest.TestReport) -> str:
    """Why a test was skipped, without pytest's prefix."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _causes(record: DrillRecord, cause: str) -> str:
    """The checks that failed before the drill stopped, then what stopped it: a later error
    (a recovery to a target past a hole in the WAL) must not hide the check that named why."""
    earlier = [
        f"check failed: {c.name}: {c.detail}" for c in record.failed_checks if c.name not in cause
    ]
    return "; ".join([*earlier, cause])


def cause_of(call: pytest.CallInfo) -> str:
    """What stopped a test: its exception's message (an assertion's first line)."""
    if call.excinfo is None:
        return "failed"
    exc = call.excinfo.value
    text = str(exc).strip()
    if isinstance(exc, AssertionError):
        text = text.split("\nassert ")[0]
    return text or type(exc).__name__


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run_dir = session.config.getoption("--drill-run-dir", None)
    records: list[DrillRecord] = session.config.stash.get(RECORDS_KEY, [])
    if not run_dir:
        return
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    ran = [r for r in records if r.verdict != "not_run"]
    verdict = "pass" if ran and all(r.verdict == "pass" for r in ran) else "fail"
    document = {
        "verdict": verdict,
        "harness_version": __version__,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "finished_at": datetime.now(UTC).isoformat(),
        "drills": [r.as_dict() for r in records],
    }
    (path / "drill.json").write_text(json.dumps(document, indent=2) + "\n")
