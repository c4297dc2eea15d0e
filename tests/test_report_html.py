"""The HTML drill report of real drill runs, read as a person and an auditor would.

A real "production" Postgres is filled, backed up by the real producers (database dump with
manifest, encrypted config archive) to file:// storage, and drilled by `drill run` three
times into one report directory: twice passing, then once more after a truncated dump
became the newest backup. Known secrets are planted where a user keeps them (the DSN's
password, the archive passphrase's environment variable, the archived .env file) and must
appear in no file the runs write.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drills.backup.common import destination
from drills.backup.config_archive import backup_config
from drills.backup.database import backup_database
from drills.config import load_config
from drills.config.clock import human
from drills.runtime.estate import APP_DIR, DATABASE, run_sql_file, write_config_files
from drills.runtime.postgres import start_postgres

ROOT = Path(__file__).resolve().parents[1]
DB_PASSWORD = "Pl4nted-db-pw-7Qx"
PASSPHRASE = "pl4nted-passphrase-K9"
PASSPHRASE_ENV = "DRILL_TEST_REPORT_PASSPHRASE"
ENV_SECRET = "pl4ntedEnvSecret3141"
SECRETS = (DB_PASSWORD, PASSPHRASE, ENV_SECRET)


def drill_run(config: Path, only: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`drill run` of this checkout; the outcome and the run directory."""
    result = subprocess.run(
        [sys.executable, "-m", "drills.cli", "run", "--config", str(config), "--only", only],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, PASSPHRASE_ENV: PASSPHRASE},
    )
    return result, (config.parent / "reports" / "latest").resolve()


