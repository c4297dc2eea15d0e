"""Nothing a run creates survives it, and leftovers of dead runs are swept at the next start."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from drills.runtime import labels

ROOT = Path(__file__).resolve().parents[1]

INNER_TEST = textwrap.dedent(
    """
    def test_uses_containers(postgres, network, run_session, tmp_path_factory):
        import os
        with open(os.environ["RUN_ID_FILE"], "w") as out:
            out.write(run_session.run_id)
        with postgres.connect("drishti") as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    """
)


def _of_run(client, run_id: str) -> list[str]:
    selector = {"label": f"{labels.RUN}={run_id}"}
    found = [c.name for c in labels.list_containers(client, selector)]
    found += [n.name for n in client.networks.list(filters=selector)]
    found += [v.name for v in client.volumes.list(filters=selector)]
    return found


def test_a_test_session_leaves_nothing_behind(tmp_path, docker_client):
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(INNER_TEST)
    run_id_file = tmp_path / "run-id"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "drills.suite.fixtures",
            "-p",
            "drills.suite.public",
            "-p",
            "fixtures.runtime",
            str(test_file),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "RUN_ID_FILE": str(run_id_file)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_file.read_text()
    assert run_id
    assert _of_run(docker_client, run_id) == []


def test_sweep_removes_dead_runs_and_spares_the_rest(docker_client, postgres_image, run_session):
    dead_run = f"dead{uuid.uuid4().hex[:8]}"
    dead_labels = {labels.PROJECT: labels.PROJECT_VALUE, labels.RUN: dead_run}
    leftover = docker_client.containers.create(postgres_image, labels=dead_labels)
    leftover_net = docker_client.networks.create(f"drill-{dead_run}", labels=dead_labels)
    leftover_vol = docker_client.volumes.create(f"drill-{dead_run}", labels=dead_labels)
    # A run killed between create and start leaves one container that never ran, nothing else.
    lone_run = f"dead{uuid.uuid4().hex[:8]}"
    lone = docker_client.containers.create(
        postgres_image, labels={labels.PROJECT: labels.PROJECT_VALUE, labels.RUN: lone_run}
    )
    stranger = docker_client.containers.create(postgres_image, labels={"owner": "someone-else"})
    ours = docker_client.containers.create(postgres_image, labels=run_session.labels("alive"))
    try:
        # A new run starts: its sweep takes the dead run's objects, nothing else.
        newcomer = labels.RunSession.begin()
        try:
            removed = labels.sweep(docker_client, keep=newcomer.run_id)
        finally:
            newcomer.end(docker_client)
        assert f"container {leftover.name}" in removed
        assert f"container {lone.name}" in removed
        assert _of_run(docker_client, dead_run) == []
        assert _of_run(docker_client, lone_run) == []
        docker_client.containers.get(stranger.id)  # unlabelled: untouched
        docker_client.containers.get(ours.id)  # a live run's: untouched
    finally:
        for obj in (stranger, ours):
            obj.remove(force=True)
        for obj in (leftover_net, leftover_vol):
            with contextlib.suppress(Exception):
                obj.remove()
