"""The full-system drill, end to end through `drill run`: database, uploads and config restored,
the application started on them and watched until it holds.

Two applications: the sample app (one container fed by the restored .env.production, or
its compose file over S3), and the accounts service, unlike it in every way a user's app may
be (port, health path behind a header token, its database in separate variables, a
SECRET_KEY, an `auth_user` table, uploads under /media/, a worker, a PostGIS database in its
compose file). A clean estate passes, and so does an app answering 503 while it warms up
(its health told as the answers it saw); an app that crashes after its first healthy answer
(an exit, or a restart under its compose file's restart policy), a health path that wants a
credential, an app answering 503 and an app image that is not on the machine fail, each for
its named cause. Never a false green, and no false red. A drill killed while it watches the
compose stack leaves it for the next run's sweep, which removes all of it.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import timedelta

import docker.errors

from drills.runtime import labels
from drills.runtime.estate import write_config_files
from fixtures.apps import (
    ACCOUNTS,
    HEALTH_TOKEN,
    TOKEN_ENV,
    accounts_app,
    accounts_config,
    put_accounts_config,
)
from fixtures.estate_backups import (
    ROOT,
    drill_cli,
    put_config_archive,
    put_database_dump,
    put_files_snapshot,
    run_drill,
    uploads,
    write_drill_toml,
)
from fixtures.upload_trees import runbook_mirror

DATABASE = '[database]\nname = "drishti_production"\nchecks = ["SELECT count(*) > 0 FROM users"]\n'
ACCOUNTS_DATABASE = '[database]\nname = "drishti_production"\n'
SAMPLE_APP = """[app]
start_timeout = "{start}"
database_env = "{database_env}"
env_file = ".env.production"
soak = "2s"
"""
CONFIG = '[config]\nrequired = [".env.production"]\n'
OFFLINE = "[runtime]\npull = false\n"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
ACCOUNTS_ENV = {**os.environ, TOKEN_ENV: HEALTH_TOKEN}


def _sample(start: str = "30s", database_env: str = "DATABASE_URL", extra: str = "") -> str:
    app = SAMPLE_APP.format(start=start, database_env=database_env) + extra
    return DATABASE + "[files]\n" + CONFIG + app + OFFLINE


def _sample_config(storage, tmp_path, app_image: str) -> None:
    """The sample estate's config files (its .env.production names production's database)."""
    files = write_config_files(tmp_path / "config", "pr0d-secret-not-real", app_image)
    put_config_archive(storage, {p.name: p.read_bytes() for p in files})


def _checks(drill: dict) -> dict[str, dict]:
    return {check["name"]: check for check in drill["checks"]}


def _assert_recovered(outcome, counts: dict[str, int], table: str) -> dict:
    assert outcome.exit == 0, outcome.output[-4000:]
    drill = outcome.drill("system")
    assert drill["verdict"] == "pass"
    failed = [c for c in drill["checks"] if not c["passed"]]
    assert not failed, failed
    checks = _checks(drill)
    rows = counts[table]
    count = checks["the count through the API equals the database's"]["detail"]
    assert count.startswith(f"API {rows}, database {rows}"), count
    assert "a restored upload is served byte-identical" in checks
    assert "every file in the manifest is restored" in checks
    assert "members match the manifest's checksums" in checks  # the config archive, restored
    assert re.match(r"healthy for \d+\.\d s: 200 × \d+", checks[_held(drill)]["detail"])
    assert checks["application up within its RTO"]["passed"]
    assert checks["the application is still up after the checks"]["passed"]
    assert {"locate", "fetch", "provision", "restore", "validate", "app"} <= set(drill["phases"])
    assert drill["rto"]["target_s"] == 8 * 3600  # [targets.rto] full_system
    assert drill["config_backup"]["key"].startswith("config/")
    assert drill["uploads_backup"]["key"].startswith("files/")
    return drill


def _held(drill: dict) -> str:
    return next(c["name"] for c in drill["checks"] if c["name"].startswith("the application stays"))


def test_clean_estate_recovers_from_its_restored_env_file(
    tmp_path, local_storage, estate_dump, app_image
):
    """The .env.production the drill restores points at production's database; the drill
    points the app at the restored one, and passes everything else in it on."""
    put_database_dump(local_storage, estate_dump)
    put_files_snapshot(local_storage, uploads())
    _sample_config(local_storage, tmp_path, app_image)
    outcome = run_drill(write_drill_toml(tmp_path, local_storage.url, _sample()), "system")
    drill = _assert_recovered(outcome, estate_dump.counts, "users")
    assert drill["app"]["form"] == "container"
    roles = {c["role_name"] for c in drill["containers"]}
    assert roles == {"api", "db"}
    assert all(re.match(r"drill-\w+-(api|db)-\w+$", c["name"]) for c in drill["containers"])


def test_the_sample_compose_file_over_s3_recovers(
    tmp_path, s3_bucket, embedded_s3, estate_dump, app_image
):
    put_database_dump(s3_bucket, estate_dump)
    put_files_snapshot(s3_bucket, uploads())
    _sample_config(s3_bucket, tmp_path, app_image)
    sections = _sample(extra='compose_file = "docker-compose.yml"\n')
    config = write_drill_toml(
        tmp_path, s3_bucket.url, sections, endpoint_url=embedded_s3.endpoint_url
    )
    outcome = run_drill(config, "system", env={**os.environ, **S3_ENV})
    drill = _assert_recovered(outcome, estate_dump.counts, "users")
    assert drill["app"]["form"] == "compose"
    assert drill["app"]["replaced_by_the_restored_database"] == ["db"]
    assert {c["role_name"] for c in drill["containers"]} == {"api (compose service api)", "db"}


def test_the_runbooks_uploads_mirror_alone_serves_the_app(
    tmp_path, s3_bucket, embedded_s3, estate_dump, app_image
):
    """After losing the server, the runbook's `aws s3 sync` mirror under files/ is the only
    uploads backup: the system drill restores it whole and the app serves from it."""
    put_database_dump(s3_bucket, estate_dump)
    current = tmp_path / "current"
    for path, data in uploads().items():
        (current / path).parent.mkdir(parents=True, exist_ok=True)
        (current / path).write_bytes(data)
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[default]\nregion = us-east-1\n")
    env = {**os.environ, **S3_ENV, "AWS_CONFIG_FILE": str(aws_config)}
    runbook_mirror(current, s3_bucket.bucket, embedded_s3.endpoint_url, env)
    _sample_config(s3_bucket, tmp_path, app_image)
    config = write_drill_toml(
        tmp_path, s3_bucket.url, _sample(), endpoint_url=embedded_s3.endpoint_url
    )

    outcome = run_drill(config, "system", env=env)

    assert outcome.exit == 0, outcome.output[-4000:]
    drill = outcome.drill("system")
    assert (drill["uploads_backup"]["key"], drill["uploads_backup"]["format"]) == (
        "files/",
        "mirror",
    )
    checks = _checks(drill)
    assert checks["a restored upload is served byte-identical"]["passed"]
    assert checks["objects match their S3 ETag and size"]["passed"]


def test_another_app_by_its_compose_file_recovers(
    tmp_path, local_storage, accounts_dump, accounts_image
):
    """The accounts service as its own compose file runs it: a false red on every count
    before (auth_user, /media/, port 8000, /healthz behind a token, DB_* variables)."""
    put_database_dump(local_storage, accounts_dump)
    put_files_snapshot(local_storage, uploads())
    put_accounts_config(local_storage, accounts_image)
    app = accounts_app('compose_file = "docker-compose.yml"')
    sections = ACCOUNTS_DATABASE + "[files]\n[config]\n" + app + OFFLINE
    config = write_drill_toml(tmp_path, local_storage.url, sections)
    outcome = run_drill(config, "system", env=ACCOUNTS_ENV)
    drill = _assert_recovered(outcome, accounts_dump.counts, "auth_user")
    checks = _checks(drill)
    assert checks["GET /healthz answers 200"]["passed"]
    assert "2 containers up" in checks[_held(drill)]["detail"]  # the worker too
    assert checks["GET / answers 200 with 'accounts service'"]["passed"]
    assert checks["GET /nope answers 404"]["passed"]
    assert checks["a restored upload is served byte-identical"]["detail"].startswith("GET /media/")
    assert drill["app"]["app_service"] == "web"
    assert drill["app"]["replaced_by_the_restored_database"] == ["postgres"]
    assert "compose service web: container_name dropped for the drill" in drill["notes"]
    roles = {c["role_name"] for c in drill["containers"]}
    assert roles == {"api (compose service web)", "compose service worker", "db"}
    assert HEALTH_TOKEN not in (outcome.run_dir / "drill.json").read_text()


def test_a_compose_app_that_crashes_and_is_restarted_fails_naming_the_restart(
    tmp_path, local_storage, accounts_dump, accounts_image
):
    """Production's compose file restarts the web service when it dies: the crash 1 s after
    the first healthy answer comes back as a restart, and a restart during the watch fails
    the drill as surely as an exit, with the web container's logs."""
    put_database_dump(local_storage, accounts_dump)
    put_files_snapshot(local_storage, uploads())
    compose = (ACCOUNTS / "docker-compose.yml").read_text()
    restarting = compose.replace('restart: "no"', "restart: unless-stopped")
    assert restarting != compose
    put_accounts_config(local_storage, accounts_image, compose=restarting.encode())
    app = accounts_app('compose_file = "docker-compose.yml"', 'soak = "5s"', CRASH_AFTER="1")
    sections = (
        ACCOUNTS_DATABASE + "[files]\n[config]\n" + app.replace('soak = "3s"\n', "") + OFFLINE
    )
    config = write_drill_toml(tmp_path, local_storage.url, sections)
    outcome = run_drill(config, "system", env=ACCOUNTS_ENV)
    assert outcome.exit == 1, outcome.output[-3000:]
    drill = outcome.drill("system")
    checks = _checks(drill)
    assert checks["GET /healthz answers 200"]["passed"]
    held = checks["the application stays healthy for 5 s"]
    assert not held["passed"]
    assert re.search(r"the api \(compose service web\) container restarted", held["detail"]), held
    assert "crashing 1 s after the first healthy answer" in held["detail"]
    assert not checks["application up within its RTO"]["passed"]
    assert drill["first_cause"].startswith("check failed: the application stays healthy")


