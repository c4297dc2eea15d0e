"""Drill: every configured kind has a backup younger than its RPO, and the storage answers.

The original runbook's overdue alerts, as a drill: a backup that is too old fails even when
it would restore, because restoring it would lose more than the target allows. With
`[pitr]`, point-in-time recovery is judged the same way: the newest shipped WAL segment
against the database RPO (what WAL archiving exists for: a stalled shipper shows here), the
newest base backup against `[pitr] base_max_age`, and the WAL continuous from the base
backup the promise starts at to the newest segment.
"""

from __future__ import annotations

import pytest

from drills import pitr
from drills.checks.conclusion import conclude
from drills.config.clock import human
from drills.config.errors import DrillError
from drills.pitr.freshness import pitr_freshness
from drills.storage import catalog
from drills.suite.fixtures import configured

KINDS = ("database", "files", "config")


@pytest.mark.drill("freshness")
def test_latest_backups_are_within_their_rpo(drill, drill_config, drill_storage):
    kinds = [kind for kind in KINDS if getattr(drill_config, kind) is not None]
    record = drill("freshness")
    configured(kinds or drill_config.pitr, "database], [files], [config] or [pitr")
    rpo = drill_config.targets.rpo
    prefixes = drill_config.storage.prefixes

    with record.watch.phase("locate"):
        drill_storage.check()
        record.check("storage answers", True, drill_storage.url)
        for kind in kinds:
            try:
                newest = catalog.latest(
                    catalog.list_backups(
                        drill_storage,
                        kind,
                        getattr(prefixes, kind),
                        name_timezone=drill_config.storage.name_timezone,
                    )
                )
            except DrillError as exc:
                record.check(f"{kind}: a backup exists", False, str(exc))
                continue
            age = (record.watch.started_at - newest.taken_at).total_seconds()
            target = getattr(rpo, kind)
            record.check(
                f"{kind}: newest backup within RPO",
                age <= target,
                f"{newest.key} taken {newest.taken_at.isoformat()} ({newest.time_source}), "
                f"{human(age)} old, target {human(target)}",
            )
        if drill_config.pitr is not None:
            settings = drill_config.pitr
            found = pitr_freshness(
                drill_storage, prefixes.base, prefixes.wal, pitr.since(settings.accept_gaps_before)
            )
            record.notes += found.problems
            for name, passed, detail in found.checks(
                record.watch.started_at, rpo.database, settings.base_max_age
            ):
                record.check(name, passed, detail)

    conclude(record, None, None, None)
