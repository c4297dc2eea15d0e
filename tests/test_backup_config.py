"""`drill backup config`: a tar.gz of the listed files, gpg-encrypted when a passphrase is set,
opened with the real `gpg` command line as the seed's runbook did."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from drills.backup import Destination, backup_config
from drills.config.errors import DrillError, StorageError
from drills.storage import LocalStorage, open_storage
from drills.storage.catalog import latest, list_backups

PASSPHRASE = "correct horse battery staple"
SECRET = b"DATABASE_URL=postgresql://app:s3cr3t@db/drishti\nSECRET_KEY=abc123\n"


@pytest.fixture
def config_files(tmp_path: Path) -> dict[str, Path]:
    """An app's .env and an nginx site, as on a server."""
    env = tmp_path / "srv" / "drishti" / ".env.production"
    site = tmp_path / "etc" / "nginx" / "sites-available" / "drishti"
    for path, data in ((env, SECRET), (site, b"server { listen 80; }\n")):
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
    env.chmod(0o600)
    return {"env": env, "site": site}


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary directory the producer uses, to see that it leaves nothing there."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def _gpg_decrypt(path: Path, passphrase: str, home: Path) -> subprocess.CompletedProcess:
    """What a person runs by hand: gpg --decrypt, passphrase on stdin, a fresh keyring."""
    home.mkdir(mode=0o700)
    try:
        return subprocess.run(
            [
                "gpg",
                "--homedir",
                str(home),
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase-fd",
                "0",
                "--decrypt",
                str(path),
            ],
            input=passphrase.encode() + b"\n",
            capture_output=True,
            timeout=60,
            check=False,
        )
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def _members(tar_gz: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar_gz), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_encrypted_archive_opens_with_gpg_and_refuses_a_wrong_passphrase(
    config_files: dict[str, Path], tmp_path: Path, local_storage: LocalStorage, private_tmp: Path
):
    dest = Destination("config/", storage=local_storage, local_dir=tmp_path / "local")

    result = backup_config(dest, [str(p) for p in config_files.values()], passphrase=PASSPHRASE)

    assert result.key.startswith("config/config_")
    assert result.key.endswith(".tar.gz.gpg")
    stored = local_storage.root / result.key
    assert stat.S_IMODE(result.local_path.stat().st_mode) == 0o600
    opened = _gpg_decrypt(stored, PASSPHRASE, tmp_path / "gnupg-right")
    assert opened.returncode == 0, opened.stderr
    members = _members(opened.stdout)
    env_name = str(config_files["env"]).lstrip("/")
    assert members[env_name] == SECRET
    assert set(members) == {str(p).lstrip("/") for p in config_files.values()}

    refused = _gpg_decrypt(stored, "wrong passphrase", tmp_path / "gnupg-wrong")
    assert refused.returncode != 0
    assert refused.stdout == b""
    assert b"decryption failed" in refused.stderr

    manifest = result.manifest
    assert manifest.encrypted
    assert (manifest.kind, manifest.format, manifest.compression) == ("config", "tar", "gzip")
    assert {(m.path, m.size, m.sha256) for m in manifest.members} == {
        (name, len(data), hashlib.sha256(data).hexdigest()) for name, data in members.items()
    }
    assert (manifest.bytes, manifest.sha256) == (
        stored.stat().st_size,
        hashlib.sha256(stored.read_bytes()).hexdigest(),
    )
    text = manifest.to_json()
    assert "s3cr3t" not in text
    assert PASSPHRASE not in text
    found = latest(list_backups(local_storage, "config"))
    assert (found.key, found.encrypted, found.time_source) == (result.key, True, "manifest")
    assert list(private_tmp.iterdir()) == []  # no GNUPGHOME, no plain archive left behind


def test_plain_archive_lists_members_with_relative_names(
    config_files: dict[str, Path], tmp_path: Path
):
    dest = Destination("config/", local_dir=tmp_path / "local")

    result = backup_config(dest, [str(config_files["env"]), str(config_files["site"].parent)])

    assert result.local_path.name.endswith(".tar.gz")
    data = result.local_path.read_bytes()
    gzip.decompress(data)  # a complete gzip stream
    members = _members(data)
    assert all(not name.startswith("/") for name in members)
    assert {m.path: m.sha256 for m in result.manifest.members} == {
        name: hashlib.sha256(body).hexdigest() for name, body in members.items()
    }
    assert not result.manifest.encrypted
    assert result.manifest.sha256 == hashlib.sha256(data).hexdigest()


def test_missing_listed_file_is_named_unless_optional(
    config_files: dict[str, Path], tmp_path: Path
):
    missing = str(tmp_path / "etc" / "cron.d" / "drishti-backups")
    paths = [str(config_files["env"]), missing]
    dest = Destination("config/", local_dir=tmp_path / "local")

    with pytest.raises(DrillError) as caught:
        backup_config(dest, paths, passphrase=PASSPHRASE)
    assert str(caught.value).startswith(f"{missing}: listed config file is missing")
    assert not (tmp_path / "local").exists()

    result = backup_config(dest, paths, optional=[missing], passphrase=PASSPHRASE)
    assert [m.path for m in result.manifest.members] == [str(config_files["env"]).lstrip("/")]


def _drill(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "drills.cli", "backup", "config", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )


def test_cli_backup_config_needs_its_passphrase_variable(
    config_files: dict[str, Path], tmp_path: Path
):
    store = tmp_path / "store"
    store.mkdir()
    config = tmp_path / "drill.toml"
    paths = ", ".join(f'"{p}"' for p in config_files.values())
    config.write_text(
        f'[storage]\nurl = "{store.as_uri()}"\n\n[config]\npaths = [{paths}]\n'
        'passphrase_env = "DRILL_TEST_PASSPHRASE"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "DRILL_TEST_PASSPHRASE"}

    unset = subprocess.run(
        [sys.executable, "-m", "drills.cli", "backup", "config", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    done = _drill(config, {"DRILL_TEST_PASSPHRASE": PASSPHRASE})

    assert unset.returncode == 2
    assert unset.stderr == (
        "drill: $DRILL_TEST_PASSPHRASE is not set: [config] passphrase_env names it as the "
        "archives' passphrase\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("config: config/config_")
    assert PASSPHRASE not in done.stdout + done.stderr
    [backup] = list_backups(LocalStorage(store), "config")
    assert backup.encrypted


def test_unreachable_storage_is_one_line_and_the_local_copy_is_kept(
    config_files: dict[str, Path], tmp_path: Path
):
    closed = open_storage(
        "s3://backups", "http://127.0.0.1:1", "us-east-1", access_key_id="x", secret_access_key="y"
    )
    dest = Destination("config/", storage=closed, local_dir=tmp_path / "local")

    with pytest.raises(StorageError) as caught:
        backup_config(dest, [str(config_files["site"])])

    message = str(caught.value)
    assert "\n" not in message
    assert "storage unreachable (connection refused)" in message
    [kept] = (tmp_path / "local" / "config").glob("config_*.tar.gz")
    assert message.endswith(f"; local copy kept at {kept} (the next run uploads it)")
