"""The main job: `drill demo` backs up the embedded estate and drills every kind, green every
time (N runs, `DRILL_CLEAN_RUNS`, default 3), leaving no container, network or volume; and
green once at a scale whose database dump is past 32 MiB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from drills.runtime import labels

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"database", "files", "config", "system", "pitr", "freshness", "storage"}
# Measured: the gzip plain dump of the demo database grows about 195 kB a unit of scale;
# scale 200 (1 million transactions, the scale that once died of "integer out of range")
# makes a dump of 38.96 MB, past 32 MiB (33.55 MB), and 199 MB of uploads. The whole demo
# takes about 3.5 minutes on two cores (the estate up in 25 to 50 s).
LARGE_SCALE = 200
LARGE_DUMP_BYTES = 32 * 1024 * 1024


def _left_by(client, pid: int) -> list[str]:
    """What a process created and did not remove: containers, networks, volumes."""
    selector = {"label": [f"{labels.PROJECT}={labels.PROJECT_VALUE}", f"{labels.PID}={pid}"]}
    found = [c.name for c in labels.list_containers(client, selector)]
    found += [n.name for n in client.networks.list(filters=selector)]
    found += [v.name for v in client.volumes.list(filters=selector)]
    return found


def _green_demo(client, reports: Path, *args: str, timeout: float, what: str) -> dict:
    """Run `drill demo` and assert it passed with every drill green and left nothing behind;
    return its drill.json."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "drills.cli", "demo", "--report-dir", str(reports), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Checked first: a failed demo must leave nothing behind either.
    left = _left_by(client, proc.pid)
    assert not left, f"{what} left behind: {left}"
    assert proc.returncode == 0, f"{what}:\n{stdout}\n{stderr}"
    assert "demo: PASS" in stdout
    document = json.loads((reports / "latest" / "drill.json").read_text())
    assert document["verdict"] == "pass"
    verdicts = {d["kind"]: d["verdict"] for d in document["drills"]}
    assert verdicts == dict.fromkeys(KINDS, "pass"), verdicts
    return document


def test_demo_passes_every_time_and_leaves_nothing(tmp_path, docker_client):
    runs = int(os.environ.get("DRILL_CLEAN_RUNS", "3"))
    for n in range(runs):
        what = f"run {n + 1}/{runs}"
        document = _green_demo(docker_client, tmp_path / f"reports-{n}", timeout=900, what=what)
    # The demo's bucket is protected as the runbook asks, but for TLS: its server speaks
    # plain HTTP, and the report shows that check failing, informative, with its fix.
    storage = next(d for d in document["drills"] if d["kind"] == "storage")
    posture = {p["check"]: p for p in storage["posture"]}
    required = [name for name, p in posture.items() if p["required"]]
    assert required == ["versioning", "object_lock", "encryption", "public_access", "lifecycle"]
    assert all(posture[name]["passed"] for name in required)
    assert posture["tls_only"]["passed"] is False
    assert "aws:SecureTransport" in posture["tls_only"]["fix"]
    html = (tmp_path / f"reports-{runs - 1}" / "latest" / "drill-report.html").read_text()
    assert "Storage posture" in html


def test_demo_at_a_scale_past_32_mib_passes_and_leaves_nothing(tmp_path, docker_client):
    document = _green_demo(
        docker_client,
        tmp_path / "reports",
        "--scale",
        str(LARGE_SCALE),
        timeout=1800,
        what=f"scale {LARGE_SCALE}",
    )
    database = next(d for d in document["drills"] if d["kind"] == "database")
    assert database["backup"]["bytes"] > LARGE_DUMP_BYTES, database["backup"]