def test_an_app_warming_up_passes_and_its_health_reads_as_its_answers(
    tmp_path, local_storage, accounts_dump, accounts_image
):
    """The accounts service answers 503 "warming up" for its first 3 s: the drill waits and
    passes, and the health check tells what it saw before the 200, not "200 in 0.025 s"."""
    put_database_dump(local_storage, accounts_dump)
    put_files_snapshot(local_storage, uploads())
    put_config_archive(local_storage, accounts_config(accounts_image))
    app = accounts_app('image = "' + accounts_image + '"', 'env_file = ".env.production"',
                       DB_HOST="{db_host}", WARMUP="3")  # fmt: skip
    sections = ACCOUNTS_DATABASE + "[files]\n[config]\n" + app + OFFLINE
    config = write_drill_toml(tmp_path, local_storage.url, sections, all_reports=True)
    outcome = run_drill(config, "system", env=ACCOUNTS_ENV)
    drill = _assert_recovered(outcome, accounts_dump.counts, "auth_user")
    health = _checks(drill)["GET /healthz answers 200"]["detail"]
    told = re.fullmatch(
        r"200 after (\d+\.\d) s: (.*, then )?503 × \d+ over (\d+\.\d) s, then 200", health
    )
    assert told, health
    assert float(told.group(1)) >= 2.0, health  # the wait covers the warm-up
    assert float(told.group(3)) >= 1.5, health  # its 503s, counted and timed
    page = html.unescape((outcome.run_dir / "drill-report.html").read_text())
    assert health in page


