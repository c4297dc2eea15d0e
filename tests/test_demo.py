"""The main job: `drill demo` backs up the embedded estate and drills every kind, green every
time (N runs, `DRILL_CLEAN_RUNS`, default 3), leaving no container, network or volume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from drills.runtime import labels

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"database", "files", "config", "system", "pitr", "freshness"}


def _left_by(client, pid: int) -> list[str]:
    """What a process created and did not remove: containers, networks, volumes."""
    selector = {"label": [f"{labels.PROJECT}={labels.PROJECT_VALUE}", f"{labels.PID}={pid}"]}
    found = [c.name for c in labels.list_containers(client, selector)]
    found += [n.name for n in client.networks.list(filters=selector)]
    found += [v.name for v in client.volumes.list(filters=selector)]
    return found


def test_demo_passes_every_time_and_leaves_nothing(tmp_path, docker_client):
    runs = int(os.environ.get("DRILL_CLEAN_RUNS", "3"))
    for n in range(runs):
        reports = tmp_path / f"reports-{n}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "drills.cli", "demo", "--report-dir", str(reports)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, f"run {n + 1}/{runs}:\n{stdout}\n{stderr}"
        assert "demo: PASS" in stdout
        document = json.loads((reports / "latest" / "drill.json").read_text())
        assert document["verdict"] == "pass"
        verdicts = {d["kind"]: d["verdict"] for d in document["drills"]}
        assert verdicts == dict.fromkeys(KINDS, "pass"), verdicts
        left = _left_by(docker_client, proc.pid)
        assert not left, f"run {n + 1} left behind: {left}"
