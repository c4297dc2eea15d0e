"""The shipped cron and systemd examples, run as cron and systemd run them: the crontab's
lines under cron's environment (`env -i`, cron's PATH, the crontab's own variables), the
unit's ExecStart under systemd's; the failure mail, the notification unit, log rotation and
the `drill` shim.

Found cases made for real: under cron's PATH `drill` was not found (exit 127) and the unit had
the same problem; every crontab line sent its output to a log, so MAILTO never fired; the unit
had no OnFailure= and no timeout; no logrotate file, no wal and base wrappers."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from drills.pitr.catalog import list_base_backups
from drills.runtime.estate import generated_uploads
from drills.runtime.postgres import PostgresContainer
from drills.storage.catalog import list_backups
from drills.storage.s3 import S3Storage
from drills.storage.s3server import EmbeddedS3
from fixtures.storage import s3_storage_on
from tests.producer_kit import DB, ROOT, production, s3_env

SCRIPTS = ROOT / "scripts"
DRILL = str(Path(sys.executable).with_name("drill"))
CRON_PATH = "/usr/bin:/bin"  # what cron gives a job before the crontab's own PATH=
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STAMPED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ backup-(\w+): ")


def _config(tmp_path: Path, paths: list[Path]) -> Path:
    listed = ", ".join(f'"{p}"' for p in paths)
    config = tmp_path / "drill.toml"
    config.write_text(
        f'[storage]\nurl = "file://{tmp_path / "backups"}"\n[config]\npaths = [{listed}]\n'
    )
    (tmp_path / "backups").mkdir()
    return config


def _run(script: str, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DRILL_CONFIG": str(config), "DRILL": DRILL}
    return subprocess.run(
        [str(ROOT / "scripts" / script)], capture_output=True, text=True, env=env, timeout=120
    )


def test_config_wrapper_makes_a_backup_and_logs_with_timestamps(tmp_path):
    env_file = tmp_path / ".env.production"
    env_file.write_text("A=1\n")
    result = _run("backup-config.sh", _config(tmp_path, [env_file]))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ backup-config: ", line) for line in lines)
    assert lines[-1].endswith("backup-config: done")
    assert list((tmp_path / "backups" / "config").glob("config_*.tar.gz"))


def test_wrapper_passes_on_the_failure(tmp_path):
    result = _run("backup-config.sh", _config(tmp_path, [tmp_path / "missing.env"]))
    assert result.returncode != 0
    assert "missing.env" in result.stdout
    assert "FAILED (exit" in result.stdout.strip().splitlines()[-1]


class Estate:
    """A production server archiving WAL, its uploads and config files, a bucket, and the
    root-only files cron's jobs read: drill.toml and the secrets file."""

    def __init__(
        self, pg: PostgresContainer, workdir: Path, bucket: S3Storage, server: EmbeddedS3
    ) -> None:
        self.pg, self.workdir, self.bucket = pg, workdir, bucket
        endpoint = server.endpoint_url
        self.archive = workdir / "archive"
        self.uploads = workdir / "uploads"
        for rel, data in generated_uploads(6).items():
            (self.uploads / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.uploads / rel).write_bytes(data)
        app_env = workdir / ".env.production"
        app_env.write_text("SECRET_KEY=x\n")
        where = f"host=127.0.0.1 port={pg.port} user={pg.user}"
        self.config = workdir / "drill.toml"
        self.config.write_text(
            f'[storage]\nurl = "{bucket.url}"\nendpoint_url = "{endpoint}"\n'
            f'[database]\nname = "{DB}"\ndsn = "{where} dbname={DB}"\n'
            f'[files]\nsource_dir = "{self.uploads}"\n'
            f'[config]\npaths = ["{app_env}"]\n'
            f'[pitr]\narchive_dir = "{self.archive}"\ndsn = "{where} dbname={DB}"\n'
            f'[backup]\nlocal_dir = "{workdir / "local"}"\n'
        )
        secrets = {"PGPASSWORD": pg.password, **s3_env(server)}
        self.env_file = workdir / "backup.env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in secrets.items()))
        self.env_file.chmod(0o600)
        self.log = workdir / "log" / "drill-backup.log"
        self.log.parent.mkdir()

    def installed(self, text: str) -> str:
        """An example file as installed on this machine: its paths pointed at the test's."""
        for shipped, here in (
            ("/opt/recovery-drills", str(ROOT)),
            ("/etc/drill/drill.toml", str(self.config)),
            ("/etc/drill/backup.env", str(self.env_file)),
            ("/var/log/drill-backup.log", str(self.log)),
        ):
            text = text.replace(shipped, here)
        return text