def test_an_app_that_crashes_after_start_fails_and_every_report_says_not_recovered(
    tmp_path, local_storage, accounts_dump, accounts_image
):
    """The accounts service exits 1 s after its first healthy answer. Before, the drill was
    green: its app phase took under a second and nothing looked again. After a passing
    drill of an older backup, the crash fails the newest one; then `drill status` and
    `drill runbook` say so, and a copied run directory's report still renders."""
    put_database_dump(local_storage, accounts_dump, age=timedelta(minutes=30))
    put_files_snapshot(local_storage, uploads())
    put_config_archive(local_storage, accounts_config(accounts_image))
    app = accounts_app('image = "' + accounts_image + '"', 'env_file = ".env.production"',
                       DB_HOST="{db_host}")  # fmt: skip
    sections = ACCOUNTS_DATABASE + "[files]\n[config]\n" + app + OFFLINE
    config = write_drill_toml(tmp_path, local_storage.url, sections, all_reports=True)
    first = run_drill(config, "system", env=ACCOUNTS_ENV)
    assert first.exit == 0, first.output[-3000:]

    newest = put_database_dump(local_storage, accounts_dump)
    crash = accounts_app('image = "' + accounts_image + '"', 'env_file = ".env.production"',
                         'soak = "4s"', DB_HOST="{db_host}", CRASH_AFTER="1")  # fmt: skip
    config.write_text(config.read_text().replace(app, crash.replace('soak = "3s"\n', "")))
    outcome = run_drill(config, "system", env=ACCOUNTS_ENV)
    assert outcome.exit == 1, outcome.output[-3000:]
    drill = outcome.drill("system")
    checks = _checks(drill)
    held = checks["the application stays healthy for 4 s"]
    assert not held["passed"]
    assert re.search(r"the api container exited \(code 1\) \d\.\d s into the watch", held["detail"])
    assert "crashing 1 s after the first healthy answer" in held["detail"]
    assert checks["GET /healthz answers 200"]["passed"]
    assert not checks["application up within its RTO"]["passed"]
    assert "did not come up and stay up" in checks["application up within its RTO"]["detail"]
    assert drill["culprit"] == "api"
    assert drill["first_cause"].startswith("check failed: the application stays healthy")

    # The failure box: the first cause, and the logs of the app's container only.
    page = html.unescape((outcome.run_dir / "drill-report.html").read_text())
    failures = page[page.index('id="failures"') : page.index("</section>")]
    assert "the api container exited (code 1)" in failures
    assert "Last lines of the log of the <strong>api</strong> container" in failures
    assert "<strong>db</strong>" not in failures
    assert "database system is ready" not in failures  # the restore target's start-up log

    # The RTO reads "not recovered" everywhere, never "met" or a margin.
    targets = page[
        page.index('id="targets"') : page.index("</section>", page.index('id="targets"'))
    ]
    rto = re.search(r"<th>RTO</th>(.*?)</tr>", targets, re.S).group(1)
    assert "not recovered" in rto
    assert "to spare" not in rto
    assert "met:" not in rto
    history = page[page.index('id="history"') :]
    assert "not recovered after" in history  # the failed run's cross on the chart
    assert "1 of 2 runs did not recover" in history
    pytest_html = (outcome.run_dir / "pytest-report.html").read_text()
    assert "not recovered" in html.unescape(pytest_html)
    properties = {
        p.get("name"): p.get("value")
        for p in ET.parse(outcome.run_dir / "junit.xml").iter("property")
    }
    assert properties["verdict"] == "fail"
    assert properties["recovered"] == "false"
    assert properties["rto"].startswith("not recovered (")
    allure = " ".join(p.read_text() for p in (outcome.run_dir / "allure-results").glob("*.json"))
    assert "RTO: not recovered" in allure

    # The on-call tools tell the truth.
    status = drill_cli("status", "--config", str(config))
    assert status.returncode == 1, status.stdout + status.stderr
    assert "system: FAILED" in status.stdout
    assert "cause: check failed: the application stays healthy for 4 s" in status.stdout
    runbook = drill_cli("runbook", "--config", str(config))
    assert runbook.returncode == 0, runbook.stderr
    warning = runbook.stdout[: runbook.stdout.index("### 1.")]
    assert f"WARNING: the newest database backup, `{newest}`, FAILED its last system" in warning
    assert "the application stays healthy for 4 s: the api container exited" in warning
    assert f"`{first.drill('system')['backup']['key']}`" in warning  # the one that passed
    assert "--backup " + first.drill("system")["backup"]["key"] in warning
    assert "the application came up" not in runbook.stdout
    assert "the system drill FAILED" in runbook.stdout

    # A run directory copied on its own renders the same page (its history travels in
    # drill.json); one whose drill.json lacks it says why the history is missing.
    copy = tmp_path / "copied-run"
    shutil.copytree(outcome.run_dir, copy)
    again = drill_cli("report", str(copy))
    assert again.returncode == 0, again.stderr
    assert "is unchanged" in again.stdout
    document = json.loads((copy / "drill.json").read_text())
    del document["history"]
    (copy / "drill.json").write_text(json.dumps(document))
    elsewhere = tmp_path / "without-history.html"
    bare = drill_cli("report", str(copy), "-o", str(elsewhere))
    assert bare.returncode == 0, bare.stderr
    assert "rendered without the history" in bare.stdout
    assert "history.jsonl is missing" in bare.stdout
    assert "The history is not shown" in elsewhere.read_text()
    intact = drill_cli("report", str(copy))
    assert intact.returncode == 0, intact.stderr
    assert "the template changed" not in intact.stdout + intact.stderr


