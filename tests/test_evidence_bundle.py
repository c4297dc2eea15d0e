"""A year of drills as one evidence bundle, as an auditor receives and checks it.

How the year is made, and why: a drill run names its directory and its times after the
clock, so a year of runs cannot be run in a test's time. Two real `drill run --only config`
runs of a small estate (tests/evidence_estate.py), one passing and one failing on a
truncated backup, give real drill.json documents; each past run is one of them with its
times moved into the past (run start, drill start, finish, the backup's time and so its
age, the RPO), written into a run directory named after its past start, and finished by the
real `drills.report.finalize_run` (HTML report, scrub, seal, signature, chained record).
The bundle is then built and checked by the real `drill evidence` and `drill verify-report`.

The year: 2025, two runs a month (the 5th and the 20th) except August (a gap), three failed
runs (two followed up by a pass, one at the window's end that is not), and one run on each
side of the window that the bundle must leave out.
"""

from __future__ import annotations

import io
import json
import shutil
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drills.config import load_config
from drills.report import bundle, finalize_run, record_incomplete
from tests import evidence_estate
from tests.browser import HEIGHT, WIDTH, assert_a4, console_errors, open_page, png_size, requested
from tests.evidence_estate import break_newest, config_estate, run_config
from tests.test_evidence import drill

signer = evidence_estate.signer  # the fixture, shared with the chain's tests

WINDOW = ("2025-01-01", "2025-12-31")
FAILED = {(2025, 3, 5), (2025, 6, 20), (2025, 12, 20)}
INTERRUPTED = datetime(2025, 9, 12, 2, tzinfo=UTC)
OUTSIDE = [datetime(2024, 12, 20, 2, tzinfo=UTC), datetime(2026, 1, 5, 2, tzinfo=UTC)]
# The keys finalize_run adds; a document as pytest wrote it has none of them.
FINALIZED = ("estate", "run", "environment", "evidence", "history", "notifications", "artefacts")


def year() -> list[datetime]:
    """The start of every run in the window, oldest first."""
    return [
        datetime(2025, month, day, 2, tzinfo=UTC)
        for month in range(1, 13)
        if month != 8
        for day in (5, 20)
    ]


def retimed(document: dict, started: datetime) -> dict:
    """A real drill.json as pytest wrote it, moved to `started`."""
    taken = started - timedelta(hours=6)
    text = json.dumps({k: v for k, v in document.items() if k not in FINALIZED})
    for result in document["drills"]:
        # The backup's name, wherever it is said (the cause of a failure names it too).
        text = text.replace(result["backup"]["key"], f"config/config_{taken:%Y%m%d_%H%M%S}.tar.gz")
    moved = json.loads(text)
    moved["finished_at"] = (started + timedelta(seconds=1)).isoformat()
    for result in moved["drills"]:
        result["started_at"] = started.isoformat()
        result["backup"]["taken_at"] = taken.isoformat()
        result["rpo"]["measured_s"] = (started - taken).total_seconds()
    return moved


@pytest.fixture(scope="module")
def templates(tmp_path_factory, signer) -> dict[str, dict]:
    """A passing and a failing drill.json of real runs."""
    config = config_estate(tmp_path_factory.mktemp("templates"), signer)
    found = {}
    for verdict in ("pass", "fail"):
        if verdict == "fail":
            break_newest(config)
        result, run_dir = run_config(config)
        assert result.returncode == (0 if verdict == "pass" else 1), result.stdout
        found[verdict] = json.loads((run_dir / "drill.json").read_text())
    return found


@pytest.fixture(scope="module")
def estate(tmp_path_factory, signer, templates) -> dict:
    """The year's runs in a report directory, and its bundle built by `drill evidence`."""
    config = config_estate(tmp_path_factory.mktemp("year"), signer, name="audited")
    settings = load_config(config)
    reports = config.parent / "reports"
    reports.mkdir()
    runs = []
    for started in sorted([*year(), *OUTSIDE]):
        verdict = "fail" if (started.year, started.month, started.day) in FAILED else "pass"
        run_dir = reports / started.strftime("%Y%m%dT%H%M%S.%fZ")
        run_dir.mkdir()
        document = retimed(templates[verdict], started)
        (run_dir / "drill.json").write_text(json.dumps(document, indent=2) + "\n")
        finalize_run(run_dir, settings)
        runs.append(run_dir.name)
    # A run interrupted before its drills wrote anything: recorded as `drill run` records it.
    interrupted = reports / INTERRUPTED.strftime("%Y%m%dT%H%M%S.%fZ")
    interrupted.mkdir()
    record_incomplete(interrupted, settings, "the run did not complete (pytest exit 2)")
    out = config.parent / "bundle.zip"
    began = time.monotonic()
    result = drill("evidence", "--config", str(config), "--since", WINDOW[0], "--until",
                   WINDOW[1], "--out", str(out))  # fmt: skip
    took = time.monotonic() - began
    assert result.returncode == 0, result.stdout + result.stderr
    # Measured, not asserted (speed belongs in bench/): printed for the record with -s.
    print(f"\na year ({len(year())} runs, 1 interrupted): drill evidence took {took:.2f} s")
    return {"config": config, "bundle": out, "runs": runs, "public": Path(f"{signer}.pub")}


