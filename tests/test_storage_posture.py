"""The storage posture drill (`storage` kind, `[posture]`): every check passing on a bucket
guarded for real and failing on one left bare or half-guarded, each setting made through boto3
over HTTP against the embedded S3 server; a local store with tight and with loose modes and
owners; and `drill run --only storage` each way, its verdict, named cause and fix in drill.json.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from drills.checks.posture import assess, tls_statement
from drills.commands.demo import RUNBOOK_LIFECYCLE
from drills.config import load_config
from drills.config.errors import ConfigError
from drills.storage import open_storage
from fixtures.estate_backups import drill_cli, run_drill, write_drill_toml
from fixtures.storage import s3_storage_on
from tests.producer_kit import s3_env

ALL_FLAGS = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


def tls_policy(bucket: str, **changes) -> str:
    """A policy of the statement the check's fix gives (`changes` alter it)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [tls_statement(bucket) | changes]})


def guard(client, bucket: str, *, mode: str = "COMPLIANCE", days: int = 7) -> None:
    """Everything the runbook promises for the bucket, set as a user would (it was created
    with Object Lock, which turns versioning on)."""
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    client.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": mode, "Days": days}},
        },
    )
    client.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms",
                                                               "KMSMasterKeyID": "alias/backups"}}]
        },
    )  # fmt: skip
    client.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=ALL_FLAGS)
    client.put_bucket_policy(Bucket=bucket, Policy=tls_policy(bucket))
    client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [RUNBOOK_LIFECYCLE]}
    )


@pytest.fixture
def locked_bucket(embedded_s3) -> str:
    """A fresh bucket created with Object Lock enabled, nothing else set yet."""
    name = f"posture-{uuid.uuid4().hex[:12]}"
    embedded_s3.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


@pytest.fixture
def guarded_bucket(embedded_s3, locked_bucket) -> str:
    """A bucket with every protective setting made."""
    guard(embedded_s3.client(), locked_bucket)
    return locked_bucket


def findings_of(embedded_s3, tmp_path: Path, bucket: str, sections: str = "[posture]\n") -> dict:
    """The posture findings of `bucket` under a drill.toml of `sections`, by check name."""
    config = write_drill_toml(
        tmp_path, f"s3://{bucket}", sections, endpoint_url=embedded_s3.endpoint_url
    )
    storage = s3_storage_on(embedded_s3, f"s3://{bucket}")
    return {f.name: f for f in assess(storage, load_config(config))}


# --- every check on a bucket, both ways ----------------------------------------------------


def test_a_guarded_bucket_passes_every_check_with_what_was_read(
    embedded_s3, tmp_path, guarded_bucket
):
    found = findings_of(embedded_s3, tmp_path, guarded_bucket)
    assert sorted(found) == sorted(
        ["versioning", "object_lock", "encryption", "public_access", "tls_only", "lifecycle"]
    )
    assert [name for name, f in found.items() if not f.passed] == []
    assert found["versioning"].evidence == "versioning status: Enabled"
    assert "default retention COMPLIANCE 7 days" in found["object_lock"].evidence
    assert "RPO window to cover is 24h 00m" in found["object_lock"].evidence
    assert found["encryption"].evidence == "default encryption: aws:kms (key alias/backups)"
    assert "RestrictPublicBuckets=true" in found["public_access"].evidence
    assert "DenyInsecureTransport" in found["tls_only"].evidence
    assert "runbook-30-90-365 on the whole bucket" in found["lifecycle"].evidence
    assert "expire after 365 days" in found["lifecycle"].evidence
    assert "GLACIER after 90 days" in found["lifecycle"].evidence


def test_a_bare_bucket_fails_each_check_naming_the_setting_that_fixes_it(
    embedded_s3, tmp_path, s3_bucket
):
    embedded_s3.client().put_bucket_lifecycle_configuration(
        Bucket=s3_bucket.bucket,
        LifecycleConfiguration={"Rules": [{"ID": "tidy", "Status": "Enabled",
                                           "Filter": {"Prefix": "database/"},
                                           "Expiration": {"Days": 7}}]},
    )  # fmt: skip
    found = findings_of(embedded_s3, tmp_path, s3_bucket.bucket)
    assert [name for name, f in found.items() if f.passed] == []
    bucket = s3_bucket.bucket
    assert found["versioning"].evidence == "versioning status: never enabled"
    assert f"put-bucket-versioning --bucket {bucket}" in found["versioning"].fix
    assert found["object_lock"].evidence == "Object Lock is not enabled on the bucket"
    assert f"put-object-lock-configuration --bucket {bucket}" in found["object_lock"].fix
    assert found["encryption"].evidence == "no default encryption on the bucket"
    assert f"put-bucket-encryption --bucket {bucket}" in found["encryption"].fix
    assert found["public_access"].evidence == "no public access block on the bucket"
    assert "BlockPublicAcls=true,IgnorePublicAcls=true" in found["public_access"].fix
    assert "no bucket policy" in found["tls_only"].evidence
    assert '"aws:SecureTransport":"false"' in found["tls_only"].fix
    assert "rule tidy expires database/ after 7 days" in found["lifecycle"].evidence
    assert "at least 30 days" in found["lifecycle"].fix