def test_a_health_path_behind_a_token_fails_at_once_naming_the_credential(
    tmp_path, local_storage, accounts_dump, accounts_image
):
    """Without [app] headers the accounts service answers 401: the drill stops asking at
    once (not after the 30 s it may wait for health) and says which setting is missing."""
    put_database_dump(local_storage, accounts_dump)
    put_files_snapshot(local_storage, uploads())
    put_config_archive(local_storage, accounts_config(accounts_image))
    app = accounts_app('image = "' + accounts_image + '"', 'env_file = ".env.production"',
                       DB_HOST="{db_host}")  # fmt: skip
    app = app[: app.index("[app.headers]")] + app[app.index("[app.env]") :]
    sections = ACCOUNTS_DATABASE + "[files]\n[config]\n" + app + OFFLINE
    outcome = run_drill(write_drill_toml(tmp_path, local_storage.url, sections), "system")
    assert outcome.exit == 1, outcome.output[-3000:]
    health = _checks(outcome.drill("system"))["GET /healthz answers 200"]
    assert not health["passed"]
    assert "GET /healthz answered 401" in health["detail"]
    assert "set [app] headers" in health["detail"]
    assert outcome.drill("system")["phases"]["app"] < 15  # not the 30 s start_timeout


def test_unhealthy_application_fails_naming_the_answers(
    tmp_path, local_storage, estate_dump, app_image
):
    """The app is handed its database URL under a name it does not read (a real
    misconfiguration; its env file's own URL names production's host): it starts, cannot
    reach a database and answers 503, which the check tells as the history it was."""
    put_database_dump(local_storage, estate_dump)
    put_files_snapshot(local_storage, uploads())
    _sample_config(local_storage, tmp_path, app_image)
    sections = _sample(start="3s", database_env="APP_DATABASE_URL")
    sections = sections.replace('env_file = ".env.production"\n', "")
    outcome = run_drill(write_drill_toml(tmp_path, local_storage.url, sections), "system")
    assert outcome.exit == 1, outcome.output[-3000:]
    drill = outcome.drill("system")
    assert drill["verdict"] == "fail"
    assert "GET /health answered 503: database:" in drill["error"]
    assert "check failed: GET /health answers 200" in drill["error"]
    assert re.search(r"still, after 3 s: 503 × \d+ over \d+\.\d s", drill["error"])