@pytest.fixture(scope="module")
def estate(run_session, postgres_image, embedded_s3, tmp_path_factory):
    """Production archiving WAL into a directory the WAL wrapper ships from."""
    workdir = tmp_path_factory.mktemp("cron")
    (workdir / "archive").mkdir()
    switch = ("SELECT pg_switch_wal()",)
    with production(run_session, postgres_image, sql=switch, archive=workdir / "archive") as pg:
        name = f"cron-{run_session.run_id}"
        embedded_s3.client().create_bucket(Bucket=name)
        bucket = s3_storage_on(embedded_s3, f"s3://{name}")
        yield Estate(pg, workdir, bucket, embedded_s3)


def _crontab(estate: Estate) -> tuple[dict[str, str], list[str]]:
    """The example crontab's variables and its jobs' commands (the commented [pitr] ones too)."""
    text = estate.installed((SCRIPTS / "crontab.example").read_text())
    variables, commands = {}, []
    for line in text.splitlines():
        job = re.match(r"^#? ?(\S+ \S+ \S+ \S+ \S+)\s+(/\S+/scripts/backup-\w+\.sh.*)$", line)
        if job:
            commands.append(job.group(2))
        elif re.match(r"^[A-Z_]+=", line):
            name, value = line.split("=", 1)
            variables[name] = value
    return variables, commands


def _as_cron(variables: dict[str, str], command: str) -> subprocess.CompletedProcess:
    """What cron does with a job: a bare environment, the crontab's variables, $SHELL -c."""
    env = {"HOME": "/root", "LOGNAME": "root", "SHELL": "/bin/sh", "PATH": CRON_PATH}
    env.update({k: v for k, v in variables.items() if k != "MAILTO"})
    argv = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), env["SHELL"], "-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)


def test_every_crontab_line_works_under_crons_environment_and_mails_only_failures(estate):
    variables, commands = _crontab(estate)
    assert {"MAILTO", "DRILL_LOG"} <= set(variables)
    assert {Path(c.split()[0]).name for c in commands} == {
        f"backup-{kind}.sh" for kind in ("database", "files", "config", "wal", "base")
    }

    done = {Path(command.split()[0]).name: _as_cron(variables, command) for command in commands}

    for name, result in done.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert (result.stdout, result.stderr) == ("", ""), f"{name}: cron would mail this"
    log = estate.log.read_text().splitlines()
    assert all(STAMPED.match(line) for line in log)
    for kind in ("database", "files", "config", "wal", "base"):
        assert f"backup-{kind}: done" in "\n".join(log)
    for kind in ("database", "files", "config"):
        assert list_backups(estate.bucket, kind)
    assert list_base_backups(estate.bucket, "base/")[0]


def test_a_failing_crontab_line_mails_its_lines(estate, tmp_path: Path):
    variables, commands = _crontab(estate)
    broken = tmp_path / "backup.env"
    broken.write_text(estate.env_file.read_text().replace(estate.pg.password, "wrong"))
    variables["DRILL_ENV_FILE"] = str(broken)
    [database] = [c for c in commands if "backup-database.sh" in c]

    result = _as_cron(variables, database)

    assert result.returncode == 1
    assert result.stdout == ""
    mail = result.stderr.splitlines()
    assert all(STAMPED.match(line) for line in mail), mail
    assert "password authentication failed" in result.stderr
    assert mail[-1].endswith("backup-database: FAILED (exit 1)")
    assert result.stderr in estate.log.read_text()


def _unit(path: Path, estate: Estate, instance: str) -> dict[str, list[str]]:
    """A unit file's [Service] and [Unit] settings as systemd reads them, %i filled in."""
    settings: dict[str, list[str]] = {}
    for line in estate.installed(path.read_text()).splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value.replace("%i", instance))
    return settings


def _as_systemd(unit: dict[str, list[str]]) -> subprocess.CompletedProcess:
    """ExecStart in systemd's environment: its PATH, Environment= and EnvironmentFile= only."""
    env = {"PATH": SYSTEMD_PATH}
    for entry in unit.get("EnvironmentFile", []):
        path = Path(entry.lstrip("-"))
        if path.exists() or not entry.startswith("-"):
            for line in path.read_text().splitlines():
                key, value = line.split("=", 1)
                env[key] = value
    for entry in unit.get("Environment", []):
        key, value = entry.split("=", 1)
        env[key] = value
    [exec_start] = unit["ExecStart"]
    argv = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *exec_start.split()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)


