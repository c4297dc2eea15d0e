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


def _ours(client) -> list[str]:
    selector = {"label": f"{labels.PROJECT}={labels.PROJECT_VALUE}"}
    alive = {c.name for c in client.containers.list(all=True, filters=selector)}
    return sorted(alive)


def test_demo_passes_every_time_and_leaves_nothing(tmp_path, docker_client):
    runs = int(os.environ.get("DRILL_CLEAN_RUNS", "3"))
    before = set(_ours(docker_client))
    for n in range(runs):
        reports = tmp_path / f"reports-{n}"
        result = subprocess.run(
            [sys.executable, "-m", "drills.cli", "demo", "--report-dir", str(reports)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, f"run {n + 1}/{runs}:\n{result.stdout}\n{result.stderr}"
        assert "demo: PASS" in result.stdout
        document = json.loads((reports / "latest" / "drill.json").read_text())
        assert document["verdict"] == "pass"
        verdicts = {d["kind"]: d["verdict"] for d in document["drills"]}
        assert verdicts == dict.fromkeys(KINDS, "pass"), verdicts
        left = set(_ours(docker_client)) - before
        assert not left, f"run {n + 1} left containers behind: {left}"
