"""Drill: the latest database backup restores, and the restored data is whole and plausible.

Runbook: locate the newest dump (and the one before it) -> read its major version -> start a
throwaway Postgres of that major -> stream the dump into it once (sha256, the compressor's end
of stream and pg_dump's completion marker checked on the way; the roles it refers to created
before they are needed) -> check that every object the dump declares exists, tables, data,
the configured SQL, the manifest's row counts, amcheck -> compare what was restored with the
last passing drill and the backup before it -> compare the time taken with the RTO and the
backup's age with the RPO -> with `rehearse_majors`, restore the same dump into each newer
major and report what differs (an upgrade rehearsal).
"""

from __future__ import annotations

import pytest

from drills.checks import check_database, connect_restored, plausibility
from drills.checks.choice import Choice
from drills.checks.conclusion import conclude, locate_with_previous
from drills.checks.projection import project_rto
from drills.checks.recovery_point import measure_recovery_point
from drills.checks.upgrade import rehearse_upgrades
from drills.config.errors import DrillError
from drills.restore import dumpinfo, restore_database
from drills.suite.fixtures import check_limits, configured, drill_history, secrets, thresholds


@pytest.mark.drill("database")
def test_latest_database_backup_restores(
    request, drill, drill_config, drill_storage, restore_target, restores, accept_shrink
):
    settings = configured(drill_config.database, "database")
    targets = drill_config.targets
    record = drill("database")

    backup, previous = locate_with_previous(
        drill_storage,
        "database",
        record,
        drill_config.storage.prefixes.database,
        zone=drill_config.storage.name_timezone,
        choice=Choice.of(drill_config, "database"),
    )

    with record.watch.phase("verify"):
        major, source = dumpinfo.backup_major(drill_storage, backup, secrets(settings))
        major = settings.major or major
        if major is None:
            raise DrillError(f"{backup.key}: cannot tell the Postgres major version ({source})")
    record.extra["postgres_major"] = {"major": major, "source": source}

    with record.watch.phase("provision"):
        target = restore_target(major)
    record.extra["restore_target"] = {
        "image": target.image,
        "version": target.server_version(),
        "container": target.get_wrapped_container().name,
    }

    bound = settings.restore_timeout or targets.rto.database
    with record.watch.phase("restore"):
        result = restore_database(
            drill_storage, backup, target, settings.name, timeout=bound, secrets=secrets(settings)
        )
    record.extra["restore"] = {
        "method": result.method,
        "bytes_read": result.bytes_read,
        "sha256": result.sha256,
        "seconds": round(result.seconds, 3),
        "attempts": result.attempts,
        "roles_created": result.roles_created,
    }
    record.notes += result.notes
    record.notes.append("fetch and checksum verification stream inside the restore phase")
    # The team's own checks (restored_database) run on this very restore, after this drill.
    restores.hand_over(request, record, (target, settings.name), release=target.stop, keep=target)

    with record.watch.phase("validate"), connect_restored(target, settings.name) as conn:
        plausibility.check_not_suspect(record, backup.manifest)
        profile = check_database(
            conn,
            record,
            backup.manifest,
            settings.checks,
            facts=result.facts,
            limits=check_limits(settings),
            target=target,
        )
        # The recovered point: the newest heartbeat row in the data, else the backup's time.
        recovered_at = measure_recovery_point(conn, record, backup.taken_at)
        restored_bytes = profile.database_bytes
    record.extra["profile"] = profile.as_dict()

    # Is it believable? Against the last passing drill and the backup before it.
    baselines = plausibility.database_baselines(
        drill_history(drill_config), drill_config.estate.name, backup, previous
    )
    findings = plausibility.judge_database(profile, backup, baselines, thresholds(settings))
    plausibility.record_plausibility(record, baselines, findings, accept_shrink)

    # What this restore would take at production size, against the same target.
    project_rto(
        record,
        backup,
        restored_bytes,
        production_bytes=settings.production_bytes,
        target_s=targets.rto.database,
        enforce=targets.enforce_projection,
    )
    conclude(record, targets.rto.database, targets.rpo.database, recovered_at)

    # The same dump into each newer major of `rehearse_majors`, after the verdict's clock stopped.
    rehearse_upgrades(
        record, drill_storage, backup, major, settings, restore_target, matched=target,
        profile=profile, limits=check_limits(settings), secrets=secrets(settings), timeout=bound,
    )  # fmt: skip