def members(path: Path) -> dict[str, bytes]:
    """The files of a bundle."""
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_a_year_of_runs_becomes_a_bundle_that_verifies_offline(estate, tmp_path):
    # Nothing but the bundle and the public key, in a directory of their own.
    alone = tmp_path / "auditor"
    alone.mkdir()
    shutil.copy(estate["bundle"], alone / "bundle.zip")
    shutil.copy(estate["public"], alone / "signer.pub")
    result = drill("verify-report", str(alone / "bundle.zip"), "--public-key",
                   str(alone / "signer.pub"))  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(year()) + 1} run(s)" in result.stdout  # and the interrupted one
    assert "each verified, and their chain excerpt whole" in result.stdout


def test_the_bundle_holds_every_run_of_the_window_and_only_those(estate):
    files = members(estate["bundle"])
    runs = {name.split("/")[1] for name in files if name.startswith("runs/")}
    inside = {s.strftime("%Y%m%dT%H%M%S.%fZ") for s in year()}
    assert runs == inside
    for run in runs:
        for name in ("drill.json", "drill.json.sig", "drill-report.html"):
            assert f"runs/{run}/{name}" in files
    # The excerpt: the window's records and one on each side, whose links it checks.
    # The interrupted run, recorded last, is in it with the last of the outside runs before it.
    excerpt = [json.loads(line) for line in files["chain/history.jsonl"].splitlines()]
    assert len(excerpt) == len(year()) + 3
    assert excerpt[0]["started_at"].startswith("2024-12-20")
    assert excerpt[-2]["started_at"].startswith("2026-01-05")
    assert excerpt[-1]["verdict"] == "incomplete"
    verification = json.loads(files["chain/verification.json"])
    assert verification["whole"] is True
    assert verification["problems"] == []
    assert files["public-key.pem"] == estate["public"].read_bytes()


def test_the_summary_shows_months_failures_follow_ups_gaps_retention_and_controls(estate):
    page = members(estate["bundle"])["summary.html"].decode()
    assert "Recovery evidence of audited" in page
    assert "The history of these runs is whole" in page
    assert "2 pass</td>" in page  # a month of two passing drills
    assert "1 pass, 1 fail</td>" in page
    assert "<strong>19 pass, 3 fail</strong>" in page
    assert "<strong>config</strong>: no drill in 2025-08" in page
    assert page.count("the archive is corrupt or truncated") == 3
    assert "config/config_20250304_200000.tar.gz: the archive is corrupt" in page
    # March's failure was followed up on the 20th, 15 days later; December's was not.
    assert "2025-03-20 02:00:00 UTC (15d 00h later)" in page
    assert "none in the window: not followed up" in page
    assert '(<span class="mono">20250912T020000.000000Z</span>): the run did not complete' in page
    assert "config/config_20250104_200000.tar.gz" in page  # the oldest backup drilled
    # The newest restored: December 5th's (the drill of the 20th failed, restoring nothing).
    assert '<br><span class="mono">config/config_20251204_200000.tar.gz</span></td></tr>' in page
    for control in ("A.8.13", "A.5.30", "A1.2", "A1.3", "SP 800-34", "PCI DSS", "HIPAA"):
        assert control in page
    assert "not a claim of compliance" in page
    assert page.count("<svg") == 2  # RTO and RPO of the config drill