def test_a_missing_app_image_exits_3_naming_it_before_the_restore(
    tmp_path, local_storage, estate_dump
):
    put_database_dump(local_storage, estate_dump)
    put_files_snapshot(local_storage, uploads())
    sections = DATABASE + '[app]\nimage = "drishti/api:not-on-this-machine"\n' + OFFLINE
    outcome = run_drill(write_drill_toml(tmp_path, local_storage.url, sections), "system")
    assert outcome.exit == 3, outcome.output[-3000:]
    drill = outcome.drill("system")
    assert (
        "the app's image drishti/api:not-on-this-machine is not on this machine" in drill["error"]
    )
    assert "no registry was asked" in drill["error"]
    assert "docker load" in drill["error"]
    assert "restore" not in drill["phases"]  # found out before the long part
    assert "Traceback" not in outcome.output
    assert "500 Server Error" not in outcome.output


def test_a_compose_stack_of_a_killed_drill_is_swept_at_the_next_start(
    tmp_path, local_storage, accounts_dump, accounts_image, docker_client
):
    """SIGKILL to the drill while it watches the restored compose stack: no finalizer runs,
    so the web and worker containers, the restored uploads' volume and the drill's network
    stay; the next run's sweep removes every one of them (found by the run's label)."""
    put_database_dump(local_storage, accounts_dump)
    put_files_snapshot(local_storage, uploads())
    put_accounts_config(local_storage, accounts_image)
    app = accounts_app('compose_file = "docker-compose.yml"', 'soak = "120s"')
    sections = ACCOUNTS_DATABASE + "[files]\n[config]\n" + app.replace('soak = "3s"\n', "")
    config = write_drill_toml(tmp_path, local_storage.url, sections + OFFLINE)
    before = {c.id for c in labels.list_containers(docker_client, WEB)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "drills.cli", "run", "--config", str(config), "--only", "system"],
        cwd=ROOT, env=ACCOUNTS_ENV, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        run = _wait_for_the_watch(docker_client, proc, before)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # SIGKILL: no finalizer runs
        proc.wait(timeout=30)
    left = _left_by_run(docker_client, run)
    assert any(name.startswith("container ") for name in left), left
    assert any(name.startswith("volume ") for name in left), left
    assert any(name.startswith("network ") for name in left), left
    newcomer = labels.RunSession.begin()
    try:
        labels.sweep(docker_client, keep=newcomer.run_id)
    finally:
        newcomer.end(docker_client)
    assert _left_by_run(docker_client, run) == []


WEB = {"label": [f"{labels.PROJECT}={labels.PROJECT_VALUE}", "com.docker.compose.service=web"]}


def _wait_for_the_watch(
    client, proc: subprocess.Popen, before: set[str], bound: float = 180
) -> str:
    """The run id of the drill, once its app's web service has answered its health path
    (web containers in `before` belong to other runs)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the drill ended before its app was watched"
        for container in labels.list_containers(client, WEB):
            if container.id in before:
                continue
            with contextlib.suppress(docker.errors.NotFound):
                if b'"GET /healthz HTTP/1.1" 200' in container.logs():
                    return container.labels[labels.RUN]
        time.sleep(0.5)
    raise AssertionError("the app of the drill never answered healthy")


def _left_by_run(client, run: str) -> list[str]:
    selector = {"label": [f"{labels.PROJECT}={labels.PROJECT_VALUE}", f"{labels.RUN}={run}"]}
    left = [f"container {c.name}" for c in labels.list_containers(client, selector)]
    left += [f"network {n.name}" for n in client.networks.list(filters=selector)]
    left += [f"volume {v.name}" for v in client.volumes.list(filters=selector)]
    return left