@pytest.mark.parametrize(
    ("check", "change", "cause"),
    [
        ("versioning", "suspended", "versioning status: Suspended"),
        ("object_lock", "governance", "GOVERNANCE mode can be bypassed"),
        ("object_lock", "short lock", "a backup is unlocked before the next one is due"),
        ("public_access", "one flag off", "RestrictPublicBuckets=false"),
        ("tls_only", "objects only", "none of the policy's 1 statements"),
        ("tls_only", "no condition", "none of the policy's 1 statements"),
        ("tls_only", "an exception", "none of the policy's 1 statements"),
        ("lifecycle", "whole bucket early", "rule everything expires"),
        ("lifecycle", "a date", "on 2030-01-01"),
    ],
)
def test_a_half_guarded_bucket_fails_the_one_check_it_breaks(
    embedded_s3, tmp_path, guarded_bucket, check, change, cause
):
    client, bucket = embedded_s3.client(), guarded_bucket
    if change == "suspended":
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    elif change == "governance":
        guard(client, bucket, mode="GOVERNANCE")
    elif change == "short lock":
        guard(client, bucket, days=2)  # the files RPO below is 3 days
    elif change == "one flag off":
        flags = ALL_FLAGS | {"RestrictPublicBuckets": False}
        client.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=flags)
    elif change.startswith(("objects", "no condition", "an exception")):
        changes = {
            "objects only": {"Resource": f"arn:aws:s3:::{bucket}/*"},
            "no condition": {"Effect": "Allow"},
            "an exception": {"NotPrincipal": {"AWS": "arn:aws:iam::123456789012:root"}},
        }[change]
        client.put_bucket_policy(Bucket=bucket, Policy=tls_policy(bucket, **changes))
    else:
        rule = {"ID": "everything", "Status": "Enabled", "Filter": {}}
        rule["Expiration"] = (
            {"Date": "2030-01-01T00:00:00Z"} if change == "a date" else {"Days": 10}
        )
        client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [RUNBOOK_LIFECYCLE, rule]}
        )
    sections = '[files]\n[targets.rpo]\nfiles = "3d"\n[posture]\n'
    found = findings_of(embedded_s3, tmp_path, bucket, sections)
    assert [name for name, f in found.items() if not f.passed] == [check]
    assert cause in found[check].evidence
    assert found[check].fix


def test_a_bucket_that_cannot_be_read_fails_every_check_naming_why(embedded_s3, tmp_path):
    found = findings_of(embedded_s3, tmp_path, f"missing-{uuid.uuid4().hex[:8]}")
    assert [name for name, f in found.items() if f.passed] == []
    assert all("could not be read" in f.evidence for f in found.values())
    assert all(f.evidence.endswith(": no such bucket") for f in found.values())


def test_governance_mode_passes_when_accepted(embedded_s3, tmp_path, locked_bucket):
    guard(embedded_s3.client(), locked_bucket, mode="GOVERNANCE")
    found = findings_of(
        embedded_s3, tmp_path, locked_bucket, "[posture]\naccept_governance = true\n"
    )
    assert found["object_lock"].passed
    assert "GOVERNANCE" in found["object_lock"].evidence


def test_lock_enabled_without_default_retention_fails(embedded_s3, tmp_path, locked_bucket):
    found = findings_of(embedded_s3, tmp_path, locked_bucket)
    assert not found["object_lock"].passed
    assert "no default retention" in found["object_lock"].evidence


def test_a_rule_on_another_prefix_does_not_count(embedded_s3, tmp_path, guarded_bucket):
    rule = {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
            "Expiration": {"Days": 1}}  # fmt: skip
    embedded_s3.client().put_bucket_lifecycle_configuration(
        Bucket=guarded_bucket, LifecycleConfiguration={"Rules": [RUNBOOK_LIFECYCLE, rule]}
    )
    found = findings_of(embedded_s3, tmp_path, guarded_bucket)
    assert found["lifecycle"].passed
    assert "logs" not in found["lifecycle"].evidence


# --- a local store -------------------------------------------------------------------------


