"""A small config estate whose drills run in about a second: real `drill run --only config`
runs (no container: the config drill reads a tar.gz from file:// storage), for the tests of
the history's chain and the evidence bundle; and the `signer` fixture they share."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.test_evidence import drill


def _name(hours_ago: int) -> str:
    # Recent enough for the config RPO (24 h): a stale backup would fail every drill.
    return f"config_{datetime.now(UTC) - timedelta(hours=hours_ago):%Y%m%d_%H%M%S}.tar.gz"


@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> Path:
    """A key pair made by `drill keygen`."""
    key = tmp_path_factory.mktemp("keys") / "signing.key"
    assert drill("keygen", str(key)).returncode == 0
    return key


def config_estate(directory: Path, key: Path | None, name: str = "audit") -> Path:
    """A seed-style config backup on file:// storage and its drill.toml (signed with `key`)."""
    store = directory / "backups" / "config"
    store.mkdir(parents=True)
    (store / _name(2)).write_bytes(_archive())
    signing = f'signing_key_path = "{key}"\n' if key else ""
    config = directory / "drill.toml"
    config.write_text(
        f'[estate]\nname = "{name}"\n[storage]\nurl = "file://{directory / "backups"}"\n'
        f'[config]\n[report]\ndir = "{directory / "reports"}"\n{signing}'
    )
    return config


def _archive() -> bytes:
    data = b"DATABASE_URL=postgres://app@db/app\nSECRET_KEY=not-a-real-secret\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        member = tarfile.TarInfo("app.env")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def break_newest(config: Path) -> None:
    """Make the newest config backup a truncated one: the next drill fails on it."""
    store = config.parent / "backups" / "config"
    (store / _name(1)).write_bytes(_archive()[:40])


def mend(config: Path) -> None:
    """Remove the truncated backup: the next drill passes again."""
    newest = max((config.parent / "backups" / "config").iterdir())
    newest.unlink()


def run_config(config: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """`drill run --only config`; the outcome and the run directory it wrote."""
    result = drill("run", "--config", str(config), "--only", "config", "-q")
    return result, (config.parent / "reports" / "latest").resolve()


def copy_reports(config: Path, target: Path) -> Path:
    """A copy of the estate's report directory (runs and history), to tamper with."""
    return Path(shutil.copytree(config.parent / "reports", target, symlinks=True))
