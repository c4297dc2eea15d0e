"""With no Docker engine reachable, `drill` exits 3 with advice, never a traceback."""

from __future__ import annotations

import subprocess
import sys


def test_dead_docker_host_exits_3(tmp_path):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "drills.cli", "images"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 3
    assert "no Docker engine answers" in result.stderr
    assert "scripts/docker-engine.sh" in result.stderr
    assert "Traceback" not in result.stderr
