"""The public fixtures: a team's own checks, run on what the drill itself restored.

A team adds its checks as plain pytest tests in its own repository and names them in
`[run] scenarios` (or on `drill run`'s command line)::

    def test_orders_reconcile(restored_database):
        row = restored_database.connection.execute("select count(*) from orders").fetchone()
        assert row[0] > 0

The fixtures, each the drill's own restore (never a second one):

- `restored_database`: `.connection` (a psycopg connection to the restored database,
  autocommit) and `.dsn`;
- `restored_files`: `.volume` (the Docker volume the uploads were restored into), `.files`
  (each file's size and sha256, by path) and `.read_bytes(path)`;
- `restored_config`: `.directory` (the extracted files), `.members` and `.path(name)`;
- `api_stack`: `.url` (the base URL of the restored application, on loopback) and
  `.url_of(path)`;
- `drill_record`: the record of the drill the check belongs to (`.check(name, passed,
  detail)` adds a check of its own, `.notes`).

A check belongs to the drill whose fixture it asks for (or to `@pytest.mark.drill(kind)`):
it runs after that drill, its outcome becomes one of that drill's checks (drill.json, the
HTML report, JUnit, the evidence), its time is added to that drill's validate phase and to
its RTO, and a failed check fails the drill. A check that belongs to no drill goes into a
record of its own, kind "custom". When the drill restored nothing, its checks are not run
(skipped, with the drill's cause): the drill has failed already.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from drills.config.clock import Target
from drills.plugin import RECORDS_KEY, cause_of, skip_reason
from drills.record import DrillRecord
from drills.suite import SCENARIOS

# Which drill a public fixture belongs to.
FIXTURE_KINDS = {
    "restored_database": "database",
    "restored_files": "files",
    "restored_config": "config",
    "api_stack": "system",
}
CUSTOM = "custom"
RESTORES_KEY = pytest.StashKey["Restores"]()
KIND_KEY = pytest.StashKey[str]()


@dataclass
class RestoredDatabase:
    """The database the drill restored: a connection to it and its libpq URL."""

    connection: Any
    dsn: str


@dataclass
class RestoredFiles:
    """The uploads the drill restored, in a Docker volume of the run."""

    volume: str
    files: dict[str, Any]
    reader: Callable[[str], bytes] = field(repr=False)

    def read_bytes(self, path: str) -> bytes:
        """The content of one restored file (read from a read-only container over the
        volume)."""
        return self.reader(path)


@dataclass
class ApiStack:
    """The restored application, running: its base URL on loopback."""

    url: str

    def url_of(self, path: str) -> str:
        """The URL of a path of the application."""
        return self.url.rstrip("/") + "/" + path.lstrip("/")


class Restores:
    """What the built-in drills restored this session, kept for the team's checks that ask
    for it, and released at the end of the session."""

    def __init__(self, wanted: set[str]) -> None:
        self.wanted = wanted
        self.records: dict[str, DrillRecord] = {}
        self.values: dict[str, Any] = {}
        self.kept: list[object] = []
        self._releases: list[Callable[[], None]] = []

    def hand_over(
        self,
        request: pytest.FixtureRequest,
        record: DrillRecord,
        value: Any,
        release: Callable[[], None] | None = None,
        keep: object | None = None,
    ) -> None:
        """Offer what a drill restored to the team's checks. Kept (and released at the end of
        the session) when a check asks for it; else released when the drill's test ends."""
        self.records[record.kind] = record
        if record.kind in self.wanted:
            self.values[record.kind] = value
            if keep is not None:
                self.kept.append(keep)
            if release is not None:
                self._releases.append(release)
        elif release is not None:
            request.addfinalizer(release)

    def keeps(self, thing: object) -> bool:
        """Whether `thing` (a container) is held for the team's checks."""
        return any(thing is kept for kept in self.kept)

    def take(self, kind: str, opened: list[DrillRecord]) -> Any:
        """What the drill of `kind` restored; skips the check when it restored nothing (the
        drill's cause, from the records `opened` this session, says why)."""
        if kind not in self.values:
            record = next((r for r in reversed(opened) if r.kind == kind), None)
            why = (record.error if record is not None else None) or "the drill did not run"
            pytest.skip(f"the {kind} drill restored nothing for this check: {why}")
        return self.values[kind]

    def release(self) -> None:
        """Release everything kept, last kept first; a failure is said, not raised."""
        while self._releases:
            release = self._releases.pop()
            try:
                release()
            except Exception as exc:
                print(f"drill: could not release a kept restore: {exc!r}", file=sys.stderr)


def is_builtin(item: pytest.Item) -> bool:
    """Whether `item` is one of the built-in drills (not a team's own check)."""
    module = getattr(getattr(item, "obj", None), "__module__", "") or ""
    return module.startswith("drills.suite.scenarios") or Path(item.path).is_relative_to(SCENARIOS)


