"""Encrypted database dumps, end to end: the original runbook's `gpg --symmetric --cipher-algo
AES256` copies under `encrypted/`, dumps encrypted to a key (`gpg --encrypt -r`), and the
producer's own encrypted dumps are drilled green, decrypted on the stream with no plaintext on
disk; a wrong passphrase, a missing variable and a damaged ciphertext are red for their causes
(those three are rows of the fault catalogue too)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from fixtures.estate_backups import DB, gpg_symmetric, run_drill, stamp, write_drill_toml

PASSPHRASE = "correct horse battery staple"
ENV = "TEST_DUMP_PASSPHRASE"
SECTIONS = (
    '[storage.prefixes]\ndatabase = "encrypted/"\n\n'
    f'[database]\nname = "{DB}"\npassphrase_env = "{ENV}"\n'
    'checks = ["SELECT count(*) = 1000 FROM users"]\n'
)


@pytest.fixture(scope="module")
def dumps(dump_variants):
    """The session's real dumps (fixtures/estate_backups.py)."""
    return dump_variants


def _store(tmp_path: Path, data: bytes, ext: str = ".sql.gz.gpg") -> Path:
    folder = tmp_path / "store" / "encrypted"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{DB}_{stamp(timedelta(minutes=5))}{ext}"
    path.write_bytes(data)
    return path


def _drill(tmp_path: Path, sections: str = SECTIONS, **env: str):
    config = write_drill_toml(tmp_path, f"file://{tmp_path / 'store'}", sections)
    return run_drill(config, "database", env={**os.environ, **env})


def test_the_runbooks_encrypted_copy_is_drilled_green(tmp_path, dumps):
    _store(tmp_path, gpg_symmetric(gzip.compress(dumps["plain"]), PASSPHRASE))

    outcome = _drill(tmp_path, **{ENV: PASSPHRASE})

    assert outcome.exit == 0, outcome.output[-3000:]
    drill = outcome.drill("database")
    assert drill["backup"]["encrypted"] is True
    assert drill["restore"]["method"].startswith("stream gpg -> gzip")
    assert PASSPHRASE not in outcome.output
    assert PASSPHRASE not in (outcome.run_dir / "drill.json").read_text()


def test_a_dump_encrypted_to_a_key_is_drilled_with_its_keyring(tmp_path, dumps):
    keyring = tmp_path / "keyring"
    keyring.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(keyring), "--batch", "--yes"]
    subprocess.run(
        [*gpg, "--passphrase", "", "--quick-gen-key", "drills <dumps@example.test>"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    cipher = subprocess.run(
        [*gpg, "--trust-model", "always", "-r", "dumps@example.test", "--encrypt"],
        input=gzip.compress(dumps["plain"]),
        check=True,
        capture_output=True,
        timeout=120,
    ).stdout
    _store(tmp_path, cipher)
    sections = SECTIONS.replace(f'passphrase_env = "{ENV}"', f'gpg_home = "{keyring}"')

    outcome = _drill(tmp_path, sections)

    assert outcome.exit == 0, outcome.output[-3000:]


def test_a_wrong_passphrase_is_named_before_any_restore(tmp_path, dumps):
    _store(tmp_path, gpg_symmetric(gzip.compress(dumps["plain"]), PASSPHRASE))

    outcome = _drill(tmp_path, **{ENV: "not the passphrase"})

    assert outcome.exit == 1
    drill = outcome.drill("database")
    assert "gpg could not decrypt it: wrong passphrase" in drill["error"]
    assert "provision" not in drill["phases"]  # named from the dump's head, no container


def test_a_missing_variable_and_a_damaged_ciphertext_are_named(tmp_path, dumps):
    cipher = bytearray(gpg_symmetric(gzip.compress(dumps["plain"]), PASSPHRASE))
    path = _store(tmp_path, bytes(cipher))

    unset = _drill(tmp_path)
    assert unset.exit == 1
    assert f"the passphrase variable {ENV} is not set" in unset.drill("database")["error"]

    cipher[len(cipher) // 2] ^= 0xFF
    path.write_bytes(bytes(cipher))
    damaged = _drill(tmp_path, **{ENV: PASSPHRASE})
    assert damaged.exit == 1
    assert "corrupt" in damaged.drill("database")["error"]


def test_the_producer_encrypts_and_its_dumps_are_drilled(tmp_path, postgres):
    from drills.runtime.estate import APP_DIR, run_sql_file

    run_sql_file(postgres, APP_DIR / "schema.sql", "drishti")
    run_sql_file(postgres, APP_DIR / "seed.sql", "drishti", scale="1")
    sections = (
        '[storage.prefixes]\ndatabase = "encrypted/"\n\n'
        f'[database]\nname = "drishti"\nformat = "plain"\nencrypt = true\n'
        f'passphrase_env = "{ENV}"\ndsn = "{postgres.dsn("drishti")}"\n'
    )
    config = write_drill_toml(tmp_path, f"file://{tmp_path / 'store'}", sections)
    env = {**os.environ, ENV: PASSPHRASE}
    made = subprocess.run(
        [sys.executable, "-m", "drills.cli", "backup", "database", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    stored = list((tmp_path / "store" / "encrypted").glob("drishti_*.sql.gz.gpg"))
    assert len(stored) == 1
    assert not stored[0].read_bytes().startswith(b"\x1f\x8b")  # not gzip: ciphertext
    manifest = Path(f"{stored[0]}.manifest.json").read_text()
    assert '"encrypted": true' in manifest

    outcome = run_drill(config, "database", env=env)

    assert outcome.exit == 0, outcome.output[-3000:]
    checks = {c["name"]: c["passed"] for c in outcome.drill("database")["checks"]}
    assert checks["row counts equal the manifest's exact counts"] is True
