"""`drill init`, as a user runs it: it looks at a storage in the original runbook's layout or
the producers', writes a commented drill.toml that the project's own loader reads, CI files
for a monthly drill with a manual trigger, a systemd timer and a cron line, and an example
check; it never overwrites a file without --force. Then `drill run` on the configuration it
wrote, against the store it came from, passes: one runbook-layout store (file://) and one
producer-layout store (s3://, the embedded server)."""

from __future__ import annotations

import ast
import configparser
import gzip
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from drills.config import load_config
from fixtures.estate_backups import (
    DB,
    gpg_symmetric,
    put_config_archive,
    put_database_dump,
    put_files_snapshot,
    stamp,
    tar_gz,
    uploads,
)

DRILL = str(Path(sys.executable).parent / "drill")
PASSPHRASE = "init passphrase"
CONFIG_MEMBERS = {".env.production": b"SECRET_KEY=x\n", "nginx/site.conf": b"server {}\n"}
GENERATED = (
    ".github/workflows/recovery-drill.yml",
    ".gitlab/recovery-drill.yml",
    "schedule/recovery-drill.service",
    "schedule/recovery-drill.timer",
    "schedule/recovery-drill.cron",
    "drills/test_custom_example.py",
)


@pytest.fixture(autouse=True)
def _no_config_from_the_environment(monkeypatch):
    for name in ("DRILL_CONFIG", "DRILL_STORAGE_URL", "DRILL_STORAGE_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def drill(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    """The installed `drill` command, run from `cwd` as a user would."""
    return subprocess.run(
        [DRILL, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def runbook_store(root: Path, dump: bytes, *, age: timedelta = timedelta(minutes=3)) -> None:
    """What the runbook's bash scripts leave in a directory: `pg_dump | gzip` under
    database/, its gpg copy under encrypted/, rsync snapshots with files/current pointing at
    the newest, a config tar.gz; no manifest anywhere."""
    name = f"{DB}_{stamp(age)}.sql.gz"
    (root / "database").mkdir(parents=True)
    (root / "database" / name).write_bytes(dump)
    (root / "encrypted").mkdir()
    (root / "encrypted" / f"{name}.gpg").write_bytes(gpg_symmetric(dump, PASSPHRASE))
    for days, files in ((1, uploads(5, seed=3)), (0, uploads())):
        snapshot = root / "files" / stamp(age + timedelta(days=days))
        for path, data in files.items():
            (snapshot / path).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / path).write_bytes(data)
    (root / "files" / "current").symlink_to(snapshot.name)
    (root / "config").mkdir()
    (root / "config" / f"config_{stamp(age)}.tar.gz").write_bytes(tar_gz(CONFIG_MEMBERS))


def prose(text: str) -> str:
    """The comments of a file as one line of text (however they were wrapped)."""
    return " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))


def init(tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    """`drill init ARGS` in a fresh project directory; (result, the directory)."""
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    return drill("init", *args, cwd=project, env=env), project


# -- the files it writes, without a drill


def test_runbook_layout_is_recognised_and_the_config_loads(tmp_path):
    store = tmp_path / "backups"
    runbook_store(store, gzip.compress(b"-- an empty dump\n"))
    result, project = init(tmp_path, "--storage", store.as_uri())
    assert result.returncode == 0, result.stderr
    assert "runbook layout" in result.stdout
    text = prose((project / "drill.toml").read_text())
    assert "the original runbook's layout (no manifests)" in text
    # The newest backup of each kind, as a comment: key, time, age.
    assert f"Newest: database/{DB}_" in text
    assert "(name), 3m" in text
    assert "encrypted/" in text
    assert "Also found: database backups under encrypted/" in text
    assert "FILL IN" in text

    config = load_config(project / "drill.toml", env={})
    assert config.configured_drills() == ["database", "files", "config", "freshness"]
    assert config.database.name == DB
    assert config.database.passphrase_env is None  # database/ holds the plain dump
    assert (config.database.format, config.database.compression) == ("plain", "gzip")
    assert config.storage.url == store.as_uri()
    assert config.storage.prefixes.database == "database/"
    assert config.targets.rpo.database == 3600
    assert config.targets.rto.files == 4 * 3600
    for rel in GENERATED:
        assert (project / rel).is_file(), rel


def test_only_the_runbooks_encrypted_copies_need_a_passphrase_variable(tmp_path):
    store = tmp_path / "backups"
    (store / "encrypted").mkdir(parents=True)
    name = f"{DB}_{stamp(timedelta(hours=2))}.sql.gz.gpg"
    (store / "encrypted" / name).write_bytes(gpg_symmetric(gzip.compress(b"--\n"), PASSPHRASE))
    result, project = init(tmp_path, "--storage", store.as_uri())
    assert result.returncode == 0, result.stderr
    config = load_config(project / "drill.toml", env={})
    assert config.configured_drills() == ["database", "freshness"]
    assert config.storage.prefixes.database == "encrypted/"
    assert config.database.passphrase_env == "BACKUP_PASSPHRASE"
    text = prose((project / "drill.toml").read_text())
    assert "database: the newest is 2h 00m old (OLDER: a drill fails until this is met)" in text
    workflow = yaml.safe_load((project / GENERATED[0]).read_text())
    step = _drill_step(workflow)
    assert step["env"]["BACKUP_PASSPHRASE"] == "${{ secrets.BACKUP_PASSPHRASE }}"


def test_ci_files_schedule_a_monthly_drill_with_a_manual_trigger(tmp_path):
    store = tmp_path / "backups"
    runbook_store(store, gzip.compress(b"--\n"))
    result, project = init(tmp_path, "--storage", store.as_uri())
    assert result.returncode == 0, result.stderr
    report_dir = load_config(project / "drill.toml", env={}).report.dir

    github = yaml.safe_load((project / ".github/workflows/recovery-drill.yml").read_text())
    triggers = github[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["schedule"] == [{"cron": "0 6 1 * *"}]
    assert "workflow_dispatch" in triggers
    assert _drill_step(github)["run"] == "drill run --config drill.toml"
    upload = next(s for s in _steps(github) if s.get("uses", "").startswith("actions/upload"))
    assert upload["if"] == "always()"
    assert upload["with"]["path"] == f"{report_dir}/"

    gitlab = yaml.safe_load((project / ".gitlab/recovery-drill.yml").read_text())
    job = gitlab["recovery-drill"]
    assert [r["if"] for r in job["rules"]] == [
        '$CI_PIPELINE_SOURCE == "schedule"',
        '$CI_PIPELINE_SOURCE == "web"',
    ]
    assert job["script"][-1].endswith("drill run --config drill.toml")
    assert job["artifacts"] == {
        "when": "always",
        "paths": [f"{report_dir}/"],
        "expire_in": "1 year",
    }
    assert "0 6 1 * *" in (project / ".gitlab/recovery-drill.yml").read_text()


def test_systemd_timer_and_cron_line_run_the_drill_monthly(tmp_path):
    store = tmp_path / "backups"
    runbook_store(store, gzip.compress(b"--\n"))
    result, project = init(tmp_path, "--storage", store.as_uri())
    assert result.returncode == 0, result.stderr
    config = project / "drill.toml"

    service = _unit(project / "schedule/recovery-drill.service")
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["WorkingDirectory"] == str(project)
    assert service["Service"]["ExecStart"] == f"{DRILL} run --config {config} -q"
    timer = _unit(project / "schedule/recovery-drill.timer")
    assert timer["Timer"]["OnCalendar"] == "*-*-01 06:00:00"
    assert timer["Timer"]["Unit"] == "recovery-drill.service"
    assert timer["Install"]["WantedBy"] == "timers.target"

    lines = (project / "schedule/recovery-drill.cron").read_text().splitlines()
    entries = [line for line in lines if line and not line.startswith(("#", "SHELL", "PATH"))]
    entry, draw = entries  # the newest backup in odd months, a random one in even months
    assert entry.split()[:5] == ["0", "6", "1", "1,3,5,7,9,11", "*"]
    assert f"{DRILL} run --config {config} -q >" in entry
    assert draw.split()[:5] == ["0", "6", "1", "2,4,6,8,10,12", "*"]
    assert f"{DRILL} run --config {config} -q --pick random >" in draw

    # The cron line as cron runs it, with a `drill` that fails: its output is printed (cron
    # mails it); one that passes prints nothing.
    fake = tmp_path / "fake-drill"
    for code, expected in ((1, "drill: FAIL\n"), (0, "")):
        fake.write_text(f"#!/bin/sh\necho drill: {'FAIL' if code else 'PASS'}\nexit {code}\n")
        fake.chmod(0o755)
        command = " ".join(entry.split()[5:]).replace(DRILL, str(fake))
        ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
        assert ran.stdout == expected


def test_the_example_check_runs_with_the_drill_on_its_restore(tmp_path, estate_dump):
    """The project `drill init` writes drills a real dump: its example check (a plain pytest
    test asking for `restored_database`) runs on the drill's restore and is one of the
    database drill's checks."""
    store = tmp_path / "backups"
    runbook_store(store, estate_dump.data)
    result, project = init(tmp_path, "--storage", store.as_uri())
    assert result.returncode == 0, result.stderr
    source = (project / "drills/test_custom_example.py").read_text()
    tests = [
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]
    assert [[a.arg for a in t.args.args] for t in tests] == [["restored_database"]]
    ran = drill("run", "--only", "database", cwd=project, timeout=600)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-3000:]
    document = json.loads((project / "reports" / "latest" / "drill.json").read_text())
    database = next(d for d in document["drills"] if d["kind"] == "database")
    checks = {c["name"]: c["passed"] for c in database["checks"]}
    assert checks[f"team check {tests[0].name}"] is True


