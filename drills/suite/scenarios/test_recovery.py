"""Drill: the recovery commands themselves, run on a throwaway production as a user runs them.

Opt-in (a `[recovery]` section, or `--set recovery.scale=1`): it stands up its own
"production" rather than reading the estate's backups. Runbook: start the production (the
sample application's database and API, uploads, config files) -> back it up -> change it
(rows, heartbeats, uploads, a config file) -> `drill restore database --yes` (the API stopped
and started around the swap by the configured hooks) -> `drill restore files` -> `drill
restore config` -> the data equals the backup's: row counts, the heartbeat's recovered point,
upload checksums, config files; the safety dump exists and restores; the application answers
on the restored data -> a restore that fails midway (a cut dump, a corrupt snapshot) leaves
the database and the uploads untouched and the application usable.
"""

from __future__ import annotations

import subprocess

import pytest

from drills.checks.conclusion import conclude, describe
from drills.config.clock import human
from drills.recovery.rehearsal import Rehearsal
from drills.storage.catalog import list_backups
from drills.suite.fixtures import configured

DB = "drishti_production"


def _ran(record, name: str, result: subprocess.CompletedProcess, expected: int = 0) -> bool:
    """Record whether a command exited as expected, with the end of its output as evidence."""
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    record.check(
        name,
        result.returncode == expected,
        f"exit {result.returncode} (expected {expected}): {' | '.join(lines[-3:])}",
    )
    return result.returncode == expected


@pytest.mark.drill("recovery")
def test_recovery_commands_restore_a_changed_production(
    request, drill, drill_config, docker_client, run_session, tmp_path
):
    settings = configured(drill_config.recovery, "recovery")
    record = drill("recovery")

    with record.watch.phase("provision"):
        rehearsal = Rehearsal.start(docker_client, run_session, tmp_path, scale=settings.scale)
    request.addfinalizer(rehearsal.stop)
    backup = next(
        b
        for b in list_backups(rehearsal.storage, "database")
        if b.key == rehearsal.backups["database"].key
    )
    record.backup = describe(backup)
    expected = {t.name.removeprefix("public."): t.rows for t in backup.manifest.tables}
    expected = {t: expected[t] for t in ("users", "transactions", "audit_logs")}
    rehearsal.change_after_backup()
    changed = rehearsal.counts()

    safety_dir = tmp_path / "safety"
    with record.watch.phase("restore_database"):
        result = rehearsal.drill(
            "restore", "database", "--to", rehearsal.dsn(), "--yes",
            "--safety-dump-dir", str(safety_dir),
        )  # fmt: skip
    _ran(record, "drill restore database --yes", result)
    record.check(
        "the database holds the backup's rows",
        rehearsal.counts() == expected,
        f"restored {rehearsal.counts()}, the backup's manifest {expected}",
    )
    beat = rehearsal.newest_beat()
    record.check(
        "the heartbeat's recovered point is the backup's",
        beat == rehearsal.beat_at_backup,
        f"newest drill_heartbeat row {beat}, at backup time {rehearsal.beat_at_backup}",
    )
    kept = sorted(n for n in rehearsal.databases() if n.startswith(f"{DB}_before_"))
    record.check(
        "the replaced database is kept, as it was",
        len(kept) == 1 and rehearsal.counts(kept[0]) == changed,
        f"kept: {kept}; its rows {rehearsal.counts(kept[0]) if kept else '-'}, before {changed}",
    )
    dumps = sorted((safety_dir / "database").glob(f"{DB}_*.dump"))
    record.check("the safety dump exists", len(dumps) == 1, f"{[str(d) for d in dumps]}")
    if dumps:
        again = rehearsal.drill(
            "restore", "database", "--to", rehearsal.dsn("safety_check"), "--yes",
            "--no-safety-dump", "--storage-url", safety_dir.as_uri(),
            "--backup", f"database/{dumps[0].name}",
        )  # fmt: skip
        if _ran(record, "the safety dump restores (drill restore database)", again):
            record.check(
                "the safety dump holds the replaced data",
                rehearsal.counts("safety_check") == changed,
                f"{rehearsal.counts('safety_check')}, replaced {changed}",
            )
    health, users = rehearsal.app()
    record.check(
        "the application answers on the restored data (stopped and started by the hooks)",
        health == 200 and users == expected["users"],
        f"GET /health -> {health}; GET /users/count -> {users}, restored {expected['users']}",
    )

    with record.watch.phase("restore_files"):
        result = rehearsal.drill("restore", "files", "--to", str(rehearsal.estate.uploads_dir))
    _ran(record, "drill restore files", result)
    now = rehearsal.uploads_now()
    differ = sorted(set(now.items()) ^ set(rehearsal.uploads_at_backup.items()))
    record.check(
        "the uploads equal the backup's checksums",
        not differ,
        f"{len(now)} files" + (f"; differ: {[p for p, _ in differ][:5]}" if differ else ", equal"),
    )

    restored_config = tmp_path / "restored-config"
    with record.watch.phase("restore_config"):
        result = rehearsal.drill("restore", "config", "--to", str(restored_config))
    _ran(record, "drill restore config", result)
    wrong = [
        path
        for path, data in rehearsal.config_at_backup.items()
        if (restored_config / path.lstrip("/")).read_bytes() != data
    ]
    record.check(
        "the config files equal the backup's", not wrong, f"differ: {wrong}" if wrong else "equal"
    )

    with record.watch.phase("failures"):
        cut = rehearsal.put_cut_dump()
        before = rehearsal.counts()
        result = rehearsal.drill("restore", "database", "--to", rehearsal.dsn(), "--yes")
        _ran(record, f"a cut dump ({cut}) fails the restore", result, expected=1)
        health, _ = rehearsal.app()
        record.check(
            "after the failed restore the database is untouched and usable",
            rehearsal.counts() == before and health == 200,
            f"rows {rehearsal.counts()}, before {before}; GET /health -> {health}",
        )
        snapshot, victim = rehearsal.put_corrupt_snapshot()
        before_files = rehearsal.uploads_now()
        result = rehearsal.drill("restore", "files", "--to", str(rehearsal.estate.uploads_dir))
        _ran(record, f"a corrupt snapshot ({snapshot}, {victim}) fails the restore", result, 1)
        record.check(
            "after the failed restore the uploads are untouched",
            rehearsal.uploads_now() == before_files,
            f"{len(rehearsal.uploads_now())} files, as before",
        )

    record.notes.append(
        "phases restore_database, restore_files and restore_config are the measured times of "
        "those commands; `drill runbook` shows them beside each step"
    )
    record.extra["recovery"] = {
        k: human(v) for k, v in record.watch.phases.items() if k.startswith("restore_")
    }
    conclude(record, drill_config.targets.rto.full_system, None, None)
