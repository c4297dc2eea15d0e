"""Drill: the full system recovers, the original runbook's disaster-recovery drill.

Runbook: locate the newest database dump, uploads snapshot and config archive -> restore the
config archive privately (its env file and compose file say how the app runs) -> provision:
every image the recovery needs is on this machine (the database's, the app's, each compose
service's), a private Docker network, a Postgres of the dump's major answering as `db` and
as the compose file's database service -> restore the dump into it and the uploads into a
fresh volume -> check the data, the files and the config -> start the application on them
(one container with the restored env file, or the restored compose stack; its database URL
pointing at the restored database) -> the health path answers 200 -> the app stays healthy
for [app] soak -> the count through the API equals the database's, a restored upload is
served byte-identical, every smoke request answers as it should -> it is still up ->
compare the time taken with the full-system RTO (the application's start with its own) and
the dump's age with the RPO.
"""

from __future__ import annotations

import contextlib
from urllib.parse import quote

import docker.errors
import pytest

from drills.checks import check_database, connect_restored, count_for_app
from drills.checks.conclusion import conclude, locate, locate_optional
from drills.checks.http import AppClient
from drills.checks.service import (
    check_count,
    check_health,
    check_holds,
    check_smoke,
    check_still_up,
    check_upload,
    is_running,
)
from drills.config.clock import human
from drills.config.errors import ConfigError, DrillError
from drills.restore import dumpinfo, restore_database
from drills.restore.config import check_config, find_member, restore_config
from drills.restore.envfile import parse_env
from drills.restore.files import check_files, landed_files, restore_files, sample_file
from drills.runtime import images
from drills.runtime.api import DatabaseAddress, unset_variables
from drills.runtime.app import plan_app
from drills.runtime.network import private_network
from drills.suite.fixtures import check_limits, configured, secrets
from drills.suite.public import ApiStack


@pytest.mark.drill("system")
def test_full_system_recovers(
    request,
    drill,
    drill_config,
    drill_storage,
    docker_client,
    run_session,
    restore_target,
    restores,
):
    app = configured(drill_config.app, "app")
    database = configured(drill_config.database, "database")
    targets, prefixes = drill_config.targets, drill_config.storage.prefixes
    record = drill("system")
    cleanup = contextlib.ExitStack()  # last in, first out: app, volume, database, network
    request.addfinalizer(cleanup.close)

    # What needs no backup is checked first: a missing credential fails in a second.
    client = AppClient.from_settings(app.headers)
    if unset_variables(app.env):
        names = ", ".join("$" + n for n in unset_variables(app.env))
        raise ConfigError(f"[app] env refers to {names}, not set in the drill's environment")

    zone = drill_config.storage.name_timezone
    backup = locate(drill_storage, "database", record, prefixes.database, zone=zone)
    uploads = locate_optional(
        drill_storage, "files", record, prefixes.files,
        required=drill_config.files is not None, key="uploads_backup", zone=zone,
    )  # fmt: skip
    needs_config = drill_config.config is not None or bool(app.env_file or app.compose_file)
    archive = locate_optional(
        drill_storage, "config", record, prefixes.config,
        required=needs_config, key="config_backup", zone=zone,
    )  # fmt: skip

    with record.watch.phase("verify"):
        major, source = dumpinfo.backup_major(drill_storage, backup, secrets(database))
        major = database.major or major
        if major is None:
            raise DrillError(f"{backup.key}: cannot tell the Postgres major version ({source})")

    # The config comes first: its env file and compose file say how the app runs.
    env, compose_file = {}, None
    if archive is not None:
        settings = drill_config.config
        with record.watch.phase("fetch"):
            restored = cleanup.enter_context(
                restore_config(
                    drill_storage,
                    archive,
                    passphrase_env=settings.passphrase_env if settings else None,
                    timeout=targets.rto.config,
                )
            )
            check_config(record, archive, restored, settings.required if settings else ())
            if app.env_file:
                name = find_member(restored, app.env_file, "[app] env_file")
                env = parse_env(restored.path(name).read_bytes(), name)
            if app.compose_file:
                name = find_member(restored, app.compose_file, "[app] compose_file")
                compose_file = restored.path(name)
    elif app.env_file or app.compose_file:
        raise DrillError("no config archive: [app] env_file and compose_file need one")

    with record.watch.phase("provision"):
        pull = images.pulls_allowed(drill_config.runtime.pull)
        launch = plan_app(app, docker_client, run_session, compose_file=compose_file, pull=pull)
        record.extra["app"] = launch.describe()
        record.notes += launch.notes
        network = private_network(run_session)
        cleanup.callback(_remove_network, network)
        db = restore_target(major, network=network, aliases=("db", *launch.database_names))
        cleanup.callback(db.stop)
        helper = images.ensure_postgres_image(docker_client, 15)  # tar, find, sha256sum
    record.extra["app"]["postgres_image"] = db.image

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
            count = count_for_app(conn, record, app.count_sql)
        landed = {}
        if files is not None:
            landed = landed_files(
                docker_client, run_session, files.volume, image=helper, timeout=targets.rto.files
            )
            check_files(record, uploads, files, landed)

    up = False
    with record.watch.phase("app"):
        address = DatabaseAddress("db", database.name, db.user, db.password)
        running = launch.start(
            run_session,
            docker_client,
            network,
            address,
            env,
            uploads_volume=files.volume if files else None,
        )
        cleanup.callback(running.stop)
        with contextlib.suppress(DrillError):  # an app with no URL has failed its checks
            # The team's own checks (api_stack) ask this very application, after this drill.
            stack = ApiStack(running.url("/"))
            restores.hand_over(request, record, stack, release=cleanup.pop_all().close, keep=db)
        if check_health(record, running, client, app.health_path, within=app.start_timeout):
            up = check_holds(record, running, client, app.health_path, soak=app.soak)
        if is_running(running):  # an app that answers 503 is still asked the rest
            if count is not None and app.count_path:
                check_count(record, running, client, app.count_path, *count)
            sample = sample_file(uploads, landed) if uploads is not None else None
            if sample is not None and app.uploads_url_path:
                path, expected = sample
                url_path = app.uploads_url_path + quote(path)
                check_upload(record, running, client, url_path, expected.sha256, expected.size)
            for smoke in app.smoke:
                check_smoke(record, running, client, smoke.path, smoke.status, smoke.contains)
            up = up and check_still_up(record, running).passed
        else:
            record.notes.append(
                "the application is down: its count, upload and smoke checks were not made"
            )
    app_s = record.watch.phases["app"]
    target = f"target {human(targets.rto.application)} ([targets.rto] application)"
    record.check(
        "application up within its RTO",
        up and app_s <= targets.rto.application,
        f"{human(app_s)} from container start to the last app check, {target}"
        if up
        else f"the application did not come up and stay up ({human(app_s)} spent), {target}",
    )

    conclude(record, targets.rto.full_system, targets.rpo.database, backup.taken_at)


def _remove_network(network) -> None:
    with contextlib.suppress(docker.errors.APIError):
        network.remove()