def local_store(tmp_path: Path, file_mode: int = 0o600, dir_mode: int = 0o700) -> Path:
    """A backup directory in the producers' layout, with the given modes."""
    root = tmp_path / "backups"
    for key in ("database/app_20250115_020000.sql.gz", "database/app_20250115_020000.sql.gz"
                ".manifest.json", "config/config_20250115_020000.tar.gz"):  # fmt: skip
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"backup")
        path.chmod(file_mode)
    for directory in (root, root / "database", root / "config"):
        directory.chmod(dir_mode)
    return root


def local_findings(tmp_path: Path, root: Path, posture: str = "") -> dict:
    config = write_drill_toml(tmp_path, root.as_uri(), f"[posture]\n{posture}")
    return {f.name: f for f in assess(open_storage(root.as_uri()), load_config(config))}


def test_a_tight_local_store_passes_permissions_and_owner(tmp_path):
    root = local_store(tmp_path)
    found = local_findings(tmp_path, root)
    assert sorted(found) == ["owner", "permissions"]
    assert found["permissions"].passed, found["permissions"].evidence
    assert f"{root}: 3 files, 3 directories" in found["permissions"].evidence
    assert found["owner"].passed, found["owner"].evidence


def test_a_loose_local_store_fails_naming_the_paths_and_the_chmod(tmp_path):
    root = local_store(tmp_path, file_mode=0o644, dir_mode=0o755)
    found = local_findings(tmp_path, root)
    permissions = found["permissions"]
    assert not permissions.passed
    assert "6 too open" in permissions.evidence
    assert "database/app_20250115_020000.sql.gz.manifest.json (644)" in permissions.evidence
    assert f"find {root} -type f -exec chmod u-x,go-rwx" in permissions.fix
    assert f"find {root} -type d -exec chmod go-rwx" in permissions.fix


def test_group_readable_files_pass_when_640_is_allowed(tmp_path):
    root = local_store(tmp_path, file_mode=0o640, dir_mode=0o750)
    strict = local_findings(tmp_path, root)
    assert not strict["permissions"].passed
    relaxed = local_findings(tmp_path, root, 'file_mode = "640"\ndir_mode = "750"\n')
    assert relaxed["permissions"].passed, relaxed["permissions"].evidence


def test_a_file_of_another_user_fails_the_owner_check(tmp_path):
    # chown needs root, as the rest of the test command does (scripts/test.sh)
    root = local_store(tmp_path)
    stray = root / "database" / "app_20250115_020000.sql.gz"
    os.chown(stray, 65534, 65534)
    found = local_findings(tmp_path, root)
    owner = found["owner"]
    assert not owner.passed
    assert "1 owned by another user" in owner.evidence
    assert "database/app_20250115_020000.sql.gz" in owner.evidence
    assert owner.fix.startswith(f"chown -R root {root}")


def test_a_configured_owner_is_the_one_expected(tmp_path):
    root = local_store(tmp_path)
    found = local_findings(tmp_path, root, 'owner = "nobody"\n')
    assert not found["owner"].passed
    assert "expected owner nobody ([posture] owner)" in found["owner"].evidence


# --- the configuration ---------------------------------------------------------------------


def test_an_unknown_check_or_one_both_required_and_informative_is_a_config_error(tmp_path):
    bad = write_drill_toml(tmp_path, "s3://b", '[posture]\nrequired = ["versionning"]\n')
    with pytest.raises(ConfigError, match='unknown checks "versionning"'):
        load_config(bad)
    both = write_drill_toml(
        tmp_path, "s3://b", '[posture]\nrequired = ["tls_only"]\ninformative = ["tls_only"]\n'
    )
    with pytest.raises(ConfigError, match="tls_only is both required and informative"):
        load_config(both)


# --- through `drill run --only storage` ----------------------------------------------------


def test_drill_run_fails_a_bare_bucket_naming_the_cause_and_the_fix(
    embedded_s3, tmp_path, s3_bucket
):
    config = write_drill_toml(
        tmp_path, s3_bucket.url, "[posture]\n", endpoint_url=embedded_s3.endpoint_url,
        all_reports=True,
    )  # fmt: skip
    outcome = run_drill(config, "storage", env={**os.environ, **s3_env(embedded_s3)})
    assert outcome.exit == 1, outcome.output
    drill = outcome.drill("storage")
    assert drill["verdict"] == "fail"
    assert "check failed: versioning is on: versioning status: never enabled" in drill["error"]
    assert f"fix: aws s3api put-bucket-versioning --bucket {s3_bucket.bucket}" in drill["error"]
    posture = {p["check"]: p for p in drill["posture"]}
    assert posture["public_access"]["required"] is True
    assert "put-public-access-block" in posture["public_access"]["fix"]
    html = (outcome.run_dir / "drill-report.html").read_text()
    assert "Storage posture" in html
    assert "put-bucket-encryption" in html
    status = drill_cli("status", "--config", str(config), env={**os.environ, **s3_env(embedded_s3)})
    assert status.returncode == 1, status.stdout + status.stderr
    assert "  storage: FAILED" in status.stdout
    assert "cause: check failed: versioning is on" in status.stdout


