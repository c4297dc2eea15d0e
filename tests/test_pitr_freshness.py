"""Point-in-time recovery in the freshness drill and `drill status`, with only `[pitr]`
configured (`fixtures.pitr`'s failover, shipped): the newest base backup, the newest shipped
segment against the database RPO (a stalled shipper), the window's continuity (a hole); the
kinds left out are "not configured", never MISSING. And a run where every drill was skipped
exits 2 saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from fixtures.estate_backups import drill_cli, run_drill, write_drill_toml


def _config(archive, tmp_path, *, rpo: str = "1h", without: tuple[str, ...] = ()):
    url = archive.copy_store(tmp_path / "store", without=without)
    more = f'[targets.rpo]\ndatabase = "{rpo}"'
    directory = tmp_path / "config"
    directory.mkdir()
    return write_drill_toml(directory, url, archive.sections(database=False, more=more))


def _checks(drill: dict) -> dict[str, bool]:
    return {check["name"]: check["passed"] for check in drill["checks"]}


def _status(config, env) -> tuple[int, dict, str]:
    as_json = drill_cli("status", "--config", str(config), "--json", env=env)
    table = drill_cli("status", "--config", str(config), env=env)
    assert as_json.returncode == table.returncode
    return as_json.returncode, json.loads(as_json.stdout), table.stdout


def test_pitr_alone_is_fresh_in_the_drill_and_the_status(tmp_path, promoted_archive):
    archive = promoted_archive
    config = _config(archive, tmp_path)
    outcome = run_drill(config, "freshness", env=archive.env)
    assert outcome.exit == 0, outcome.output[-3000:]
    checks = _checks(outcome.drill("freshness"))
    assert checks == {
        "storage answers": True,
        "base: newest base backup within [pitr] base_max_age": True,
        "wal: newest segment within the database RPO": True,
        "wal: continuous from the base backup to the newest segment": True,
    }
    code, status, table = _status(config, archive.env)
    assert code == 0, table
    kinds = status["kinds"]
    assert kinds["base"]["within_rpo"] is True
    assert kinds["wal"]["within_rpo"] is True
    assert kinds["wal"]["continuity"].startswith("continuous from base/")
    for kind in ("database", "files", "config"):
        assert kinds[kind]["configured"] is False
    assert "MISSING" not in table
    assert table.count("not configured") == 3, table


def test_a_stalled_shipper_fails_freshness_and_status(tmp_path, promoted_archive):
    archive = promoted_archive
    config = _config(archive, tmp_path, rpo="2s")
    outcome = run_drill(config, "freshness", env=archive.env)
    assert outcome.exit == 1, outcome.output[-3000:]
    drill = outcome.drill("freshness")
    assert _checks(drill)["wal: newest segment within the database RPO"] is False
    assert "check failed: wal: newest segment within the database RPO: wal/" in drill["error"]
    code, status, table = _status(config, archive.env)
    assert code == 1, table
    assert status["kinds"]["wal"]["within_rpo"] is False
    assert "OVERDUE" in table


def test_a_hole_fails_freshness_and_status(tmp_path, promoted_archive):
    archive = promoted_archive
    gone = archive.middle_segment()
    config = _config(archive, tmp_path, without=(f"wal/{gone}",))
    outcome = run_drill(config, "freshness", env=archive.env)
    assert outcome.exit == 1, outcome.output[-3000:]
    error = outcome.drill("freshness")["error"]
    assert f"wal/{gone[:-3]} is missing (later ones are archived)" in error, error
    code, status, table = _status(config, archive.env)
    assert code == 1, table
    assert status["kinds"]["wal"]["holes"], status["kinds"]["wal"]
    assert "HOLES" in table, table


STAND_IN = """
import pytest


@pytest.mark.drill("freshness")
def test_a_drill_that_skips(drill):
    drill("freshness")
    pytest.skip("not configured: a stand-in drill that always skips")
"""


def test_a_run_where_every_drill_was_skipped_exits_2(tmp_path):
    """A stand-in scenario directory: with the real scenarios, a configured drill always runs
    (`drill run` refuses a configuration with nothing to drill), so only a scenario that
    skips can make a run in which nothing was drilled."""
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "test_stand_in.py").write_text(STAND_IN)
    config = tmp_path / "drill.toml"
    config.write_text(
        f'[storage]\nurl = "{tmp_path.as_uri()}"\n[database]\nname = "app"\n'
        f'[report]\ndir = "{tmp_path / "reports"}"\nhtml = false\npytest_html = false\n'
        "allure = false\n"
    )
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from drills.commands.run import run
        from drills.config import load_config
        config = load_config({str(config)!r})
        sys.exit(run(config, {str(config)!r}, {{}}, only=["freshness"], quiet=True,
                     scenarios=Path({str(scenarios)!r})))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env=dict(os.environ),
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "drill: NOTHING DRILLED: every drill was skipped (freshness: not configured: a " \
        "stand-in drill that always skips)" in done.stdout, done.stdout  # fmt: skip
    assert "FAIL" not in done.stdout
