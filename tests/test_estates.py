"""Many estates in one `drill run`: three estates drilled at once with `--jobs 3`, each in its
own run (containers, history, signed run directory); a fault in one stays in that one, the
combined summary names every verdict and checks every run's evidence, the exit code is the
worst; an estate past its bound is stopped and leaves nothing behind; estates spread over two
real Docker engines (a second dockerd on this machine), an engine that does not answer named.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import docker

from drills.runtime import labels
from drills.storage import open_storage
from fixtures.estate_backups import (
    Dump,
    drill_cli,
    put_config_archive,
    put_database_dump,
    put_files_snapshot,
    uploads,
)

SECTIONS = '[database]\nname = "drishti_production"\n[files]\n[config]\n'


def _estate(root: Path, name: str, dump: bytes, *, damaged: bool = False) -> Path:
    (root / name / "backups").mkdir(parents=True)
    store = open_storage((root / name / "backups").as_uri())
    data = dump[: len(dump) // 2] if damaged else b""
    put_database_dump(store, Dump(dump, {}), data=data)
    put_files_snapshot(store, uploads(seed=len(name)))
    put_config_archive(store, {".env.production": f"ESTATE={name}\n".encode()})
    config = root / "estates" / f"{name}.toml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(
        f'[estate]\nname = "{name}"\n[storage]\nurl = "{store.url}"\n{SECTIONS}'
        "[report]\nhtml = true\npytest_html = false\nallure = false\n"
    )
    return config


def _left(client, summary: dict) -> list[str]:
    """What the estates' runs created and did not remove: containers, networks, volumes."""
    found = []
    for entry in summary["estates"]:
        selector = {
            "label": [f"{labels.PROJECT}={labels.PROJECT_VALUE}", f"{labels.PID}={entry['pid']}"]
        }
        found += [c.name for c in labels.list_containers(client, selector)]
        found += [n.name for n in client.networks.list(filters=selector)]
        found += [v.name for v in client.volumes.list(filters=selector)]
    return found


def test_three_estates_at_once_a_fault_stays_in_its_estate(tmp_path, docker_client, estate_dump):
    for name in ("alpha", "bravo"):
        _estate(tmp_path, name, estate_dump.data)
    _estate(tmp_path, "charlie", estate_dump.data, damaged=True)
    reports = tmp_path / "reports"
    result = drill_cli(
        "run", "--estates", str(tmp_path / "estates"), "--jobs", "3",
        "--report-dir", str(reports), "-q", timeout=900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert "3 estates, --jobs 3" in output

    (summary_dir,) = (reports / "estates").iterdir()
    summary = json.loads((summary_dir / "summary.json").read_text())
    assert summary["verdict"] == "fail"
    verdicts = {e["estate"]: e["verdict"] for e in summary["estates"]}
    assert verdicts == {"alpha": "pass", "bravo": "pass", "charlie": "fail"}
    charlie = next(e for e in summary["estates"] if e["estate"] == "charlie")
    database = next(d for d in charlie["drills"] if d["kind"] == "database")
    assert database["verdict"] == "fail"
    assert database["error"], database  # named in its own run, and only there
    for entry in summary["estates"]:
        run_dir = Path(entry["run_dir"])
        # Each estate's own run directory, under its own report directory, intact.
        assert run_dir.parent == reports / entry["estate"]
        assert entry["problems"] == []
        assert (run_dir.parent / "history.jsonl").exists()
    page = (summary_dir / "summary.html").read_text()
    assert "charlie" in page
    assert "http" not in page.replace('lang="en"', "")  # no external request

    # Run at once: their drills overlapped in time.
    starts = sorted(
        json.loads(Path(e["run_dir"], "drill.json").read_text())["run"]["started_at"]
        for e in summary["estates"]
    )
    assert starts[-1] < max(
        json.loads(Path(e["run_dir"], "drill.json").read_text())["finished_at"]
        for e in summary["estates"]
    )
    assert not _left(docker_client, summary)

    # A CI matrix's run directories, merged: the same verdicts, each part verified; a part
    # changed after its run is named.
    run_dirs = [e["run_dir"] for e in summary["estates"]]
    merged = drill_cli("merge", *run_dirs, "--out", str(tmp_path / "merged"))
    assert merged.returncode == 1, merged.stdout + merged.stderr
    again = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert {e["estate"]: e["verdict"] for e in again["estates"]} == verdicts
    passing = [e["run_dir"] for e in summary["estates"] if e["verdict"] == "pass"]
    assert drill_cli("merge", *passing, "--out", str(tmp_path / "green")).returncode == 0
    junit = Path(passing[0], "junit.xml")
    junit.write_text(junit.read_text().replace("testcase", "testcasE", 1))
    tampered = drill_cli("merge", *passing, "--out", str(tmp_path / "tampered"))
    assert tampered.returncode == 1
    assert "junit.xml" in tampered.stdout, tampered.stdout


def test_an_estate_past_its_bound_is_stopped_and_leaves_nothing(
    tmp_path, docker_client, estate_dump
):
    first = _estate(tmp_path, "alpha", estate_dump.data)
    second = _estate(tmp_path, "bravo", estate_dump.data)
    reports = tmp_path / "reports"
    result = drill_cli(
        "run", "--config", str(first), "--config", str(second), "--jobs", "auto",
        "--estate-timeout", "6", "--report-dir", str(reports), "--only", "database",
        timeout=600,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert "--jobs auto chose" in output
    (summary_dir,) = (reports / "estates").iterdir()
    summary = json.loads((summary_dir / "summary.json").read_text())
    for entry in summary["estates"]:
        assert entry["verdict"] == "fail"
        assert entry["problems"][-1] == "stopped after its bound of 6 s"
    assert not _left(docker_client, summary)


def test_estates_spread_over_two_engines_and_a_down_one_is_reported(
    tmp_path, docker_client, second_engine, estate_dump
):
    for name in ("alpha", "bravo", "charlie"):
        _estate(tmp_path, name, estate_dump.data)
    first = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    down = f"unix://{tmp_path / 'no-engine.sock'}"
    env = {**os.environ, "DRILL_ENGINES": f"{first},{second_engine},{down}"}
    reports = tmp_path / "reports"
    result = drill_cli(
        "run", "--estates", str(tmp_path / "estates"), "--jobs", "3",
        "--report-dir", str(reports), "--only", "database,files", env=env, timeout=900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"engine {down}: DOWN: does not answer" in output
    (summary_dir,) = (reports / "estates").iterdir()
    summary = json.loads((summary_dir / "summary.json").read_text())
    assert summary["verdict"] == "pass"
    states = {e["url"]: e["up"] for e in summary["engines"]}
    assert states == {first: True, second_engine: True, down: False}
    used = {entry["engine"] for entry in summary["estates"]}
    assert used == {first, second_engine}  # both answered, both drilled; the down one none
    assert all(entry["problems"] == [] for entry in summary["estates"])
    # Nothing left on either engine.
    assert not _left(docker_client, summary)
    other = docker.DockerClient(base_url=second_engine)
    try:
        assert not _left(other, summary)
    finally:
        other.close()
