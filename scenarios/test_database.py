"""Drill: the latest database backup restores, and the restored data is whole.

Runbook: locate the newest dump -> read its major version -> start a throwaway Postgres of
that major -> stream the dump into it (sha256 and the compressor's end of stream checked on
the way) -> check tables, data, the configured SQL, the manifest's row counts, amcheck ->
compare the time taken with the RTO and the backup's age with the RPO.
"""

from __future__ import annotations

import pytest

from drills import dumpinfo
from drills.checks import check_database, connect_restored
from drills.errors import DrillError
from drills.projection import database_bytes, project_rto
from drills.recovery_point import measure_recovery_point
from drills.restore import restore_database
from drills.steps import conclude, locate
from fixtures.drills import configured


@pytest.mark.drill("database")
def test_latest_database_backup_restores(drill, drill_config, drill_storage, restore_target):
    settings = configured(drill_config.database, "database")
    targets = drill_config.targets
    record = drill("database")

    backup = locate(drill_storage, "database", record, drill_config.storage.prefixes.database)

    with record.watch.phase("verify"):
        major, source = dumpinfo.backup_major(drill_storage, backup)
        major = settings.major or major
        if major is None:
            raise DrillError(f"{backup.key}: cannot tell the Postgres major version ({source})")
    record.extra["postgres_major"] = {"major": major, "source": source}

    with record.watch.phase("provision"):
        target = restore_target(major)
    record.extra["restore_target"] = {"image": target.image, "version": target.server_version()}

    bound = settings.restore_timeout or targets.rto.database
    with record.watch.phase("restore"):
        result = restore_database(drill_storage, backup, target, settings.name, timeout=bound)
    record.extra["restore"] = {
        "method": result.method,
        "bytes_read": result.bytes_read,
        "sha256": result.sha256,
        "seconds": round(result.seconds, 3),
    }
    record.notes += result.notes
    record.notes.append("fetch and checksum verification stream inside the restore phase")

    with record.watch.phase("validate"), connect_restored(target, settings.name) as conn:
        check_database(conn, record, backup.manifest, settings.checks)
        # The recovered point: the newest heartbeat row in the data, else the backup's time.
        recovered_at = measure_recovery_point(conn, record, backup.taken_at)
        restored_bytes = database_bytes(conn)

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
