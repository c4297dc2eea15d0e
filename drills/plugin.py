"""The pytest plugin of recovery-drills: options, markers, drill records and drill.json.

Options (each also readable from drill.toml or the environment, see docs/configuration.md):
`--drill-config PATH`, `--drill-set KEY=VALUE` (repeatable, CLI overrides of config keys),
`--drill-run-dir DIR` (where drill.json is written), `--drill-accept-shrink REASON` (accept an
implausible shrink for this run, the reason recorded), `--drill-no-progress` (no progress line;
also `DRILL_PROGRESS=0`). A scenario asks for the `drill` fixture to open its record; the
outcome of the test becomes the drill's verdict.

While a drill runs, a terminal on stderr shows its progress on one rewritten line (the phase,
and during a restore the bytes read of the dump's size, the rate and the ETA; see
`drills.restore.progress`). The terminal's descriptor is duplicated at configure time, before
pytest captures the test's output, so the line reaches the user and never the captured text.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drills import __version__
from drills.config.errors import DrillError
from drills.record import DrillRecord
from drills.report.pytest_extras import NODE_RECORD
from drills.restore import progress
from drills.runtime.facts import describe_containers

RECORDS_KEY = pytest.StashKey[list]()
TERMINAL_KEY = pytest.StashKey["Terminal | None"]()
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
    group.addoption(
        "--drill-no-progress",
        action="store_true",
        default=False,
        help="no progress line on the terminal (also DRILL_PROGRESS=0); never shown off a TTY",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running; part of the CI test command")
    config.addinivalue_line("markers", "drill(kind): a drill scenario of that kind")
    config.stash[RECORDS_KEY] = []
    config.stash[TERMINAL_KEY] = Terminal.open(config)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def pytest_unconfigure(config: pytest.Config) -> None:
    terminal = config.stash.get(TERMINAL_KEY, None)
    if terminal is not None:
        terminal.close()


class Terminal:
    """The user's terminal (stderr), duplicated before pytest captures it, for the progress
    line; None from `open` when stderr is not a terminal or progress is turned off."""

    def __init__(self, config: pytest.Config, fd: int, beside_pytest: bool) -> None:
        self.config, self.fd, self.beside_pytest = config, fd, beside_pytest

    @classmethod
    def open(cls, config: pytest.Config) -> Terminal | None:
        """Duplicate stderr if it is a terminal that should show progress: in a drill run
        (`drill run`, `drill demo`), not in a test session of the project's own."""
        if not config.getoption("--drill-run-dir", None):
            return None
        if config.getoption("--drill-no-progress", False) or not progress.wanted(2):
            return None
        # At configure time pytest's capture is suspended: fd 2 is the user's terminal.
        return cls(config, os.dup(2), beside_pytest=_same_terminal(1, 2))

    def display(self, item: pytest.Item) -> progress.Display:
        """A progress display for the test `item`, showing its drill's current phase."""
        column = 0
        if self.beside_pytest:
            # pytest's report of this test (its name) is on the terminal's current line.
            writer = self.config.get_terminal_writer() if _has_reporter(self.config) else None
            column = writer.width_of_current_line if writer is not None else 0

        def phase() -> tuple[str, float] | None:
            record = item.stash.get(NODE_RECORD, None)
            now = record.watch.current if record is not None else None
            return None if now is None else (now[0], time.monotonic() - now[1])

        return progress.Display(self.fd, phase, return_to=column)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _same_terminal(a: int, b: int) -> bool:
    try:
        return os.isatty(a) and os.fstat(a).st_rdev == os.fstat(b).st_rdev
    except OSError:
        return False


def _has_reporter(config: pytest.Config) -> bool:
    return config.pluginmanager.get_plugin("terminalreporter") is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    terminal = item.config.stash.get(TERMINAL_KEY, None)
    if terminal is None:
        return (yield)
    display = terminal.display(item)
    display.start()
    try:
        return (yield)
    finally:
        # Stopped and cleared before pytest reports the outcome on the same terminal.
        display.stop()


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
