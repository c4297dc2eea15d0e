"""Signed evidence, as an auditor checks it: `drill keygen`, a signed `drill run`, and
`drill verify-report` naming every file changed, added or removed after the run.

The runs are real `drill run`s of the freshness drill (no container needed) against a
seed-style backup on file:// storage; every artefact (JUnit, pytest-html, Allure, the HTML
drill report) is the real one.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DB = "drishti_production"


def drill(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the `drill` command of this checkout."""
    return subprocess.run(
        [sys.executable, "-m", "drills.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )


def estate(directory: Path, report: str = "") -> Path:
    """A seed-style database backup on file:// storage and its drill.toml."""
    store = directory / "backups" / "database"
    store.mkdir(parents=True)
    stamp = (datetime.now(UTC) - timedelta(minutes=3)).strftime("%Y%m%d_%H%M%S")
    (store / f"{DB}_{stamp}.sql.gz").write_bytes(gzip.compress(b"SELECT 1;\n"))
    config = directory / "drill.toml"
    config.write_text(
        f'[estate]\nname = "evidence"\n[storage]\nurl = "file://{directory / "backups"}"\n'
        f'[database]\nname = "{DB}"\n[report]\ndir = "{directory / "reports"}"\n{report}'
    )
    return config


def run_freshness(
    config: Path, env: dict | None = None
) -> tuple[subprocess.CompletedProcess, Path]:
    """`drill run --only freshness`; the outcome and the run directory it wrote."""
    result = drill("run", "--config", str(config), "--only", "freshness", "-q", env=env)
    return result, (config.parent / "reports" / "latest").resolve()


@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> Path:
    """A key pair made by `drill keygen`, outside any report directory."""
    key = tmp_path_factory.mktemp("keys") / "signing.key"
    result = drill("keygen", str(key))
    assert result.returncode == 0, result.stderr
    return key


@pytest.fixture(scope="module")
def signed_runs(tmp_path_factory, signer) -> list[Path]:
    """Two signed runs in one report directory."""
    config = estate(tmp_path_factory.mktemp("signed"), f'signing_key_path = "{signer}"\n')
    runs = []
    for _ in range(2):
        result, run_dir = run_freshness(config)
        assert result.returncode == 0, result.stdout + result.stderr
        runs.append(run_dir)
    return runs


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "reports" / run_dir.name))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_keygen_writes_a_private_key_for_its_owner_and_never_overwrites(signer):
    assert signer.stat().st_mode & 0o777 == 0o600
    assert signer.with_name("signing.key.pub").read_text().startswith("-----BEGIN PUBLIC KEY")
    again = drill("keygen", str(signer))
    assert again.returncode == 2
    assert "already exists" in again.stderr


def test_signed_run_verifies_and_says_who_signed(signed_runs, signer):
    run_dir = signed_runs[-1]
    result = drill("verify-report", str(run_dir), "--public-key", f"{signer}.pub")
    assert result.returncode == 0, result.stderr
    document = json.loads((run_dir / "drill.json").read_text())
    fingerprint = document["evidence"]["fingerprint"]
    assert f"signature valid ({fingerprint}, the given key)" in result.stdout
    assert {"junit.xml", "pytest-report.html", "drill-report.html"} <= set(document["artefacts"])
    assert any(name.startswith("allure-results/") for name in document["artefacts"])
    assert f"signed, Ed25519 key {fingerprint}" in (run_dir / "drill-report.html").read_text()


def _allure_result(run_dir: Path) -> str:
    found = sorted(run_dir.glob("allure-results/*-result.json"))
    return found[0].relative_to(run_dir).as_posix()


@pytest.mark.parametrize(
    "artefact",
    ["junit.xml", "pytest-report.html", "drill-report.html", "allure", "drill.json"],
)
def test_one_byte_changed_in_any_artefact_fails_naming_the_file(
    signed_runs, signer, tmp_path, artefact
):
    run_dir = _copy(signed_runs[-1], tmp_path)
    name = _allure_result(run_dir) if artefact == "allure" else artefact
    _flip(run_dir / name)
    result = drill("verify-report", str(run_dir), "--public-key", f"{signer}.pub")
    assert result.returncode == 1
    assert f"{run_dir}/{name}: " in result.stderr
    assert "FAILED" in result.stdout