def test_never_overwrites_without_force(tmp_path):
    store = tmp_path / "backups"
    runbook_store(store, gzip.compress(b"--\n"))
    project = tmp_path / "project"
    project.mkdir()
    (project / "drill.toml").write_text("# mine\n")
    result, _ = init(tmp_path, "--storage", store.as_uri())
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "drill.toml" in result.stderr
    assert "--force" in result.stderr
    assert (project / "drill.toml").read_text() == "# mine\n"
    assert not (project / ".github").exists()

    result, _ = init(tmp_path, "--storage", store.as_uri(), "--force")
    assert result.returncode == 0, result.stderr
    assert (project / "drill.toml").read_text() != "# mine\n"

    result, _ = init(tmp_path, "--storage", store.as_uri())  # the CI files exist now too
    assert result.returncode == 2
    assert ".github/workflows/recovery-drill.yml" in result.stderr


def test_output_and_dir_options(tmp_path):
    store = tmp_path / "backups"
    runbook_store(store, gzip.compress(b"--\n"))
    project = tmp_path / "elsewhere"
    result, cwd = init(tmp_path, "--storage", store.as_uri(), "--dir", str(project), "--output",
                       str(project / "ops" / "drills.toml"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not (cwd / "drill.toml").exists()
    assert load_config(project / "ops" / "drills.toml", env={}).database.name == DB
    github = yaml.safe_load((project / ".github/workflows/recovery-drill.yml").read_text())
    assert _drill_step(github)["run"] == "drill run --config ops/drills.toml"


def test_a_storage_without_backups_writes_nothing(tmp_path):
    store = tmp_path / "backups"
    (store / "database").mkdir(parents=True)
    (store / "database" / "notes.txt").write_text("not a dump")
    result, project = init(tmp_path, "--storage", store.as_uri())
    assert result.returncode == 1
    assert f"no backups recognised under {store.as_uri()}" in result.stderr
    assert list(project.iterdir()) == []

    result, _ = init(tmp_path, env={"DRILL_STORAGE_URL": ""})
    assert result.returncode == 2
    assert "--storage" in result.stderr


def test_the_runbooks_s3_mirror_is_found_as_the_files_backup(tmp_path, s3_bucket, embedded_s3):
    for path, data in uploads().items():  # what `aws s3 sync current/ s3://b/files/` leaves
        s3_bucket.put_bytes(f"files/{path}", data)
    env = {
        "AWS_ACCESS_KEY_ID": embedded_s3.access_key_id,
        "AWS_SECRET_ACCESS_KEY": embedded_s3.secret_access_key,
        "AWS_DEFAULT_REGION": embedded_s3.region,
        "DRILL_STORAGE_ENDPOINT_URL": embedded_s3.endpoint_url,
    }
    result, project = init(tmp_path, "--storage", s3_bucket.url, env=env)
    assert result.returncode == 0, result.stderr
    text = prose((project / "drill.toml").read_text())
    assert "Newest: files/, taken" in text
    assert "(newest LastModified)" in text
    config = load_config(project / "drill.toml", env={})
    assert config.configured_drills() == ["files", "freshness"]
    assert config.storage.endpoint_url == embedded_s3.endpoint_url


# -- `drill run` on what it wrote


def _run(project: Path, env: dict[str, str] | None = None) -> dict:
    result = drill("run", "--config", "drill.toml", "-q", cwd=project, env=env, timeout=600)
    document = project / "reports" / "latest" / "drill.json"
    output = result.stdout + result.stderr
    assert document.exists(), f"no drill.json (exit {result.returncode}):\n{output[-4000:]}"
    assert result.returncode == 0, output[-4000:]
    return json.loads(document.read_text())


def test_drill_run_passes_on_the_runbook_store_it_was_written_for(tmp_path, estate_dump):
    store = tmp_path / "backups"
    runbook_store(store, estate_dump.data)
    result, project = init(tmp_path, "--storage", store.as_uri())
    assert result.returncode == 0, result.stderr
    document = _run(project)
    verdicts = {d["kind"]: d["verdict"] for d in document["drills"]}
    assert verdicts == dict.fromkeys(["database", "files", "config", "freshness"], "pass")
    drills = {d["kind"]: d for d in document["drills"]}
    assert drills["database"]["backup"]["key"].startswith(f"database/{DB}_")
    assert drills["files"]["restore"]["files"] == len(uploads())


def test_drill_run_passes_on_the_producer_store_it_was_written_for(
    tmp_path, estate_dump, s3_bucket, embedded_s3
):
    database = put_database_dump(s3_bucket, estate_dump)
    put_files_snapshot(s3_bucket, uploads(), age=timedelta(minutes=7))
    put_config_archive(s3_bucket, CONFIG_MEMBERS, passphrase=PASSPHRASE)
    env = {
        "AWS_ACCESS_KEY_ID": embedded_s3.access_key_id,
        "AWS_SECRET_ACCESS_KEY": embedded_s3.secret_access_key,
        "AWS_DEFAULT_REGION": embedded_s3.region,
    }
    result, project = init(
        tmp_path, "--storage", s3_bucket.url, "--endpoint-url", embedded_s3.endpoint_url, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "producer layout" in result.stdout
    text = prose((project / "drill.toml").read_text())
    assert "the producers' layout (backups with manifests)" in text
    assert f"Newest: {database}, taken" in text
    raw = (project / "drill.toml").read_text()
    assert '    # "SELECT count(*) > 0 FROM public.' in raw  # suggested from the manifest's tables
    assert "The newest archive holds: .env.production, nginx/site.conf." in text
    config = load_config(project / "drill.toml", env={})
    assert config.config.passphrase_env == "BACKUP_PASSPHRASE"

    document = _run(project, env={**env, "BACKUP_PASSPHRASE": PASSPHRASE})
    verdicts = {d["kind"]: d["verdict"] for d in document["drills"]}
    assert verdicts == dict.fromkeys(["database", "files", "config", "freshness"], "pass")
    taken = datetime.fromisoformat(
        next(d for d in document["drills"] if d["kind"] == "database")["backup"]["taken_at"]
    )
    assert datetime.now(UTC) - taken < timedelta(minutes=30)


def _steps(workflow: dict) -> list[dict]:
    return workflow["jobs"]["drill"]["steps"]


def _drill_step(workflow: dict) -> dict:
    return next(s for s in _steps(workflow) if "drill run" in s.get("run", ""))


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # keys are case-sensitive in unit files
    parser.read_string(path.read_text())
    return parser


def test_names_written_in_another_zone_and_point_in_time_backups_are_pointed_out(tmp_path):
    store = tmp_path / "backups"
    (store / "database").mkdir(parents=True)
    # `date +%Y%m%d_%H%M%S` on a server kept in Tokyo time: nine hours ahead of UTC.
    tokyo = datetime.now(ZoneInfo("Asia/Tokyo"))
    (store / "database" / f"{DB}_{tokyo:%Y%m%d_%H%M%S}.sql.gz").write_bytes(gzip.compress(b"-"))
    (store / "base" / "20250101T000000Z").mkdir(parents=True)
    (store / "base" / "20250101T000000Z" / "base.tar.gz").write_bytes(b"-")

    result, project = init(tmp_path, "--storage", str(store))  # a plain path is taken too
    assert result.returncode == 0, result.stderr
    text = prose((project / "drill.toml").read_text())
    assert "the names were made by a clock in another zone" in text
    assert "(mtime)" in text  # the write time, never a name nine hours in the future
    assert "Point-in-time recovery: found objects under base/" in text
    config = load_config(project / "drill.toml", env={})
    assert config.storage.url == store.as_uri()
    assert config.storage.name_timezone is None
    assert "pitr" not in config.configured_drills()

    result, project = init(
        tmp_path, "--storage", store.as_uri(), "--name-timezone", "Asia/Tokyo", "--force"
    )
    assert result.returncode == 0, result.stderr
    assert "another zone" not in prose((project / "drill.toml").read_text())
    assert "(name)" in prose((project / "drill.toml").read_text())
    assert load_config(project / "drill.toml", env={}).storage.name_timezone == "Asia/Tokyo"