def test_drill_run_passes_a_guarded_bucket(embedded_s3, tmp_path, guarded_bucket):
    config = write_drill_toml(
        tmp_path, f"s3://{guarded_bucket}", "[posture]\n", endpoint_url=embedded_s3.endpoint_url
    )
    outcome = run_drill(config, "storage", env={**os.environ, **s3_env(embedded_s3)})
    assert outcome.exit == 0, outcome.output
    drill = outcome.drill("storage")
    assert drill["verdict"] == "pass"
    assert len(drill["checks"]) == 6
    assert all(c["passed"] for c in drill["checks"])


def test_drill_run_reports_an_informative_failure_without_failing(embedded_s3, tmp_path, s3_bucket):
    client = embedded_s3.client()
    client.put_bucket_versioning(
        Bucket=s3_bucket.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    posture = '[posture]\nrequired = ["versioning"]\ninformative = ["encryption"]\n'
    config = write_drill_toml(
        tmp_path, s3_bucket.url, posture, endpoint_url=embedded_s3.endpoint_url
    )
    outcome = run_drill(config, "storage", env={**os.environ, **s3_env(embedded_s3)})
    assert outcome.exit == 0, outcome.output
    drill = outcome.drill("storage")
    assert [c["name"] for c in drill["checks"]] == ["versioning is on"]
    assert any(
        n.startswith("informative, not required: default encryption is set: FAILED")
        for n in drill["notes"]
    )


def test_drill_run_on_a_loose_local_store_fails_and_a_tight_one_passes(tmp_path):
    loose = local_store(tmp_path / "loose", file_mode=0o644)
    outcome = run_drill(
        write_drill_toml(tmp_path / "loose", loose.as_uri(), "[posture]\n"), "storage"
    )
    assert outcome.exit == 1, outcome.output
    drill = outcome.drill("storage")
    assert "check failed: local backups are not readable by group or others" in drill["error"]
    assert f"fix: find {loose} -type f -exec chmod u-x,go-rwx" in drill["error"]
    tight = local_store(tmp_path / "tight")
    outcome = run_drill(
        write_drill_toml(tmp_path / "tight", tight.as_uri(), "[posture]\n"), "storage"
    )
    assert outcome.exit == 0, outcome.output
    assert outcome.drill("storage")["verdict"] == "pass"


def test_drill_run_only_storage_without_posture_says_how_to_turn_it_on(tmp_path):
    root = local_store(tmp_path)
    config = write_drill_toml(tmp_path, root.as_uri(), "[files]\n")
    result = drill_cli("run", "--config", str(config), "--only", "storage")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "[posture]" in result.stderr + result.stdout
    assert not (tmp_path / "reports" / "latest").exists()


def test_a_bucket_with_a_default_retention_takes_the_producers_uploads(
    embedded_s3, tmp_path, locked_bucket
):
    # Such a bucket refuses a PUT without Content-MD5 (or a checksum), as AWS does.
    embedded_s3.client().put_object_lock_configuration(
        Bucket=locked_bucket,
        ObjectLockConfiguration={"ObjectLockEnabled": "Enabled",
                                 "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}},
    )  # fmt: skip
    storage = s3_storage_on(embedded_s3, f"s3://{locked_bucket}")
    dump = tmp_path / "app_20250115_020000.sql.gz"
    dump.write_bytes(b"a small dump")
    storage.put_file(f"database/{dump.name}", dump)
    storage.put_bytes(f"database/{dump.name}.manifest.json", b"{}")
    tag = storage.create("database/.drill-lock-app", b"held")
    storage.replace("database/.drill-lock-app", b"renewed", tag)
    assert storage.read_bytes(f"database/{dump.name}") == b"a small dump"
    assert storage.read_bytes("database/.drill-lock-app") == b"renewed"


def test_local_copies_beside_a_bucket_are_checked_too(embedded_s3, tmp_path, guarded_bucket):
    copies = local_store(tmp_path / "copies", file_mode=0o644)
    found = findings_of(
        embedded_s3, tmp_path, guarded_bucket, f'[backup]\nlocal_dir = "{copies}"\n[posture]\n'
    )
    assert [name for name, f in found.items() if not f.passed] == ["permissions"]
    assert f"3 too open under {copies}" in found["permissions"].evidence
    assert found["owner"].passed


def test_a_bucket_check_asked_of_a_local_store_fails_saying_why(tmp_path):
    root = local_store(tmp_path)
    found = local_findings(tmp_path, root, 'required = ["versioning"]\n')
    assert list(found) == ["versioning"]
    assert not found["versioning"].passed
    assert "is a local directory, not a bucket" in found["versioning"].evidence
