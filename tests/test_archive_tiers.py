"""Archive tiers counted in the RTO: a real dump in GLACIER on the embedded S3 server, drilled
without a thaw (it cannot be read, and the tier cannot meet the RTO), with one (the restore
request issued, waited for as the phase "thaw", then the dump restored), and a STANDARD dump
that the bucket's lifecycle rules will have moved to GLACIER by its last promised day.

moto runs no lifecycle transitions: the tests move an object to GLACIER with a copy onto
itself, as a transition leaves it. The retrieval's wait is simulated by the embedded server
(`EmbeddedS3.set_restore_delay`), the restore itself is moto's, over HTTP.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta

import pytest

from drills.storage.catalog import latest, list_backups
from drills.storage.lifecycle import EXPIRED, class_at, parse_rules
from drills.storage.thaw import archived_objects, thaw
from drills.storage.tiers import documented, retrieval
from fixtures.estate_backups import (
    DB,
    drill_cli,
    put_database_dump,
    put_files_snapshot,
    run_drill,
    uploads,
    write_drill_toml,
)
from tests.producer_kit import s3_env

# The seed runbook's lifecycle: infrequent access at 30 days, archive at 90, expiry at 365.
RUNBOOK_LIFECYCLE = {
    "ID": "runbook",
    "Status": "Enabled",
    "Filter": {"Prefix": "database/"},
    "Transitions": [
        {"Days": 30, "StorageClass": "STANDARD_IA"},
        {"Days": 90, "StorageClass": "GLACIER"},
    ],
    "Expiration": {"Days": 365},
}
DELAY = 3.0


def test_lifecycle_predicts_the_class_on_a_given_day():
    rules = parse_rules([RUNBOOK_LIFECYCLE])
    key = f"database/{DB}_20250115_020000.sql.gz"
    assert class_at(rules, key, 10) == ("STANDARD", None)
    assert class_at(rules, key, 45) == ("STANDARD_IA", "runbook")
    assert class_at(rules, key, 120) == ("GLACIER", "runbook")
    assert class_at(rules, key, 365) == (EXPIRED, "runbook")
    assert class_at(rules, "files/20250115_020000/a.png", 120) == ("STANDARD", None)


def test_documented_retrieval_times():
    assert retrieval("GLACIER", "Standard").words == "3-5 hours"
    assert retrieval("DEEP_ARCHIVE", "Expedited") is None
    assert documented("DEEP_ARCHIVE").startswith("Expedited not offered; Standard within 12")
    assert documented("GLACIER_IR") == "milliseconds (read directly)"


@pytest.fixture
def slow_restores(embedded_s3) -> Iterator[float]:
    """The embedded server keeps a restore from an archive class in progress DELAY seconds."""
    embedded_s3.set_restore_delay(DELAY)
    try:
        yield DELAY
    finally:
        embedded_s3.set_restore_delay(0)


@pytest.fixture
def glacier_dump(s3_bucket, estate_dump) -> str:
    """A real dump, a day old, moved to GLACIER (its manifest stays in STANDARD)."""
    key = put_database_dump(s3_bucket, estate_dump, age=timedelta(days=1))
    s3_bucket.client.copy_object(
        Bucket=s3_bucket.bucket,
        Key=key,
        CopySource={"Bucket": s3_bucket.bucket, "Key": key},
        StorageClass="GLACIER",
    )
    return key


def _config(tmp_path, s3_bucket, embedded_s3, storage: str = "", drill: str = ""):
    sections = f'[database]\nname = "{DB}"\n[targets.rpo]\ndatabase = "2d"\n[drill]\n{drill}\n'
    config = write_drill_toml(
        tmp_path, s3_bucket.url, sections, endpoint_url=embedded_s3.endpoint_url
    )
    if storage:
        text = config.read_text().replace("[storage]\n", f"[storage]\n{storage}\n", 1)
        config.write_text(text)
    return config


def _checks(drill: dict) -> dict[str, dict]:
    return {c["name"]: c for c in drill["checks"]}


def test_glacier_backup_without_thaw_fails_naming_its_class_and_tier(
    tmp_path, s3_bucket, embedded_s3, glacier_dump
):
    config = _config(tmp_path, s3_bucket, embedded_s3)
    outcome = run_drill(config, "database", env={**os.environ, **s3_env(embedded_s3)})
    assert outcome.exit == 1, outcome.output
    drill = outcome.drill("database")
    assert drill["backup"]["storage_class"] == "GLACIER"
    assert f"{glacier_dump}: archived (storage class GLACIER)" in drill["error"]
    tier = _checks(drill)["archive retrieval fits the RTO"]
    assert tier["passed"] is False
    assert "Standard retrieval takes 3-5 hours (documented), over the RTO of 2h" in tier["detail"]
    assert drill["archive"]["retrieval"]["GLACIER"].startswith("Expedited 1-5 minutes")
    assert any("[storage] thaw" in note for note in drill["notes"])

    status = drill_cli("status", "--config", str(config), env={**os.environ, **s3_env(embedded_s3)})
    assert "database: storage classes: 1 in GLACIER (Expedited 1-5 minutes;" in status.stdout


def test_glacier_backup_thawed_then_drilled(
    tmp_path, s3_bucket, embedded_s3, glacier_dump, slow_restores
):
    config = _config(tmp_path, s3_bucket, embedded_s3, storage='thaw = "Expedited"')
    config.write_text(config.read_text().replace("\nhtml = false", "\nhtml = true"))
    outcome = run_drill(config, "database", env={**os.environ, **s3_env(embedded_s3)})
    assert outcome.exit == 0, outcome.output
    page = (outcome.run_dir / "drill-report.html").read_text()
    assert "GLACIER retrieval (documented)" in page
    assert "Expedited 1-5 minutes; Standard 3-5 hours; Bulk 5-12 hours" in page
    drill = outcome.drill("database")
    assert drill["verdict"] == "pass"
    assert drill["phases"]["thaw"] >= slow_restores  # the simulated retrieval, waited for
    assert drill["thaw"]["tier"] == "Expedited"
    assert drill["thaw"]["objects"] == 1
    assert drill["thaw"]["polls"] > 1
    tier = _checks(drill)["archive retrieval fits the RTO"]
    assert tier["passed"] is True
    assert "Expedited retrieval 1-5 minutes, within the RTO of 2h" in tier["detail"]


def test_thaw_that_outlasts_its_bound_fails_naming_it(
    tmp_path, s3_bucket, embedded_s3, glacier_dump, slow_restores
):
    config = _config(
        tmp_path, s3_bucket, embedded_s3, storage='thaw = "Expedited"\nthaw_timeout = "1s"'
    )
    outcome = run_drill(config, "database", env={**os.environ, **s3_env(embedded_s3)})
    assert outcome.exit == 1, outcome.output
    error = outcome.drill("database")["error"]
    assert "thaw: 1 of 1 archived objects still being restored (Expedited tier)" in error
    assert glacier_dump in error


def test_lifecycle_moving_the_window_to_glacier_fails_the_rto_before_the_day_comes(
    tmp_path, s3_bucket, embedded_s3, estate_dump
):
    s3_bucket.client.put_bucket_lifecycle_configuration(
        Bucket=s3_bucket.bucket, LifecycleConfiguration={"Rules": [RUNBOOK_LIFECYCLE]}
    )
    put_database_dump(s3_bucket, estate_dump, age=timedelta(days=1))
    config = _config(tmp_path, s3_bucket, embedded_s3, drill="retention_days = 120")
    outcome = run_drill(config, "database", env={**os.environ, **s3_env(embedded_s3)})
    assert outcome.exit == 1, outcome.output
    drill = outcome.drill("database")
    assert drill["archive"]["classes_now"] == {"STANDARD": 1}
    assert drill["archive"]["classes_on_last_promised_day"] == {"GLACIER": 1}
    assert drill["archive"]["drilled_class_then"] == "GLACIER"
    tier = _checks(drill)["archive retrieval fits the RTO"]
    assert tier["passed"] is False
    assert "by their last promised day (lifecycle rule runbook)" in tier["detail"]
    # The restore itself worked: only the promise of the archive tier failed.
    assert [c["name"] for c in drill["checks"] if not c["passed"]] == [
        "archive retrieval fits the RTO"
    ]


def test_a_snapshot_in_deep_archive_thaws_every_object(s3_bucket, slow_restores):
    """A backup of many objects is as cold as its coldest; each archived object is restored."""
    key = put_files_snapshot(s3_bucket, uploads(count=6))
    for info in list(s3_bucket.list(key)):
        s3_bucket.client.copy_object(
            Bucket=s3_bucket.bucket,
            Key=info.key,
            CopySource={"Bucket": s3_bucket.bucket, "Key": info.key},
            StorageClass="DEEP_ARCHIVE" if info.key.endswith(".pdf") else "GLACIER",
        )
    backup = latest(list_backups(s3_bucket, "files"))
    assert backup.storage_class == "DEEP_ARCHIVE"
    archived = archived_objects(s3_bucket, backup)
    assert len(archived) == 6
    done = thaw(s3_bucket, archived, "Bulk", timeout=60)
    assert done.seconds >= slow_restores
    assert done.classes == ("DEEP_ARCHIVE", "GLACIER")
    for info in archived:
        assert s3_bucket.read_bytes(info.key) == uploads(count=6)[info.key[len(key) :]]