def kind_of(item: pytest.Item) -> str:
    """The drill a team's check belongs to: its drill marker, else its fixtures' drill."""
    marker = item.get_closest_marker("drill")
    if marker is not None and marker.args:
        return str(marker.args[0])
    for name in getattr(item, "fixturenames", ()):
        if name in FIXTURE_KINDS:
            return FIXTURE_KINDS[name]
    return CUSTOM


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The team's checks run after the built-in drills, whose restores they use; a check of a
    drill left out with --drill-only is left out too. Outside a drill run (the project's own
    tests), nothing changes."""
    if not (config.getoption("--drill-run-dir", None) or config.getoption("--drill-config", None)):
        return
    only = config.getoption("--drill-only", None)
    kinds = {k.strip() for k in only.split(",") if k.strip()} if only else None
    keep, drop = [], []
    for item in items:
        if not is_builtin(item):
            item.stash[KIND_KEY] = kind_of(item)
            if kinds is not None and item.stash[KIND_KEY] not in (kinds | {CUSTOM}):
                drop.append(item)
                continue
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    keep.sort(key=lambda item: 0 if is_builtin(item) else 1)  # stable: order kept within
    items[:] = keep
    wanted = {item.stash[KIND_KEY] for item in keep if KIND_KEY in item.stash}
    config.stash[RESTORES_KEY] = Restores(wanted)


@pytest.fixture(scope="session")
def restores(pytestconfig: pytest.Config) -> Iterator[Restores]:
    """The session's restores, kept for the team's checks; released at the end."""
    held = pytestconfig.stash.get(RESTORES_KEY, None)
    if held is None:
        held = pytestconfig.stash[RESTORES_KEY] = Restores(set())
    yield held
    held.release()


@pytest.fixture
def restored_database(
    request: pytest.FixtureRequest, restores: Restores
) -> Iterator[RestoredDatabase]:
    """The database the database drill restored: `.connection` (psycopg, autocommit) and
    `.dsn`."""
    target, dbname = restores.take("database", request.config.stash.get(RECORDS_KEY, []))
    with contextlib.closing(target.connect(dbname, autocommit=True)) as conn:
        yield RestoredDatabase(conn, target.dsn(dbname))


@pytest.fixture
def restored_files(request: pytest.FixtureRequest, restores: Restores) -> RestoredFiles:
    """The uploads the files drill restored: `.volume`, `.files`, `.read_bytes(path)`."""
    return restores.take("files", request.config.stash.get(RECORDS_KEY, []))


@pytest.fixture
def restored_config(request: pytest.FixtureRequest, restores: Restores):
    """The config archive the config drill restored and extracted: `.directory`, `.members`,
    `.path(name)`."""
    return restores.take("config", request.config.stash.get(RECORDS_KEY, []))


@pytest.fixture
def api_stack(request: pytest.FixtureRequest, restores: Restores) -> ApiStack:
    """The application the system drill brought up on the restored data: `.url`."""
    return restores.take("system", request.config.stash.get(RECORDS_KEY, []))


@pytest.fixture
def drill_record(request: pytest.FixtureRequest, restores: Restores) -> DrillRecord:
    """The record of the drill this check belongs to."""
    return record_for(request.config, restores, request.node.stash.get(KIND_KEY, CUSTOM))


def record_for(config: pytest.Config, restores: Restores, kind: str) -> DrillRecord:
    """The record of drill `kind` (also when it failed before it restored anything); a
    record of kind "custom" for checks of no drill that ran."""
    record = restores.records.get(kind)
    if record is None:
        opened = [r for r in config.stash.get(RECORDS_KEY, []) if r.kind == kind]
        record = opened[-1] if opened else None
    if record is None:
        record = restores.records[CUSTOM] = restores.records.get(CUSTOM) or _custom(config)
    return record


def _custom(config: pytest.Config) -> DrillRecord:
    record = DrillRecord(CUSTOM)
    record.verdict = "not_run"  # until a check of its own passes or fails
    record.watch.phases["validate"] = 0.0
    config.stash[RECORDS_KEY].append(record)
    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if KIND_KEY not in item.stash or call.when == "teardown":
        return report
    if call.when == "setup" and report.passed:
        return report  # the outcome is the call's
    restores = item.config.stash.get(RESTORES_KEY, None)
    if restores is None:
        return report
    record = record_for(item.config, restores, item.stash[KIND_KEY])
    name = f"team check {item.name}"
    if report.skipped:
        record.notes.append(f"{name} not run: {skip_reason(report)}")
    elif report.failed:
        cause = cause_of(call)
        record.check(name, False, cause)
        _fail(record, f"check failed: {name}: {cause}")
    else:
        record.check(name, True, f"passed in {call.duration:.2f} s ({item.nodeid})")
        if record.verdict == "not_run":
            record.verdict = "pass"
    _add_time(record, call.duration)
    return report


def _add_time(record: DrillRecord, seconds: float) -> None:
    """A team's check is part of the drill's validation: its time counts in the RTO."""
    record.watch.phases["validate"] = record.watch.phases.get("validate", 0.0) + seconds
    if record.rto.measured_s is None:
        return
    was = record.rto.met
    record.rto = Target(record.rto.target_s, record.rto.measured_s + seconds)
    if was is not False and record.rto.met is False:
        _fail(
            record,
            f"RTO over target with the team's checks: measured {record.rto.measured_s:.1f} s, "
            f"target {record.rto.target_s:.1f} s",
        )


def _fail(record: DrillRecord, cause: str) -> None:
    if record.verdict != "fail":
        record.verdict = "fail"
        record.error = cause
        record.extra["first_cause"] = cause
    else:
        record.error = "; ".join(filter(None, [record.error, cause]))
