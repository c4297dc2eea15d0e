"""Drill: the database recovers to a point in time from a base backup and archived WAL.

Runbook: list the base backups and the archived WAL -> start a throwaway Postgres of their
major -> find the recoverable window (each base backup's end up to the newest commit in its
continuous WAL) -> prove the promised window: the WAL continuous from the base backup the
promise starts at to the newest segment, on every timeline -> take the target (given, or a
random point in the promised window, recorded so the drill can be replayed) -> pick the
latest base backup that ended at or before it -> stream it into the data directory (sha256
on the way) -> pg_verifybackup with the WAL it needs -> replay WAL to the target along its
timelines and promote -> check the boundary with the heartbeat rows, the configured SQL and
amcheck -> time it against the RTO, and the archive's newest point against the RPO.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from drills import pitr
from drills.checks import check_database, connect_restored
from drills.checks.conclusion import conclude
from drills.checks.recovery_point import check_heartbeat_boundary
from drills.config import Config
from drills.pitr.container import RecoveryContainer
from drills.pitr.recovery import Recovery
from drills.runtime import images
from drills.runtime.labels import RunSession
from drills.suite.fixtures import configured


@pytest.fixture
def recovery_container(
    docker_client, run_session: RunSession, drill_config: Config
) -> Iterator[Callable[..., RecoveryContainer]]:
    """Start containers that wait for a base backup before their server starts."""
    started: list[RecoveryContainer] = []

    def start(major: int, **kwargs) -> RecoveryContainer:
        image = drill_config.runtime.postgres_image or images.ensure_postgres_image(
            docker_client, major
        )
        container = RecoveryContainer(image, run_session, **kwargs)
        started.append(container)
        return container.start_waiting()

    yield start
    for container in reversed(started):
        container.stop()


@pytest.mark.drill("pitr")
def test_database_recovers_to_a_point_in_time(
    drill, drill_config, drill_storage, recovery_container
):
    record = drill("pitr")
    settings = configured(drill_config.pitr, "pitr")
    database = pitr.database_name(drill_config)
    prefixes, targets = drill_config.storage.prefixes, drill_config.targets

    with record.watch.phase("locate"):
        found = pitr.survey(drill_storage, prefixes.base, prefixes.wal)
    record.notes += found.problems

    with record.watch.phase("provision"):
        container = recovery_container(
            found.newest.major, user=found.newest.superuser, dbname=database
        )

    with record.watch.phase("locate"):
        window = pitr.measure_window(found, drill_storage, container)
        promise = pitr.prove(window, found, drill_storage, pitr.since(settings.accept_gaps_before))
        record.extra["pitr"] = {
            "window": window.describe(),
            "window_ranges": [[pitr.iso(a), pitr.iso(b)] for a, b in window.ranges()],
            **promise.as_dict(),
        }
        record.check("WAL continuous over the promised window", promise.ok, promise.describe())
        target, source = pitr.choose_target(window, settings.target, since=promise.start)
        record.extra["pitr"] |= {
            "target": pitr.iso(target),
            "target_source": source,
            "replay_with": f"drill run --only pitr --target-time {pitr.iso(target)}",
        }
        chosen = pitr.recoverable_at(window, target)
    record.backup = pitr.describe_base(chosen)
    record.notes += pitr.passed_over(window, target, chosen)
    record.extra["pitr"]["timeline"] = chosen.plan.target_timeline
    record.extra["pitr"]["timelines"] = chosen.plan.timelines

    bound = targets.rto.database
    with Recovery(
        drill_storage, found.archive, chosen, container, target, timeout=bound
    ) as recovery:
        record.extra["pitr"]["measured"] = recovery.facts  # filled as it goes, kept on failure
        with record.watch.phase("restore"):
            recovery.restore_base()
        with record.watch.phase("verify"):
            recovery.verify()
        with record.watch.phase("replay"):
            recovery.replay()

    record.notes.append(pitr.timeline_note(chosen, recovery.facts))
    checks = drill_config.database.checks if drill_config.database else ()
    with record.watch.phase("validate"), connect_restored(container, database) as conn:
        recovery.check_stop(record)
        check_heartbeat_boundary(conn, record, target, recovery.stopped_before)
        check_database(conn, record, None, checks)

    # RPO: what a recovery now would lose at best, the age of the newest recoverable point
    conclude(record, targets.rto.database, targets.rpo.database, window.latest)
