"""The recovery drill's mechanics: a throwaway production, backed up, then changed, on which
the `drill restore` commands run exactly as a user runs them (the CLI, as a subprocess).

The production is the embedded estate (`drills.runtime.estate`): the sample application's database
and API in labelled containers, an uploads directory and config files on this host. It is
backed up by the producers into a private ``file://`` storage (never the estate's real one),
and its drill.toml stops and starts the API around the database swap (`[database]
pre_restore` / `post_restore`), as the original runbook did.

    >>> with Rehearsal.start(client, session, workdir, scale=1) as rehearsal:  # doctest: +SKIP
    ...     rehearsal.change_after_backup()
    ...     rehearsal.drill("restore", "database", "--to", rehearsal.dsn(), "--yes")
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import docker
import requests

from drills.backup.common import BackupResult, destination, stamp
from drills.backup.config_archive import backup_config
from drills.backup.database import backup_database
from drills.backup.files import backup_files
from drills.backup.heartbeat import run_heartbeat
from drills.checks.recovery_point import newest_heartbeat
from drills.config import load_config
from drills.runtime.estate import DATABASE, ProductionEstate, write_config_files
from drills.runtime.labels import RunSession
from drills.storage import LocalStorage
from drills.storage.manifest import manifest_key

PASSPHRASE_ENV = "DRILL_RECOVERY_PASSPHRASE"
TABLES = ("users", "transactions", "audit_logs")
CLI_TIMEOUT = 1800.0


@dataclass
class Rehearsal:
    """A backed-up throwaway production and the means to run the recovery commands on it."""

    workdir: Path
    estate: ProductionEstate
    storage: LocalStorage
    config_path: Path
    config_files: list[Path]
    backups: dict[str, BackupResult]
    config_at_backup: dict[str, bytes]
    uploads_at_backup: dict[str, str]
    beat_at_backup: datetime | None
    passphrase: str = field(repr=False, default="")

    @classmethod
    def start(
        cls, client: docker.DockerClient, session: RunSession, workdir: Path, *, scale: int = 1
    ) -> Rehearsal:
        """Start the estate, write a heartbeat, back everything up; remove it all on failure."""
        uploads = workdir / "uploads"
        estate = ProductionEstate.start(client, session, uploads, scale=scale)
        try:
            return cls._backed_up(estate, workdir)
        except BaseException:
            estate.stop()
            raise

    @classmethod
    def _backed_up(cls, estate: ProductionEstate, workdir: Path) -> Rehearsal:
        passphrase = secrets.token_urlsafe(24)
        configs = write_config_files(workdir / "config", secrets.token_hex(12))
        root = workdir / "backups"
        root.mkdir()
        path = _write_toml(workdir, estate, root, configs)
        config = load_config(path)
        pg = estate.database
        run_heartbeat(_dsn(pg, DATABASE, pg.password), interval=0.2, count=3)
        with pg.connect(DATABASE) as conn:
            beat = newest_heartbeat(conn)
        dsn = _dsn(pg, DATABASE, pg.password)
        backups = {
            "database": backup_database(destination(config, "database"), DATABASE, dsn=dsn),
            "files": backup_files(destination(config, "files"), estate.uploads_dir),
            "config": backup_config(
                destination(config, "config"), [str(p) for p in configs], passphrase=passphrase
            ),
        }
        return cls(
            workdir=workdir,
            estate=estate,
            storage=LocalStorage(root),
            config_path=path,
            config_files=configs,
            backups=backups,
            config_at_backup={str(p): p.read_bytes() for p in configs},
            uploads_at_backup=dict(estate.uploads),
            beat_at_backup=beat.beat_at if beat else None,
            passphrase=passphrase,
        )

    def __enter__(self) -> Rehearsal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Remove the estate's containers (best effort; the run's sweep takes the rest)."""
        self.estate.stop()

    def dsn(self, dbname: str = DATABASE) -> str:
        """The DSN a user types: no password (the CLI gets it from PGPASSWORD)."""
        return _dsn(self.estate.database, dbname)

    def drill(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
        """`drill <args> --config <the rehearsal's drill.toml>` as a subprocess."""
        env = {
            **os.environ,
            "PGPASSWORD": self.estate.database.password,
            PASSPHRASE_ENV: self.passphrase,
        }
        argv = [sys.executable, "-m", "drills.cli", *args, "--config", str(self.config_path)]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    def change_after_backup(self) -> None:
        """What production does after the backup: new and deleted rows, more heartbeats,
        a new, an altered and a deleted upload, an edited config file."""
        pg = self.estate.database
        with pg.connect(DATABASE, autocommit=True) as conn:
            conn.execute("INSERT INTO users (email, name) VALUES ('late@example.test', 'Late')")
            conn.execute("DELETE FROM audit_logs WHERE id % 3 = 0")
        run_heartbeat(_dsn(pg, DATABASE, pg.password), interval=0.2, count=2)
        uploads = self.estate.uploads_dir
        names = sorted(self.uploads_at_backup)
        (uploads / "avatars" / "after-the-backup.png").write_bytes(b"new upload")
        (uploads / names[0]).write_bytes(b"altered after the backup")
        (uploads / names[1]).unlink()
        self.config_files[0].write_text("EDITED=after the backup\n")

    def counts(self, dbname: str = DATABASE) -> dict[str, int]:
        """Rows per table of the sample application."""
        with self.estate.database.connect(dbname) as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}

    def databases(self) -> set[str]:
        """The server's databases (templates left out)."""
        with self.estate.database.connect() as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")
            return {name for (name,) in rows.fetchall()}

    def newest_beat(self, dbname: str = DATABASE) -> datetime | None:
        """The newest drill_heartbeat row's time in a database."""
        with self.estate.database.connect(dbname) as conn:
            beat = newest_heartbeat(conn)
        return beat.beat_at if beat else None

    def uploads_now(self, root: Path | None = None) -> dict[str, str]:
        """path -> sha256 of every file under the uploads directory (or `root`)."""
        root = root or self.estate.uploads_dir
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*")
            if p.is_file()
        }

    def app(self, timeout: float = 60) -> tuple[int, int | None]:
        """The API's health status code and its users count, once it answers again."""
        api = self.estate.api

        def answers() -> bool:
            return requests.get(api.url("/health"), timeout=2).status_code == 200

        api.wait_ready(answers, timeout, "the API after the restore")
        health = requests.get(api.url("/health"), timeout=5).status_code
        body = requests.get(api.url("/users/count"), timeout=5).json()
        return health, body.get("count")

    def put_cut_dump(self) -> str:
        """A newer database backup cut in half (a truncated upload, no manifest)."""
        data = (self.storage.root / self.backups["database"].key).read_bytes()
        key = f"database/{DATABASE}_{stamp(datetime.now(UTC))}.sql.gz"
        self.storage.put_bytes(key, data[: len(data) // 2])
        return key

    def put_corrupt_snapshot(self) -> tuple[str, str]:
        """A newer uploads snapshot whose manifest disagrees with one of its files."""
        source = self.backups["files"].key
        key = f"files/{stamp(datetime.now(UTC))}/"
        shutil.copytree(self.storage.root / source, self.storage.root / key, symlinks=True)
        shutil.copy(self.storage.root / manifest_key(source), self.storage.root / manifest_key(key))
        victim = sorted(self.uploads_at_backup)[2]
        (self.storage.root / key / victim).write_bytes(b"bit rot")
        return key, victim


def _dsn(pg, dbname: str, password: str | None = None) -> str:
    secret = f":{password}" if password else ""
    return f"postgresql://{pg.user}{secret}@127.0.0.1:{pg.port}/{dbname}"


def _write_toml(workdir: Path, estate: ProductionEstate, root: Path, configs: list[Path]) -> Path:
    api = estate.api.get_wrapped_container().id
    paths = ", ".join(f'"{p}"' for p in configs)
    path = workdir / "drill.toml"
    path.write_text(
        f"""# The recovery drill's throwaway production (generated).
[estate]
name = "recovery rehearsal"

[storage]
url = "{root.as_uri()}"

[database]
name = "{DATABASE}"
checks = ["SELECT count(*) > 0 FROM users"]
pre_restore = ["docker stop --time 5 {api}"]
post_restore = ["docker start {api}"]

[files]
source_dir = "{estate.uploads_dir}"

[config]
paths = [{paths}]
passphrase_env = "{PASSPHRASE_ENV}"
required = [".env.production"]

[report]
dir = "{workdir / "reports"}"
"""
    )
    return path
