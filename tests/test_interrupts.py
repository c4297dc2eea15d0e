"""Whatever happens to a run (Ctrl-C, SIGTERM, SIGKILL mid-restore), nothing it created
survives the next run's start."""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import docker.errors
import pytest

from drills.runtime import labels

ROOT = Path(__file__).resolve().parents[1]
HANGING_DUMP = b"""-- Dumped from database version 15.4
CREATE TABLE users (id int);
INSERT INTO users VALUES (1);
SELECT pg_sleep(120);
"""


def _start_hanging_drill(tmp_path: Path) -> subprocess.Popen:
    store = tmp_path / "backups" / "database"
    store.mkdir(parents=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    (store / f"app_{stamp}.sql.gz").write_bytes(gzip.compress(HANGING_DUMP))
    config = tmp_path / "drill.toml"
    config.write_text(
        f'[storage]\nurl = "file://{tmp_path / "backups"}"\n[database]\nname = "app"\n'
        f'[report]\ndir = "{tmp_path / "reports"}"\npytest_html = false\nallure = false\n'
    )
    return subprocess.Popen(
        [sys.executable, "-m", "drills.cli", "run", "--config", str(config), "-q"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _of_pid(client, pid: int) -> list:
    selector = {"label": [f"{labels.PROJECT}={labels.PROJECT_VALUE}", f"{labels.PID}={pid}"]}
    return labels.list_containers(client, selector)


def _wait_for_restore(client, proc: subprocess.Popen, bound: float = 120) -> str:
    """Wait until the drill's restore target runs and the restore is under way."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the drill ended before its restore started"
        for container in _of_pid(client, proc.pid):
            try:
                top = container.top() if container.status == "running" else {"Processes": []}
            except docker.errors.NotFound:
                continue  # a short-lived container of the run (a warm-image template)
            if any("ON_ERROR_STOP" in " ".join(p) for p in top.get("Processes") or []):
                return container.labels[labels.RUN]
        time.sleep(0.5)
    pytest.fail("the restore never started")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_removes_its_containers(tmp_path, docker_client, sig):
    proc = _start_hanging_drill(tmp_path)
    try:
        run_id = _wait_for_restore(docker_client, proc)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _of_pid(docker_client, proc.pid) == []
    assert not labels.is_alive(run_id)


def test_killed_run_is_swept_at_the_next_start(tmp_path, docker_client):
    proc = _start_hanging_drill(tmp_path)
    try:
        _wait_for_restore(docker_client, proc)
        proc.kill()  # SIGKILL: no finalizer runs
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _of_pid(docker_client, proc.pid), "a killed run cannot clean up after itself"
    newcomer = labels.RunSession.begin()
    try:
        labels.sweep(docker_client, keep=newcomer.run_id)
    finally:
        newcomer.end(docker_client)
    assert _of_pid(docker_client, proc.pid) == []