@pytest.fixture(scope="module")
def estate(tmp_path_factory, run_session, postgres_image) -> dict:
    """Back up a real database and config files; drill them three times."""
    work = tmp_path_factory.mktemp("report-estate")
    pg = start_postgres(postgres_image, run_session, dbname=DATABASE, password=DB_PASSWORD)
    try:
        run_sql_file(pg, APP_DIR / "schema.sql", DATABASE)
        run_sql_file(pg, APP_DIR / "seed.sql", DATABASE, scale="1")
        configs = write_config_files(work / "config", ENV_SECRET)
        dsn = f"postgresql://{pg.user}:{DB_PASSWORD}@127.0.0.1:{pg.port}/{DATABASE}"
        config_path = work / "drill.toml"
        paths = ", ".join(f'"{p}"' for p in configs)
        config_path.write_text(
            f"""[estate]
name = "report-test estate"
[storage]
url = "file://{work / "backups"}"
[database]
name = "{DATABASE}"
dsn = "{dsn}"
checks = ["SELECT count(*) > 0 FROM users"]
[config]
paths = [{paths}]
passphrase_env = "{PASSPHRASE_ENV}"
required = [".env.production"]
[report]
dir = "{work / "reports"}"
"""
        )
        config = load_config(config_path)
        dump = backup_database(destination(config, "database"), DATABASE, dsn=dsn)
        backup_config(
            destination(config, "config"), [str(p) for p in configs], passphrase=PASSPHRASE
        )
    finally:
        pg.stop()
    outputs, runs = [], []
    for _ in range(2):
        result, run_dir = drill_run(config_path, "database,config,freshness")
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout + result.stderr)
        runs.append(run_dir)
    data = (work / "backups" / dump.key).read_bytes()
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    cut = work / "backups" / "database" / f"{DATABASE}_{stamp}.sql.gz"
    cut.write_bytes(data[: len(data) // 2])
    result, failing = drill_run(config_path, "database")
    assert result.returncode == 1, result.stdout + result.stderr
    outputs.append(result.stdout + result.stderr)
    return {"work": work, "passing": runs, "failing": failing, "outputs": outputs, "cut": cut}


def page(run_dir: Path) -> str:
    """The report of a run."""
    return (run_dir / "drill-report.html").read_text()


def text_of(run_dir: Path) -> str:
    """The report's markup with entities decoded, to find values as drill.json holds them."""
    return html.unescape(page(run_dir))


def record(run_dir: Path, kind: str | None = None) -> dict:
    """drill.json, or one drill's entry in it."""
    document = json.loads((run_dir / "drill.json").read_text())
    if kind is None:
        return document
    return next(d for d in document["drills"] if d["kind"] == kind)


def section(markup: str, ident: str) -> str:
    """The markup of `<section id=ident>`."""
    start = markup.index(f'id="{ident}"')
    return markup[start : markup.index("</section>", start)]


def test_banner_says_pass_with_estate_time_duration_host_and_version(estate):
    run_dir = estate["passing"][-1]
    document = record(run_dir)
    banner = html.unescape(page(run_dir).split('id="verdict"')[1].split("</header>")[0])
    assert "PASS: recovery drill of report-test estate" in banner
    assert document["host"] in banner
    assert f"recovery-drills {document['harness_version']}" in banner
    started = datetime.fromisoformat(document["run"]["started_at"])
    assert started.strftime("%Y-%m-%d %H:%M:%S UTC") in banner
    assert re.search(r"<dt>Took</dt><dd>\d+(\.\d)? s</dd>", banner), banner
    assert "UNSIGNED" in banner


def test_rto_and_rpo_table_shows_target_measured_margin_and_meaning(estate):
    run_dir = estate["passing"][-1]
    database = record(run_dir, "database")
    table = html.unescape(section(page(run_dir), "targets"))
    rows = table[table.index('href="#drill-database"') :]
    rto = re.search(r"<th>RTO</th>(.*?)</tr>", rows, re.S).group(1)
    assert "2h 00m" in rto
    assert human(database["rto"]["measured_s"]) in rto
    assert "to spare" in rto
    assert "met: " in rto
    assert 'class="ok"' in table
    for kind in ("database", "config", "freshness"):
        assert f'href="#drill-{kind}"' in table


def test_phase_timeline_is_drawn_to_scale(estate):
    run_dir = estate["passing"][-1]
    phases = record(run_dir, "database")["phases"]
    drill = section(page(run_dir), "drill-database")
    svg = drill[drill.index("<svg") : drill.index("</svg>")]
    widths = {
        name: float(width)
        for width, name in re.findall(r'<rect [^>]*width="([\d.]+)"[^>]*class="ph ph-(\w+)"', svg)
    }
    assert {"locate", "provision", "restore", "validate"} <= set(widths)
    # Pixels per second are the same for every phase wide enough to escape the minimum width.
    scales = [widths[name] / s for name, s in phases.items() if widths.get(name, 0) > 5]
    assert len(scales) >= 2
    assert max(scales) / min(scales) < 1.02


def test_backups_used_show_key_size_time_age_sha256_and_manifest(estate):
    run_dir = estate["passing"][-1]
    database = record(run_dir, "database")
    backup = database["backup"]
    drill = html.unescape(section(page(run_dir), "drill-database"))
    assert backup["key"] in drill
    assert backup["manifest"] in drill
    assert backup["sha256"] in drill
    assert "the bytes read during the restore match it" in drill
    assert "from the manifest's start time" in drill
    assert "A manifest was found" in drill
    assert re.search(r"<th>Age at drill start</th><td>\d", drill)
    config = html.unescape(section(page(run_dir), "drill-config"))
    assert "encrypted" in config


def test_every_check_is_shown_with_its_evidence(estate):
    run_dir = estate["passing"][-1]
    text = text_of(run_dir)
    checks = [c for d in record(run_dir)["drills"] for c in d["checks"]]
    assert len(checks) >= 8
    for check in checks:
        assert check["name"] in text
        assert check["detail"] in text


def test_environment_names_images_versions_tools_and_storage(estate):
    run_dir = estate["passing"][-1]
    database = record(run_dir, "database")
    container = next(c for c in database["containers"] if c["role"] == "postgres")
    text = text_of(run_dir)
    assert container["image_id"].startswith("sha256:")
    assert container["image_id"] in text
    assert f"PostgreSQL {database['restore_target']['version']}" in text
    assert any(line.startswith("pg_restore (PostgreSQL)") for line in container["tools"])
    environment = html.unescape(section(page(run_dir), "environment"))
    assert f"file://{estate['work'] / 'backups'}" in environment
    assert "pg_dump (PostgreSQL)" in environment


def test_history_chart_grows_with_the_runs(estate):
    first, second = estate["passing"]
    history = (first.parent / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["run"] for line in history] == [
        first.name,
        second.name,
        estate["failing"].name,
    ]
    assert "database (1 run)" in section(page(first), "history")
    later = section(page(second), "history")
    assert "database (2 runs)" in later
    assert '<polyline points="' in later
    assert 'class="target"' in later
    assert "% of the 2h 00m target" in later
    # The failing run's chart marks it in red.
    assert 'class="dot-fail"' in section(page(estate["failing"]), "history")


def test_reports_load_nothing_from_outside(estate):
    for run_dir in [*estate["passing"], estate["failing"]]:
        markup = page(run_dir)
        assert "default-src 'none'" in markup
        for forbidden in ("<script", "src=", "<link", "url(", "@import", "<img", "<iframe"):
            assert forbidden not in markup, (run_dir, forbidden)
        # This estate names no URL: any http in the page would be a resource or a leak.
        assert not re.search(r"https?:", markup)
        assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', markup))


def test_failing_drill_shows_its_cause_and_the_containers_logs(estate):
    run_dir = estate["failing"]
    database = record(run_dir, "database")
    assert database["verdict"] == "fail"
    assert "ends early" in database["error"]
    markup = page(run_dir)
    assert "FAIL: recovery drill of report-test estate" in markup
    failures = html.unescape(section(markup, "failures"))
    assert database["error"] in failures
    assert "Last lines of the log of the <strong>db</strong> container" in failures
    assert database["logs"], "the restore container's log tail is in drill.json"
    tail = next(iter(database["logs"].values())).splitlines()[-1]
    assert tail in failures
    drill = html.unescape(section(markup, "drill-database"))
    assert estate["cut"].name in drill
    assert "No manifest: integrity rests on the compressor's end-of-stream check" in drill


def test_planted_secrets_appear_in_no_generated_file(estate):
    reports = estate["work"] / "reports"
    files = [p for p in reports.rglob("*") if p.is_file()]
    assert len(files) > 20  # every run's JSON, HTML, JUnit, pytest-html and Allure files
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} in {path}"
    for output in estate["outputs"]:
        for secret in SECRETS:
            assert secret not in output


def test_report_regenerates_from_drill_json(estate, tmp_path):
    run_dir = estate["passing"][0]
    copy = tmp_path / "copy.html"
    result = subprocess.run(
        [sys.executable, "-m", "drills.cli", "report", str(run_dir), "-o", str(copy)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert copy.read_text() == page(run_dir)