def test_a_changed_byte_in_any_file_of_the_bundle_is_named(estate, tmp_path):
    files = members(estate["bundle"])
    assert bundle.verify(estate["bundle"], estate["public"]).problems == []
    unnamed = []
    for name, data in files.items():
        changed = bytearray(data)
        changed[len(changed) // 2] ^= 0x01
        target = tmp_path / "changed.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for other, content in files.items():
                archive.writestr(other, bytes(changed) if other == name else content)
        problems = bundle.verify(target, estate["public"]).problems
        if not any(p.startswith(name) or f" {name} " in p for p in problems):
            unnamed.append((name, problems))
    assert unnamed == []


def test_a_flipped_byte_in_the_zip_file_names_its_member(estate, tmp_path):
    raw = estate["bundle"].read_bytes()
    with zipfile.ZipFile(estate["bundle"]) as archive:
        infos = archive.infolist()
    unnamed = []
    for info in infos:
        # The member's data starts after its local header (30 bytes, the name, the extra).
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        changed = bytearray(raw)
        changed[start + info.compress_size // 2] ^= 0x01
        target = tmp_path / "flipped.zip"
        target.write_bytes(bytes(changed))
        problems = bundle.verify(target, estate["public"]).problems
        if not any(info.filename in p for p in problems):
            unnamed.append((info.filename, problems))
    assert unnamed == []


def test_the_command_names_the_changed_file_and_exits_1(estate, tmp_path):
    files = members(estate["bundle"])
    run = sorted(n for n in files if n.endswith("/drill-report.html"))[3]
    target = tmp_path / "bundle.zip"
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content.replace(b"PASS", b"FAIL") if name == run else content)
    result = drill("verify-report", str(target), "--public-key", str(estate["public"]))
    assert result.returncode == 1
    assert f"{target}: {run}: sha256 differs from MANIFEST.json's" in result.stderr


def test_another_public_key_does_not_verify_the_bundle(estate, tmp_path):
    other = tmp_path / "other.key"
    assert drill("keygen", str(other)).returncode == 0
    result = drill("verify-report", str(estate["bundle"]), "--public-key", f"{other}.pub")
    assert result.returncode == 1
    assert "MANIFEST.json: signed by key" in result.stderr


def test_a_broken_history_makes_a_bundle_that_says_so(estate, tmp_path):
    reports = Path(shutil.copytree(estate["config"].parent / "reports", tmp_path / "reports"))
    history = (reports / "history.jsonl").read_text().splitlines()
    removed = json.loads(history[5])["run"]  # a run of March 2025
    del history[5]
    (reports / "history.jsonl").write_text("".join(line + "\n" for line in history))
    out = tmp_path / "broken.zip"
    result = drill("evidence", str(reports), "--config", str(estate["config"]), "--since",
                   WINDOW[0], "--until", WINDOW[1], "--out", str(out))  # fmt: skip
    assert result.returncode == 1
    assert f"run {removed}: its directory has no record in the history" in result.stdout
    assert "BROKEN" in result.stdout
    check = drill("verify-report", str(out), "--public-key", str(estate["public"]))
    assert check.returncode == 1
    assert (
        "chain/verification.json: when the bundle was built: removed: record 5 (the run before "
        f"{json.loads(history[5])['run']} was {removed}) is missing" in check.stderr
    )
    assert "THE HISTORY IS BROKEN" in members(out)["summary.html"].decode()


# What a reader sees of the summary page.
LAYOUT = """
(() => {
  const box = (selector) => {
    const node = document.querySelector(selector);
    if (!node) return null;
    const r = node.getBoundingClientRect();
    return {width: r.width, height: r.height, top: r.top, text: node.innerText || ""};
  };
  return {banner: box("#verdict"), months: box("#months table"), chart: box("#targets svg"),
          failures: box("#failures table"), controls: box("#controls table")};
})()
"""


@pytest.fixture(scope="module")
def page(estate, tmp_path_factory) -> dict:
    """The summary page, taken out of the bundle and opened in headless Chromium."""
    where = tmp_path_factory.mktemp("summary")
    with zipfile.ZipFile(io.BytesIO(estate["bundle"].read_bytes())) as archive:
        archive.extract("summary.html", where)
    loaded = open_page(where / "summary.html", tmp_path_factory.mktemp("profile"), LAYOUT)
    screenshot = estate["bundle"].with_name("evidence-summary.png")
    screenshot.write_bytes(loaded["png"])
    print(f"\nscreenshot of the summary page: {screenshot}")
    return loaded


def test_summary_page_loads_with_no_request_and_prints_on_a4(page):
    assert console_errors(page["events"]) == []
    assert requested(page["events"]) == [page["url"]]
    assert_a4(page["pdf"], min_pages=2)
    assert png_size(page["png"]) == (WIDTH, HEIGHT)


def test_summary_page_shows_its_verdict_months_charts_failures_and_controls(page):
    layout = page["layout"]
    for part in ("banner", "months", "chart", "failures", "controls"):
        assert layout[part] is not None, part
        assert layout[part]["width"] > 300, (part, layout[part])
        assert layout[part]["height"] > 20, (part, layout[part])
    assert layout["banner"]["top"] < 100
    assert layout["banner"]["text"].startswith("Recovery evidence of audited")
    assert "2025-08" in layout["months"]["text"]


def test_a_lost_run_directory_keeps_its_record_in_the_bundle(estate, tmp_path):
    reports = Path(shutil.copytree(estate["config"].parent / "reports", tmp_path / "reports"))
    lost = "20250620T020000.000000Z"  # a failed run
    shutil.rmtree(reports / lost)
    out = tmp_path / "lost.zip"
    result = drill("evidence", str(reports), "--config", str(estate["config"]), "--since",
                   WINDOW[0], "--until", WINDOW[1], "--out", str(out))  # fmt: skip
    assert result.returncode == 1
    assert f"drill: run {lost}: its directory is missing; its record is in the bundle" in (
        result.stdout
    )
    files = members(out)
    assert not any(name.startswith(f"runs/{lost}/") for name in files)
    assert lost in files["chain/history.jsonl"].decode()
    check = drill("verify-report", str(out), "--public-key", str(estate["public"]))
    assert check.returncode == 1
    assert f"runs/{lost}/: missing; record " in check.stderr
    assert f"(run {lost}, fail, line " in check.stderr
