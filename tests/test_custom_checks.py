"""A team's own checks, as plain pytest tests in its own directory, run by `drill run` on the
drill's own restores: the database, the uploads, the config files and the running application.

Their outcomes land in the same drill.json, JUnit and HTML report as the built-in checks, their
time in the drill's validate phase; a failed one fails its drill with its name as the cause.
The database behind `restored_database` is the drill's own: the run holds one restored
Postgres, and the check's DSN points at it.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from fixtures.estate_backups import (
    drill_cli,
    put_database_dump,
    put_files_snapshot,
    run_drill,
    uploads,
    write_drill_toml,
)
from tests.test_drill_system import _sample, _sample_config

TEAM_CHECKS = '''
"""The team's checks: nothing here imports the harness."""
import hashlib
import json
import os
import re

import docker
import requests


def test_orders_reconcile(restored_database, drill_record):
    users = restored_database.connection.execute("SELECT count(*) FROM users").fetchone()[0]
    assert users > 0
    drill_record.notes.append(f"team: {users} users")
    # Which Postgres container answers at the DSN this check was given?
    client = docker.from_env()
    port = re.search(r"port=(\\d+)", restored_database.dsn).group(1)
    postgres = client.containers.list(filters={"label": "io.recovery-drills.role=postgres"})
    ours = [c.name for c in postgres if port in _ports(c)]
    with open(os.environ["TEAM_OUT"], "w") as out:
        json.dump({"containers": ours, "users": users}, out)


def _ports(container):
    return [b["HostPort"] for b in (container.ports.get("5432/tcp") or [])]


def test_uploads_are_readable(restored_files):
    path, state = sorted(restored_files.files.items())[0]
    data = restored_files.read_bytes(path)
    assert hashlib.sha256(data).hexdigest() == state.sha256


def test_config_has_the_env_file(restored_config):
    assert ".env.production" in restored_config.members
    assert restored_config.path(".env.production").read_bytes()


def test_the_runbook_is_reviewed():
    assert True  # a check of no drill: a record of its own


def test_the_api_answers(api_stack):
    answer = requests.get(api_stack.url_of("/health"), timeout=10)
    assert answer.status_code == 200
'''

FAILING_CHECK = """
def test_no_user_is_called_mallory(restored_database):
    found = restored_database.connection.execute("SELECT count(*) FROM users").fetchone()[0]
    assert found == -1, f"{found} users where the team expected none"
"""


def _team(tmp_path: Path, source: str) -> Path:
    checks = tmp_path / "team" / "drills"
    checks.mkdir(parents=True)
    (checks / "test_team.py").write_text(source)
    return checks


def _checks(drill: dict) -> dict[str, dict]:
    return {check["name"]: check for check in drill["checks"]}


def test_team_checks_run_on_the_drills_own_restores(
    tmp_path, local_storage, estate_dump, app_image
):
    put_database_dump(local_storage, estate_dump)
    put_files_snapshot(local_storage, uploads())
    _sample_config(local_storage, tmp_path, app_image)
    checks = _team(tmp_path, TEAM_CHECKS)
    sections = _sample() + f'[run]\nscenarios = ["{checks}"]\n'
    config = write_drill_toml(tmp_path, local_storage.url, sections, all_reports=True)
    out = tmp_path / "team.json"
    env = {**os.environ, "TEAM_OUT": str(out)}
    outcome = run_drill(config, "database,files,config,system", env=env, timeout=600)
    assert outcome.exit == 0, outcome.output[-4000:]

    database, files = outcome.drill("database"), outcome.drill("files")
    config_drill, system = outcome.drill("config"), outcome.drill("system")
    assert _checks(database)["team check test_orders_reconcile"]["passed"]
    assert _checks(files)["team check test_uploads_are_readable"]["passed"]
    assert _checks(config_drill)["team check test_config_has_the_env_file"]["passed"]
    assert _checks(system)["team check test_the_api_answers"]["passed"]
    users = estate_dump.counts["users"]
    assert f"team: {users} users" in database["notes"]

    # The drill's own restore: the check's DSN points at the very container the database
    # drill restored into (no second restore).
    seen = json.loads(out.read_text())
    assert seen == {"containers": [database["restore_target"]["container"]], "users": users}

    # Timed in the drill's phases and counted in its RTO.
    assert database["phases"]["validate"] > 0
    assert database["rto"]["measured_s"] >= sum(
        s for name, s in database["phases"].items() if name != "validate"
    )

    # In JUnit beside the built-in drills, and in the HTML report.
    junit = ET.parse(outcome.run_dir / "junit.xml").getroot()
    names = {case.get("name") for case in junit.iter("testcase")}
    assert {"test_orders_reconcile", "test_the_api_answers"} <= names
    assert "test_latest_database_backup_restores" in names
    page = (outcome.run_dir / "drill-report.html").read_text()
    assert "team check test_uploads_are_readable" in page
    # A check that asks for no drill's restore has a record of its own.
    custom = outcome.drill("custom")
    assert custom["verdict"] == "pass"
    assert [c["name"] for c in custom["checks"]] == ["team check test_the_runbook_is_reviewed"]
    status = drill_cli("status", "--config", str(config))
    assert status.returncode == 0, status.stdout + status.stderr


def test_a_failing_team_check_fails_its_drill_by_name(tmp_path, local_storage, estate_dump):
    put_database_dump(local_storage, estate_dump)
    checks = _team(tmp_path, FAILING_CHECK)
    sections = '[database]\nname = "drishti_production"\n'
    config = write_drill_toml(tmp_path, local_storage.url, sections, all_reports=True)
    outcome = run_drill(config, "database", str(checks))
    assert outcome.exit == 1, outcome.output[-3000:]
    database = outcome.drill("database")
    assert database["verdict"] == "fail"
    users = estate_dump.counts["users"]
    cause = f"check failed: team check test_no_user_is_called_mallory: {users} users where"
    assert database["error"].startswith(cause), database["error"]
    assert outcome.document["verdict"] == "fail"
    junit = ET.parse(outcome.run_dir / "junit.xml").getroot()
    failed = [
        case.get("name") for case in junit.iter("testcase") if case.find("failure") is not None
    ]
    assert failed == ["test_no_user_is_called_mallory"]


def test_a_team_check_of_a_drill_that_restored_nothing_is_not_run(tmp_path, local_storage):
    """No dump in the store: the database drill fails for that, and the team's check says it
    was not run, with the drill's cause; it neither passes nor hides the failure."""
    checks = _team(tmp_path, FAILING_CHECK)
    sections = f'[database]\nname = "drishti_production"\n[run]\nscenarios = ["{checks}"]\n'
    config = write_drill_toml(tmp_path, local_storage.url, sections)
    outcome = run_drill(config, "database")
    assert outcome.exit == 1, outcome.output[-3000:]
    database = outcome.drill("database")
    assert database["verdict"] == "fail"
    assert not any(c["name"].startswith("team check") for c in database["checks"])
    skipped = [n for n in database["notes"] if n.startswith("team check")]
    assert skipped, database["notes"]
    assert "not run: the database drill restored nothing" in skipped[0]
