"""The config drill, end to end through `drill run`: a clean encrypted archive passes; a wrong
passphrase, an unset passphrase variable, a corrupted archive, a missing required file, an
unparsable .env and a path-traversal member each fail with a named cause; and no secret from
the archive or the passphrase reaches a report or the command's output. Archives made by the
original runbook's `tar -czf`: a configured path missing from it fails naming the path, a
symlinked nginx site is a link and passes, a required file that is a link to something the
archive lacks fails."""

from __future__ import annotations

import os
from datetime import timedelta

from fixtures.estate_backups import put_config_archive, run_drill, stamp, tar_gz, write_drill_toml
from fixtures.upload_trees import config_tree, runbook_config_archive

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


def _runbook_archive(tmp_path, local_storage, *, leave_out: str = "", env_link: bool = False):
    """`tar -czf` of a server's config paths, as the original runbook ran it (a missing path
    makes tar exit 2, and the archive is written all the same); stored without a manifest.
    Returns the `[config]` section listing every path."""
    root = tmp_path / "server"
    paths = config_tree(root)
    if env_link:  # the deploy's shared .env, linked into the app and not archived
        env = root / "srv/app/.env.production"
        (root / "srv/shared").mkdir()
        env.rename(root / "srv/shared/.env")
        env.symlink_to(root / "srv/shared/.env")
    archived = [p for p in paths if not p.endswith(leave_out)] if leave_out else paths
    if leave_out:
        os.unlink(root / leave_out)
    archive = tmp_path / "config.tar.gz"
    assert runbook_config_archive(paths, archive) == (2 if leave_out else 0)
    assert len(archived) == len(paths) - bool(leave_out)
    local_storage.put_bytes(
        f"config/config_{stamp(timedelta(minutes=5))}.tar.gz", archive.read_bytes()
    )
    listed = ", ".join(f'"{p}"' for p in paths)
    return (
        f'[config]\npaths = [{listed}]\nrequired = [".env.production", "sites-enabled/app.conf"]\n'
    )


def _run(tmp_path, local_storage, section: str):
    config = write_drill_toml(tmp_path, local_storage.url, section)
    outcome = run_drill(config, "config")
    return outcome, outcome.drill("config")


def test_an_archive_missing_a_configured_path_fails_naming_it(tmp_path, local_storage):
    """`tar -czf` exits 2 when a listed path is missing, but writes the archive: without the
    TLS private key it must not pass."""
    section = _runbook_archive(tmp_path, local_storage, leave_out="etc/ssl/private/app.key")
    outcome, drill = _run(tmp_path, local_storage, section)
    assert outcome.exit == 1, outcome.output
    key = tmp_path / "server/etc/ssl/private/app.key"
    assert (
        f"every configured path is in the archive, as what it was: missing from the archive: {key}"
        in drill["error"]
    )


def test_a_symlinked_site_in_a_runbook_archive_is_a_link_and_passes(tmp_path, local_storage):
    section = _runbook_archive(tmp_path, local_storage)
    outcome, drill = _run(tmp_path, local_storage, section)
    assert outcome.exit == 0, outcome.output
    checks = {c["name"]: c for c in drill["checks"]}
    assert checks["every configured path is in the archive, as what it was"]["passed"]
    assert checks["required files are present"]["passed"]
    assert "1 link(s)" in checks["archive holds files"]["detail"]


def test_a_required_file_that_links_outside_the_archive_fails(tmp_path, local_storage):
    section = _runbook_archive(tmp_path, local_storage, env_link=True)
    outcome, drill = _run(tmp_path, local_storage, section)
    assert outcome.exit == 1, outcome.output
    env = str(tmp_path / "server/srv/app/.env.production").lstrip("/")
    target = tmp_path / "server/srv/shared/.env"
    assert f"{env}: a link to {target}, which the archive does not hold" in drill["error"]