def test_the_systemd_unit_runs_under_systemds_environment_and_calls_for_help_on_failure(
    estate, tmp_path: Path
):
    units = tmp_path / "units"
    units.mkdir()
    for name in ("drill-backup@.service", "drill-notify@.service", "drill-backup-wal.timer",
                 "drill-backup-database.timer"):  # fmt: skip
        (units / name).write_text(estate.installed((SCRIPTS / name).read_text()))
    for kind in ("database", "files", "config", "wal", "base"):
        (units / f"drill-backup@{kind}.service").symlink_to(units / "drill-backup@.service")
    unit = _unit(SCRIPTS / "drill-backup@.service", estate, "config")

    # every instance, the notification template and the timers, as systemd would load them
    files = [p for p in sorted(units.iterdir()) if p.name != "drill-backup@.service"]
    verified = subprocess.run(
        ["systemd-analyze", "verify", *map(str, files)], capture_output=True, text=True
    )
    result = _as_systemd(unit)

    assert verified.returncode == 0, verified.stderr
    assert unit["OnFailure"] == ["drill-notify@%n.service"]
    assert unit["TimeoutStartSec"] == ["6h"]
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(STAMPED.match(line) for line in lines), lines
    assert lines[-1].endswith("backup-config: done")
    assert len(list_backups(estate.bucket, "config")) >= 1


def test_the_notification_unit_mails_through_sendmail(estate, tmp_path: Path):
    """No mail transfer agent runs on the test machine: a stand-in `sendmail` on PATH keeps
    the message it is handed, which is all the script's part of the mail."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    outbox = tmp_path / "outbox"
    sendmail = bin_dir / "sendmail"
    sendmail.write_text(f'#!/bin/sh\necho "argv: $*" > "{outbox}"\ncat >> "{outbox}"\n')
    sendmail.chmod(0o755)
    estate.env_file.write_text(estate.env_file.read_text() + "DRILL_NOTIFY_MAILTO=ops@x.test\n")
    unit = _unit(SCRIPTS / "drill-notify@.service", estate, "drill-backup@database.service")
    unit["Environment"] = [f"PATH={bin_dir}:{SYSTEMD_PATH}"]

    sent = _as_systemd(unit)
    unit["Environment"] = [f"PATH={SYSTEMD_PATH}"]
    unsent = _as_systemd(unit)

    subject = f"recovery-drills: drill-backup@database.service failed on {socket.gethostname()}"
    assert sent.returncode == 0, sent.stderr
    assert f"notify: {subject}" in sent.stderr
    message = outbox.read_text()
    assert message.startswith("argv: -t -i\nTo: ops@x.test\nSubject: " + subject + "\n\n")
    if shutil.which("sendmail", path=SYSTEMD_PATH) or shutil.which("mail", path=SYSTEMD_PATH):
        pytest.fail("this machine has a mailer: the no-mailer case cannot be made here")
    assert unsent.returncode == 1
    assert "neither sendmail nor mail is installed: no mail sent to ops@x.test" in unsent.stderr


def test_logrotate_rotates_the_wrappers_log(estate, tmp_path: Path):
    conf = tmp_path / "drill-backup"
    log = tmp_path / "drill-backup.log"
    conf.write_text(
        (SCRIPTS / "drill-backup.logrotate")
        .read_text()
        .replace("/var/log/drill-backup.log", str(log))
    )
    log.write_text("2025-01-15T02:00:00Z backup-database: done\n")

    done = subprocess.run(
        ["logrotate", "--force", "--state", str(tmp_path / "state"), str(conf)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "drill-backup.log.1").read_text().endswith("backup-database: done\n")
    assert log.read_text() == ""
    assert oct(log.stat().st_mode & 0o777) == "0o640"


def test_without_a_drill_command_the_wrapper_says_so_on_stderr(tmp_path: Path):
    copy = tmp_path / "scripts"
    copy.mkdir()
    for name in ("backup.sh", "backup-database.sh"):
        shutil.copy2(SCRIPTS / name, copy / name)

    result = _as_cron({"PATH": CRON_PATH}, str(copy / "backup-database.sh"))

    assert result.returncode == 127
    assert result.stderr == (
        "backup-database: no drill command: run scripts/setup.sh (--shim), or set DRILL\n"
    )


def test_the_shim_puts_drill_on_crons_path(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    installed = subprocess.run(
        [str(SCRIPTS / "install-shim.sh"), str(bin_dir)], capture_output=True, text=True
    )
    again = subprocess.run(
        [str(SCRIPTS / "install-shim.sh"), str(bin_dir)], capture_output=True, text=True
    )
    version = subprocess.run(
        ["env", "-i", f"PATH={bin_dir}:{CRON_PATH}", "drill", "--version"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    other = tmp_path / "other"
    other.mkdir()
    (other / "drill").write_text("#!/bin/sh\necho someone else's drill\n")
    refused = subprocess.run(
        [str(SCRIPTS / "install-shim.sh"), str(other)], capture_output=True, text=True
    )

    assert installed.returncode == 0, installed.stderr
    assert again.returncode == 0, again.stderr
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("recovery-drills ")
    assert refused.returncode == 1
    assert "exists and is not our shim" in refused.stderr
    assert (other / "drill").read_text().endswith("someone else's drill\n")
