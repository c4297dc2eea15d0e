"""The history as a hash chain, as an auditor checks it: `drill verify-history` names every
record removed, altered or reordered, every run directory missing or changed, and exits 1.

The runs are real `drill run --only config` runs of a small estate (tests/evidence_estate.py),
some failing on a truncated backup; the tampering is done for real on a copy of the report
directory (lines deleted, edited, swapped; directories removed; a byte of drill.json changed).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drills.report.verdicts import last_drills
from tests import evidence_estate
from tests.evidence_estate import break_newest, config_estate, copy_reports, mend, run_config
from tests.test_evidence import ROOT, drill

signer = evidence_estate.signer  # the fixture, shared with the bundle's tests


@pytest.fixture(scope="module")
def estate(tmp_path_factory, signer) -> dict:
    """Five signed runs: pass, fail, fail (a truncated backup), pass, pass."""
    config = config_estate(tmp_path_factory.mktemp("chain"), signer)
    runs, codes = [], []
    for step in ("pass", "break", "fail", "mend", "pass"):
        if step == "break":
            break_newest(config)
        if step == "mend":
            mend(config)
        result, run_dir = run_config(config)
        codes.append(result.returncode)
        runs.append(run_dir)
    assert codes == [0, 1, 1, 0, 0]
    return {"config": config, "runs": [r.name for r in runs], "public": f"{signer}.pub"}


def verify(report_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`drill verify-history REPORT_DIR ...`."""
    return drill("verify-history", str(report_dir), *args)


def lines(report_dir: Path) -> list[str]:
    """The lines of the history file."""
    return (report_dir / "history.jsonl").read_text().splitlines()


def write_lines(report_dir: Path, new: list[str]) -> None:
    """Rewrite the history file with these lines."""
    (report_dir / "history.jsonl").write_text("".join(line + "\n" for line in new))


@pytest.fixture
def copy(estate, tmp_path) -> Path:
    """A copy of the estate's report directory to tamper with."""
    return copy_reports(estate["config"], tmp_path / "reports")


