"""Backup manifests: JSON round trip, clear errors, streaming checksums."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from drills.config.errors import IntegrityError, ManifestError
from drills.storage.manifest import (
    FileEntry,
    HashingReader,
    Manifest,
    MemberEntry,
    TableCount,
    manifest_key,
    sha256_file,
)

KEY = "database/app_20250115_020000.sql.gz.manifest.json"


def _manifest(**changes: object) -> Manifest:
    base = Manifest(
        kind="database",
        format="plain",
        compression="gzip",
        bytes=1234,
        sha256="ab" * 32,
        started_at=datetime(2025, 1, 15, 2, 0, tzinfo=UTC),
        finished_at=datetime(2025, 1, 15, 2, 3, 7, tzinfo=UTC),
        producer_version="0.1.0",
        database="app",
        server_version="15.14",
        pg_dump_version="15.14",
        tables=(TableCount("users", 2_000_000), TableCount("events", 10, exact=False)),
    )
    return Manifest(**{**base.__dict__, **changes})


def test_json_round_trip_keeps_every_field():
    manifest = _manifest(
        files=(FileEntry("a/b.png", 3, 0o644, "cd" * 32),),
        members=(MemberEntry("etc/app.env", 10, "ef" * 32),),
        encrypted=True,
        extra={"host": "db1"},
    )
    text = manifest.to_json()
    assert '"started_at": "2025-01-15T02:00:00Z"' in text
    assert Manifest.from_json(text, source=KEY) == manifest


def test_times_in_other_zones_become_utc():
    data = json.loads(_manifest().to_json())
    data["started_at"] = "2025-01-15T03:00:00+01:00"
    parsed = Manifest.from_json(json.dumps(data), source=KEY)
    assert parsed.started_at == datetime(2025, 1, 15, 2, 0, tzinfo=UTC)
    assert parsed.started_at.utcoffset() == timedelta(0)


def test_unknown_fields_are_kept_in_extra():
    data = json.loads(_manifest().to_json())
    data["wal_segment"] = "000000010000000000000003"
    parsed = Manifest.from_json(json.dumps(data), source=KEY)
    assert parsed.extra == {"wal_segment": "000000010000000000000003"}


def test_unparsable_manifest_names_the_key():
    with pytest.raises(ManifestError, match=rf"^{KEY}: not valid JSON \(") as caught:
        Manifest.from_json('{"kind": "database", ', source=KEY)
    assert isinstance(caught.value, IntegrityError)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("bytes", "1234", "field 'bytes' must be a non-negative integer, got a string '1234'"),
        ("encrypted", "yes", "field 'encrypted' must be true or false"),
        ("started_at", "2025-01-15T02:00:00", "field 'started_at' has no time zone"),
        ("finished_at", "yesterday", "field 'finished_at' is not an ISO 8601 time"),
        ("tables", [{"name": "users"}], "tables[0] has no 'rows'"),
        ("sha256", "not-a-digest", "field 'sha256' is not a sha256 hex digest"),
        ("kind", "snapshot", "unknown kind 'snapshot'"),
    ],
)
def test_wrong_field_is_named(field: str, value: object, message: str):
    data = json.loads(_manifest().to_json())
    data[field] = value
    with pytest.raises(ManifestError) as caught:
        Manifest.from_json(json.dumps(data), source=KEY)
    assert str(caught.value).startswith(f"{KEY}: ")
    assert message in str(caught.value)


def test_missing_required_field_is_named():
    data = json.loads(_manifest().to_json())
    del data["finished_at"]
    with pytest.raises(ManifestError, match=rf"^{KEY}: missing field 'finished_at'$"):
        Manifest.from_json(json.dumps(data), source=KEY)


def test_manifest_key_rule_for_files_and_directories():
    assert manifest_key("database/app_20250115_020000.sql.gz") == (
        "database/app_20250115_020000.sql.gz.manifest.json"
    )
    assert manifest_key("files/20250115_020000/") == "files/20250115_020000.manifest.json"


def test_hashing_reader_checks_a_stream_as_it_passes():
    payload = bytes(range(256)) * 5000
    reader = HashingReader(io.BytesIO(payload))
    copied = io.BytesIO()
    while chunk := reader.read(4096):
        copied.write(chunk)
    assert copied.getvalue() == payload
    assert reader.bytes_read == len(payload)
    assert reader.sha256 == hashlib.sha256(payload).hexdigest()
    reader.verify(hashlib.sha256(payload).hexdigest(), len(payload), "x.sql.gz")


def test_hashing_reader_reports_truncation_and_mismatch():
    reader = HashingReader(io.BytesIO(b"short"))
    reader.read()
    with pytest.raises(
        IntegrityError, match=r"^x\.sql\.gz: size mismatch: .* read 5 \(truncated\?\)$"
    ):
        reader.verify(None, 10, "x.sql.gz")
    with pytest.raises(IntegrityError, match=r"^x\.sql\.gz: sha256 mismatch"):
        reader.verify("00" * 32, 5, "x.sql.gz")


def test_hashing_reader_works_under_buffered_consumers():
    payload = b"line\n" * 10_000
    reader = HashingReader(io.BytesIO(payload))
    lines = io.BufferedReader(reader).readlines()
    assert len(lines) == 10_000
    assert reader.sha256 == hashlib.sha256(payload).hexdigest()


def test_sha256_file(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1_000_000)
    assert sha256_file(path) == hashlib.sha256(b"abc" * 1_000_000).hexdigest()


def test_naive_times_cannot_be_written():
    manifest = _manifest(started_at=datetime(2025, 1, 15, 2, 0))
    with pytest.raises(ValueError, match="naive"):
        manifest.to_json()


def test_aware_non_utc_times_are_written_as_utc():
    cet = timezone(timedelta(hours=1))
    manifest = _manifest(started_at=datetime(2025, 1, 15, 3, 0, tzinfo=cet))
    assert '"started_at": "2025-01-15T02:00:00Z"' in manifest.to_json()
