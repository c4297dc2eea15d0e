"""The config drill, end to end through `drill run`: a clean encrypted archive passes; a wrong
passphrase, an unset passphrase variable, a corrupted archive, a missing required file, an
unparsable .env and a path-traversal member each fail with a named cause; and no secret from
the archive or the passphrase reaches a report or the command's output."""

from __future__ import annotations

import os

from fixtures.estate_backups import put_config_archive, run_drill, tar_gz, write_drill_toml

PASSPHRASE = "correct horse battery staple 7f3a"
SECRET = "sk_live_PLANTED_9b1c0e6d4f2a"
ENV_FILE = f"""# production settings
export DATABASE_URL="postgresql://app:{SECRET}@db:5432/drishti_production"
STRIPE_KEY={SECRET}
SESSION_SECRET='{SECRET}'
MULTILINE_KEY="-----BEGIN KEY-----
{SECRET}
-----END KEY-----"

APP_NAME=drishti # inline comment
""".encode()
MEMBERS = {
    "srv/drishti/.env.production": ENV_FILE,
    "srv/drishti/docker-compose.yml": b"services:\n  api:\n    image: drishti/api\n",
    "etc/cron.d/drishti-backups": b"0 2 * * * root /usr/local/bin/backup.sh\n",
}
CONFIG = """[config]
passphrase_env = "DRILL_TEST_CONFIG_PASSPHRASE"
required = [".env.production", "docker-compose.yml"]
"""


def _drill(tmp_path, local_storage, passphrase: str | None = PASSPHRASE, *, reports=False):
    env = {k: v for k, v in os.environ.items() if k != "DRILL_TEST_CONFIG_PASSPHRASE"}
    if passphrase is not None:
        env["DRILL_TEST_CONFIG_PASSPHRASE"] = passphrase
    config = write_drill_toml(tmp_path, local_storage.url, CONFIG, all_reports=reports)
    outcome = run_drill(config, "config", env=env)
    return outcome, outcome.drill("config")


def test_clean_encrypted_archive_passes(tmp_path, local_storage):
    key = put_config_archive(local_storage, MEMBERS, passphrase=PASSPHRASE)
    outcome, drill = _drill(tmp_path, local_storage)
    assert outcome.exit == 0, outcome.output
    assert drill["verdict"] == "pass"
    assert drill["backup"]["key"] == key
    assert drill["backup"]["encrypted"] is True
    checks = {c["name"]: c for c in drill["checks"]}
    assert checks["decrypted with the configured passphrase"]["passed"]
    assert checks["required files are present"]["passed"]
    env_check = checks["srv/drishti/.env.production parses as a .env file"]
    assert env_check["passed"]
    assert env_check["detail"] == "5 variables (values not shown)"
    assert checks["members match the manifest's checksums"]["passed"]
    assert all(c["passed"] for c in drill["checks"]), drill["checks"]


def _nowhere(outcome, tmp_path, *secrets: str) -> None:
    """None of `secrets` in the command's output nor in any file of the report directory."""
    written = [p for p in (tmp_path / "reports").rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"drill.json", "junit.xml"}
    for secret in secrets:
        assert secret not in outcome.output, f"{secret[:6]}… in the output"
        for path in written:
            assert secret.encode() not in path.read_bytes(), f"{secret[:6]}… in {path}"


def test_no_secret_reaches_a_report_or_the_output(tmp_path, local_storage):
    put_config_archive(local_storage, MEMBERS, passphrase=PASSPHRASE)
    outcome, _ = _drill(tmp_path, local_storage, reports=True)
    assert outcome.exit == 0, outcome.output
    assert (outcome.run_dir / "pytest-report.html").exists()
    _nowhere(outcome, tmp_path, SECRET, PASSPHRASE)


def test_plain_archive_without_manifest_passes(tmp_path, local_storage):
    put_config_archive(local_storage, MEMBERS, manifest=False)
    outcome, drill = _drill(tmp_path, local_storage, passphrase=None)
    assert outcome.exit == 0, outcome.output
    assert any("is not encrypted" in note for note in drill["notes"])
    assert any("no member checksums" in note for note in drill["notes"])


def test_wrong_passphrase_fails(tmp_path, local_storage):
    put_config_archive(local_storage, MEMBERS, passphrase=PASSPHRASE)
    wrong = "not the passphrase 41c9"
    outcome, drill = _drill(tmp_path, local_storage, passphrase=wrong, reports=True)
    assert outcome.exit == 1, outcome.output
    assert "wrong passphrase or not encrypted for it" in drill["error"]
    # a failure's traceback (output, JUnit, pytest-html) must not carry the environment either
    _nowhere(outcome, tmp_path, wrong, SECRET)


def test_unset_passphrase_variable_fails_naming_it(tmp_path, local_storage):
    put_config_archive(local_storage, MEMBERS, passphrase=PASSPHRASE)
    outcome, drill = _drill(tmp_path, local_storage, passphrase=None)
    assert outcome.exit == 1, outcome.output
    assert "the passphrase variable DRILL_TEST_CONFIG_PASSPHRASE is not set" in drill["error"]


def test_corrupted_archive_fails(tmp_path, local_storage):
    put_config_archive(local_storage, MEMBERS, passphrase=PASSPHRASE, damage=True)
    outcome, drill = _drill(tmp_path, local_storage)
    assert outcome.exit == 1, outcome.output
    assert "sha256 mismatch" in drill["error"]
    assert "the archive is corrupt" in drill["error"]


def test_corrupted_archive_without_manifest_fails(tmp_path, local_storage):
    put_config_archive(local_storage, MEMBERS, passphrase=PASSPHRASE, damage=True, manifest=False)
    outcome, drill = _drill(tmp_path, local_storage)
    assert outcome.exit == 1, outcome.output
    assert "gpg failed" in drill["error"], drill["error"]


def test_missing_required_file_fails(tmp_path, local_storage):
    members = {k: v for k, v in MEMBERS.items() if not k.endswith("docker-compose.yml")}
    put_config_archive(local_storage, members, passphrase=PASSPHRASE)
    outcome, drill = _drill(tmp_path, local_storage)
    assert outcome.exit == 1, outcome.output
    assert "required files are present: missing: docker-compose.yml" in drill["error"]


def test_unparsable_env_file_fails_without_echoing_it(tmp_path, local_storage):
    broken = ENV_FILE + f"this line {SECRET} is not an assignment\n".encode()
    put_config_archive(
        local_storage, {**MEMBERS, "srv/drishti/.env.production": broken}, passphrase=PASSPHRASE
    )
    outcome, drill = _drill(tmp_path, local_storage)
    assert outcome.exit == 1, outcome.output
    assert ".env.production: line 10: expected KEY=VALUE" in drill["error"]
    _nowhere(outcome, tmp_path, SECRET, PASSPHRASE)


def test_path_traversal_member_is_refused(tmp_path, local_storage):
    local_storage.put_bytes(
        "config/config_20991231_000000.tar.gz", tar_gz({**MEMBERS, "../../escaped": b"x"})
    )
    outcome, drill = _drill(tmp_path, local_storage, passphrase=None)
    assert outcome.exit == 1, outcome.output
    assert "'../../escaped' would land outside the extraction directory" in drill["error"]
    assert not (tmp_path.parent / "escaped").exists()