def test_a_whole_history_verifies_and_prints_its_head(estate, copy):
    result = verify(copy, "--public-key", estate["public"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 5 chained record(s), whole" in result.stdout
    head = json.loads(lines(copy)[-1])
    assert "drill: head " in result.stdout
    assert head["run"] == estate["runs"][-1]


def test_failed_runs_are_chained_and_signed_like_passed_ones(estate, copy):
    records = [json.loads(line) for line in lines(copy)]
    assert [r["verdict"] for r in records] == ["pass", "fail", "fail", "pass", "pass"]
    assert [r["chain"]["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["run"] for r in records] == estate["runs"]
    for before, record in itertools.pairwise(records):
        assert record["chain"]["prev_run"] == before["run"]
    for record in records:
        assert record["chain"]["signature"]
        assert len(record["chain"]["drill_json_sha256"]) == 64
        assert record["drills"]["config"]["verdict"] == record["verdict"]
    assert "truncated" in records[1]["drills"]["config"]["cause"]


def test_a_removed_record_is_named_with_its_run(estate, copy):
    history = lines(copy)
    write_lines(copy, history[:1] + history[2:])
    result = verify(copy, "--public-key", estate["public"])
    assert result.returncode == 1
    removed, after = estate["runs"][1], estate["runs"][2]
    assert f"removed: record 1 (the run before {after} was {removed})" in result.stdout
    assert f"run {removed}: its directory has no record in the history" in result.stdout


def test_an_altered_record_is_named(estate, copy):
    history = lines(copy)
    record = json.loads(history[1])
    record["verdict"] = "pass"  # a failed drill made to look passed
    record["drills"]["config"]["verdict"] = "pass"
    history[1] = json.dumps(record, separators=(",", ":"))
    write_lines(copy, history)
    result = verify(copy, "--public-key", estate["public"])
    assert result.returncode == 1
    name = f"record 1 (run {estate['runs'][1]}, pass, line 2)"
    assert f"{name}: altered: its signature does not match its content" in result.stdout
    assert f"altered: {name}: record 2 " in result.stdout


def test_reordered_records_are_named(estate, copy):
    history = lines(copy)
    history[2], history[3] = history[3], history[2]
    write_lines(copy, history)
    result = verify(copy, "--public-key", estate["public"])
    assert result.returncode == 1
    runs = estate["runs"]
    assert (
        f"reordered: record 2 (run {runs[2]}, fail, line 4) comes after record 3 "
        f"(run {runs[3]}, pass, line 3)" in result.stdout
    )


def test_a_missing_run_directory_is_named_and_its_record_stays(estate, copy):
    failed = estate["runs"][2]
    shutil.rmtree(copy / failed)
    result = verify(copy, "--public-key", estate["public"])
    assert result.returncode == 1
    assert f"run {failed}: its directory is missing (record 2 (run {failed}, fail" in (
        result.stdout
    )
    assert len(lines(copy)) == 5
    assert "BROKEN: 1 problem(s)" in result.stdout


def test_a_changed_drill_json_is_named(estate, copy):
    run = estate["runs"][3]
    document = copy / run / "drill.json"
    data = bytearray(document.read_bytes())
    data[-3] ^= 0x01
    document.write_bytes(bytes(data))
    result = verify(copy, "--public-key", estate["public"])
    assert result.returncode == 1
    assert f"run {run}: drill.json no longer matches its record (record 3" in result.stdout


def test_records_cut_from_the_end_are_named_by_their_directory_or_the_noted_head(estate, copy):
    whole = verify(copy, "--public-key", estate["public"])
    head = whole.stdout.split("drill: head ")[1].split()[0]
    write_lines(copy, lines(copy)[:-1])
    result = verify(copy, "--public-key", estate["public"])
    assert result.returncode == 1
    last = estate["runs"][-1]
    assert f"run {last}: its directory has no record in the history" in result.stdout
    # The directory gone too: only the head noted earlier shows the cut.
    shutil.rmtree(copy / last)
    assert verify(copy, "--public-key", estate["public"]).returncode == 0
    result = verify(copy, "--public-key", estate["public"], "--head", head)
    assert result.returncode == 1
    assert f"the record with hash {head} (a head noted earlier) is no longer" in result.stdout


def test_another_key_does_not_verify(estate, copy, tmp_path):
    other = tmp_path / "other.key"
    assert drill("keygen", str(other)).returncode == 0
    result = verify(copy, "--public-key", f"{other}.pub")
    assert result.returncode == 1
    assert "not by the given key" in result.stdout


def test_an_old_unchained_history_is_reported_and_the_chain_starts_after_it(tmp_path):
    config = config_estate(tmp_path, None)
    for _ in range(2):
        assert run_config(config)[0].returncode == 0
    reports = config.parent / "reports"
    # What an older version wrote: the same records without their chain.
    old = [json.loads(line) for line in lines(reports)]
    unchained = [{k: v for k, v in r.items() if k != "chain"} for r in old]
    write_lines(reports, [json.dumps(r, separators=(",", ":")) for r in unchained])
    result = verify(reports, "--allow-unsigned")
    assert result.returncode == 1
    assert "no chained record: the 2 record(s) were written before" in result.stdout
    assert "Traceback" not in result.stderr

    result, run_dir = run_config(config)
    assert result.returncode == 0
    document = json.loads((run_dir / "drill.json").read_text())
    assert [h["run"] for h in document["history"]] == [r["run"] for r in old] + [run_dir.name]
    assert last_drills(reports, ["config"])["config"].run == run_dir.name
    result = verify(reports, "--allow-unsigned")
    assert result.returncode == 0, result.stdout
    assert "note: 2 record(s) before the chain began" in result.stdout
    unsigned = verify(reports)
    assert unsigned.returncode == 1
    assert "1 record(s) not signed" in unsigned.stdout

    history = lines(reports)
    assert '"verdict":"pass"' in history[1]
    history[1] = history[1].replace('"verdict":"pass"', '"verdict":"fail"', 1)
    write_lines(reports, history)
    result = verify(reports, "--allow-unsigned")
    assert result.returncode == 1
    assert f"altered: line 2 (run {old[1]['run']}, before the chain began)" in result.stdout


def test_concurrent_runs_do_not_fork_the_chain(tmp_path, signer):
    config = config_estate(tmp_path, signer)
    argv = [sys.executable, "-m", "drills.cli", "run", "--config", str(config)]
    runs = [
        subprocess.Popen(
            [*argv, "--only", "config", "-q"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(4)
    ]
    assert [run.wait(timeout=300) for run in runs] == [0, 0, 0, 0]
    reports = config.parent / "reports"
    records = [json.loads(line) for line in lines(reports)]
    assert sorted(r["chain"]["seq"] for r in records) == [0, 1, 2, 3]
    result = verify(reports, "--public-key", f"{signer}.pub")
    assert result.returncode == 0, result.stdout


HANGS = """
import os
import time
from pathlib import Path

import pytest


@pytest.mark.drill("config")
def test_a_drill_that_hangs(drill):
    drill("config")
    Path(os.environ["HANGING"]).touch()
    time.sleep(120)
"""


def test_an_interrupted_run_is_chained_with_its_reason(tmp_path, signer):
    """A stand-in scenario that hangs, interrupted as Ctrl-C would: the real config drill
    ends within a second, too fast to interrupt at a chosen moment."""
    config = config_estate(tmp_path, signer)
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "test_hangs.py").write_text(HANGS)
    script = (
        "import sys; from pathlib import Path; from drills.commands.run import run; "
        "from drills.config import load_config; "
        f"sys.exit(run(load_config({str(config)!r}), {str(config)!r}, {{}}, only=['config'], "
        f"quiet=True, scenarios=Path({str(scenarios)!r})))"
    )
    hanging = tmp_path / "hanging"
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "HANGING": str(hanging)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not hanging.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 1, output
    assert "drill: the run did not complete (pytest exit 2)" in output
    reports = config.parent / "reports"
    record = json.loads(lines(reports)[-1])
    assert record["verdict"] == "incomplete"
    assert record["reason"] == "the run did not complete (pytest exit 2)"
    assert record["chain"]["signature"]
    assert run_config(config)[0].returncode == 0
    result = verify(reports, "--public-key", f"{signer}.pub")
    assert result.returncode == 0, result.stdout
    assert "OK: 2 chained record(s), whole" in result.stdout
