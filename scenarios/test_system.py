"""Drill: the full system recovers, the original runbook's disaster-recovery drill.

Runbook: locate the newest database dump and uploads snapshot -> a private Docker network ->
a Postgres container of the dump's major, reachable as `db` -> restore the dump into it and
the uploads into a fresh volume -> check the data and the files -> start the application on
them (its database URL pointing at `db`, the uploads volume at its uploads directory) ->
`GET /health` answers 200, the user count through the API equals the database's, a restored
upload is served byte-identical to its recorded checksum -> compare the time taken with the
full-system RTO (the application's start with its own RTO) and the dump's age with the RPO.
"""

from __future__ import annotations

import contextlib
from urllib.parse import quote

import docker.errors
import pytest

from drills.checks import check_database, connect_restored, count_users
from drills.checks.conclusion import conclude, describe, locate
from drills.checks.service import UPLOADS_URL_PATH, check_count, check_health, check_upload
from drills.config.clock import human
from drills.config.errors import DrillError, StorageError
from drills.restore import dumpinfo, restore_database
from drills.restore.files import check_files, landed_files, restore_files, sample_file
from drills.runtime import images
from drills.runtime.api import start_api
from drills.runtime.network import private_network
from drills.storage import catalog
from fixtures.drills import check_limits, configured, secrets


@pytest.mark.drill("system")
def test_full_system_recovers(
    request, drill, drill_config, drill_storage, docker_client, run_session, restore_target
):
    app = configured(drill_config.app, "app")
    database = configured(drill_config.database, "database")
    targets, prefixes = drill_config.targets, drill_config.storage.prefixes
    record = drill("system")
    cleanup = contextlib.ExitStack()  # last in, first out: app, volume, database, network
    request.addfinalizer(cleanup.close)

    zone = drill_config.storage.name_timezone
    backup = locate(drill_storage, "database", record, prefixes.database, zone=zone)
    with record.watch.phase("locate"):
        try:
            uploads = catalog.latest(
                catalog.list_backups(drill_storage, "files", prefixes.files, name_timezone=zone)
            )
        except StorageError:
            if drill_config.files is not None:
                raise
            uploads = None
    if uploads is None:
        record.notes.append("no uploads snapshot: the application runs without restored uploads")
    else:
        record.extra["uploads_backup"] = describe(uploads)

    with record.watch.phase("verify"):
        major, source = dumpinfo.backup_major(drill_storage, backup, secrets(database))
        major = database.major or major
        if major is None:
            raise DrillError(f"{backup.key}: cannot tell the Postgres major version ({source})")

    with record.watch.phase("provision"):
        network = private_network(run_session)
        cleanup.callback(_remove_network, network)
        db = restore_target(major, network=network, aliases=("db",))
        cleanup.callback(db.stop)
        helper = images.ensure_postgres_image(docker_client, 15)  # tar, find, sha256sum
        app_image = app.image or images.ensure_app_image(docker_client)
    record.extra["app"] = {"image": app_image, "postgres_image": db.image}

    with record.watch.phase("restore"):
        bound = database.restore_timeout or targets.rto.database
        result = restore_database(
            drill_storage, backup, db, database.name, timeout=bound, secrets=secrets(database)
        )
        files = None
        if uploads is not None:
            files = restore_files(
                docker_client,
                run_session,
                drill_storage,
                uploads,
                image=helper,
                timeout=targets.rto.files,
            )
            cleanup.callback(files.remove)
    record.extra["restore"] = {
        "method": result.method,
        "sha256": result.sha256,
        "attempts": result.attempts,
        "roles_created": result.roles_created,
    }
    record.notes += result.notes

    with record.watch.phase("validate"):
        with connect_restored(db, database.name) as conn:
            check_database(
                conn,
                record,
                backup.manifest,
                database.checks,
                amcheck=False,
                facts=result.facts,
                limits=check_limits(database),
            )
            users = count_users(conn, record)
        landed = {}
        if files is not None:
            landed = landed_files(
                docker_client, run_session, files.volume, image=helper, timeout=targets.rto.files
            )
            check_files(record, uploads, files, landed)

    with record.watch.phase("app"):
        api = start_api(
            app_image,
            run_session,
            network=network,
            database_url=f"postgresql://{db.user}:{db.password}@db:5432/{database.name}",
            port=app.port,
            database_env=app.database_env,
            uploads_dir=app.uploads_dir,
            uploads_volume=files.volume if files else None,
            timeout=app.start_timeout,
        )
        cleanup.callback(api.stop)
        check_health(record, api.url(app.health_path), within=app.start_timeout)
        if users is not None:
            check_count(record, api.url(app.count_path), users)
        sample = sample_file(uploads, landed) if uploads is not None else None
        if sample is not None:
            path, expected = sample
            url = api.url(UPLOADS_URL_PATH + quote(path))
            check_upload(record, url, expected.sha256, expected.size)
    app_s = record.watch.phases["app"]
    record.check(
        "application up within its RTO",
        app_s <= targets.rto.application,
        f"{human(app_s)} from container start to the last app check, "
        f"target {human(targets.rto.application)} ([targets.rto] application)",
    )

    conclude(record, targets.rto.full_system, targets.rpo.database, backup.taken_at)


def _remove_network(network) -> None:
    with contextlib.suppress(docker.errors.APIError):
        network.remove()