def test_a_changed_signature_fails(signed_runs, signer, tmp_path):
    run_dir = _copy(signed_runs[-1], tmp_path)
    signature = run_dir / "drill.json.sig"
    text = signature.read_text()
    signature.write_text(("B" if text[0] != "B" else "C") + text[1:])
    result = drill("verify-report", str(run_dir), "--public-key", f"{signer}.pub")
    assert result.returncode == 1
    assert "drill.json: the signature in drill.json.sig does not match" in result.stderr


def test_added_and_removed_files_are_named(signed_runs, tmp_path):
    run_dir = _copy(signed_runs[-1], tmp_path)
    (run_dir / "junit.xml").unlink()
    (run_dir / "extra.txt").write_text("added later")
    result = drill("verify-report", str(run_dir))
    assert result.returncode == 1
    assert "junit.xml: missing" in result.stderr
    assert "extra.txt: not listed in drill.json (added after the run)" in result.stderr


def test_a_different_key_does_not_verify(signed_runs, tmp_path):
    other = tmp_path / "other.key"
    assert drill("keygen", str(other)).returncode == 0
    result = drill("verify-report", str(signed_runs[-1]), "--public-key", f"{other}.pub")
    assert result.returncode == 1
    assert "not by the given key" in result.stderr


def test_regenerated_report_is_the_signed_one(signed_runs):
    # The first run's report was written before the second run joined the history.
    result = drill("report", str(signed_runs[0]))
    assert result.returncode == 0, result.stderr
    assert "unchanged" in result.stdout
    assert drill("verify-report", str(signed_runs[0])).returncode == 0


def test_unsigned_run_says_so(tmp_path):
    result, run_dir = run_freshness(estate(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "This run is not signed" in (run_dir / "drill-report.html").read_text()
    assert not (run_dir / "drill.json.sig").exists()
    verify = drill("verify-report", str(run_dir))
    assert verify.returncode == 1
    assert "drill.json: unsigned (no signing key is configured" in verify.stderr
    hashes_only = drill("verify-report", str(run_dir), "--allow-unsigned")
    assert hashes_only.returncode == 0
    assert "OK (UNSIGNED)" in hashes_only.stdout


def test_key_inside_the_report_directory_is_refused(tmp_path):
    key = tmp_path / "reports" / "signing.key"
    assert drill("keygen", str(key)).returncode == 0
    result, run_dir = run_freshness(estate(tmp_path, f'signing_key_path = "{key}"\n'))
    assert result.returncode == 2
    assert "is inside the report directory" in result.stderr
    evidence = json.loads((run_dir / "drill.json").read_text())["evidence"]
    assert evidence["signed"] is False
    assert "inside the report directory" in evidence["unsigned_reason"]
    assert "This run is not signed" in (run_dir / "drill-report.html").read_text()


def test_key_from_the_environment_signs_and_never_lands_in_the_run(tmp_path):
    key = tmp_path / "keys" / "signing.key"
    assert drill("keygen", str(key)).returncode == 0
    pem = key.read_text()
    env = {**os.environ, "DRILL_TEST_SIGNING_KEY": pem}
    config = estate(tmp_path, 'signing_key_env = "DRILL_TEST_SIGNING_KEY"\n')
    result, run_dir = run_freshness(config, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert drill("verify-report", str(run_dir), "--public-key", f"{key}.pub").returncode == 0
    body = pem.splitlines()[1]  # the base64 line that carries the key itself
    for path in [*run_dir.rglob("*"), run_dir.parent / "history.jsonl"]:
        if path.is_file():
            assert body.encode() not in path.read_bytes(), path


def test_report_of_a_sealed_run_without_html_goes_elsewhere(tmp_path):
    result, run_dir = run_freshness(estate(tmp_path, "html = false\n"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (run_dir / "drill-report.html").exists()
    refused = drill("report", str(run_dir))
    assert refused.returncode == 1
    assert "is not listed" in refused.stderr
    assert not (run_dir / "drill-report.html").exists()
    elsewhere = tmp_path / "report.html"
    assert drill("report", str(run_dir), "-o", str(elsewhere)).returncode == 0
    assert "recovery drill of evidence" in elsewhere.read_text()
    assert drill("verify-report", str(run_dir), "--allow-unsigned").returncode == 0
