"""The full-system drill, end to end through `drill run`: database and uploads restored, the
sample application started on them; a clean estate passes (health 200, counts equal, an
upload byte-identical), over a local directory and over real S3; an application whose health
answers 503 fails naming the answer. Never a false green."""

from __future__ import annotations

import os

from fixtures.estate_backups import (
    put_database_dump,
    put_files_snapshot,
    run_drill,
    uploads,
    write_drill_toml,
)

SYSTEM = """[database]
name = "drishti_production"
checks = ["SELECT count(*) > 0 FROM users"]
[files]
[app]
start_timeout = "{start}"
database_env = "{database_env}"
"""
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _sections(start: str = "30s", database_env: str = "DATABASE_URL") -> str:
    return SYSTEM.format(start=start, database_env=database_env)


def _checks(drill: dict) -> dict[str, dict]:
    return {check["name"]: check for check in drill["checks"]}


def _assert_recovered(outcome, estate_dump) -> None:
    assert outcome.exit == 0, outcome.output
    drill = outcome.drill("system")
    assert drill["verdict"] == "pass"
    checks = _checks(drill)
    failed = [c for c in drill["checks"] if not c["passed"]]
    assert not failed, failed
    assert checks["GET /health answers 200"]["detail"].startswith("200 in")
    users = estate_dump.counts["users"]
    assert checks["user count through the API equals the database's"]["detail"].startswith(
        f"API {users}, database {users}"
    )
    assert "a restored upload is served byte-identical" in checks
    assert "every file in the manifest is restored" in checks
    assert "application up within its RTO" in checks
    assert set(drill["phases"]) >= {"locate", "provision", "restore", "validate", "app"}
    assert drill["rto"]["target_s"] == 8 * 3600  # [targets.rto] full_system
    assert drill["rpo"]["target_s"] == 3600  # [targets.rpo] database


def test_clean_estate_recovers(tmp_path, local_storage, estate_dump):
    put_database_dump(local_storage, estate_dump)
    put_files_snapshot(local_storage, uploads())
    outcome = run_drill(write_drill_toml(tmp_path, local_storage.url, _sections()), "system")
    _assert_recovered(outcome, estate_dump)
    assert outcome.drill("system")["uploads_backup"]["key"].startswith("files/")


def test_clean_estate_over_s3_recovers(tmp_path, s3_bucket, embedded_s3, estate_dump):
    put_database_dump(s3_bucket, estate_dump)
    put_files_snapshot(s3_bucket, uploads())
    config = write_drill_toml(
        tmp_path, s3_bucket.url, _sections(), endpoint_url=embedded_s3.endpoint_url
    )
    outcome = run_drill(config, "system", env={**os.environ, **S3_ENV})
    _assert_recovered(outcome, estate_dump)


def test_unhealthy_application_fails_naming_the_answer(tmp_path, local_storage, estate_dump):
    """The app is handed its database URL under a name it does not read (a real
    misconfiguration): it starts, but cannot reach its database and answers 503."""
    put_database_dump(local_storage, estate_dump)
    put_files_snapshot(local_storage, uploads())
    sections = _sections(start="3s", database_env="APP_DATABASE_URL")
    outcome = run_drill(write_drill_toml(tmp_path, local_storage.url, sections), "system")
    assert outcome.exit == 1, outcome.output
    drill = outcome.drill("system")
    assert drill["verdict"] == "fail"
    assert "GET /health answered 503: database:" in drill["error"]
    assert "check failed: GET /health answers 200" in drill["error"]
