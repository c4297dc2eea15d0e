"""What the producers' tests share: running `drill` as cron would, their configuration, a
Postgres seeded for dumps, and slow or failing roads to the embedded S3.

The proxies stand in for a network and a store that misbehave, which moto cannot be told to
do; everything behind them is the real moto server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drills.backup.marks import manifest_bytes
from drills.runtime.estate import APP_DIR, run_sql_file
from drills.storage.catalog import list_backups
from drills.storage.manifest import Manifest, manifest_key
from drills.storage.s3server import EmbeddedS3
from fixtures.estate_backups import write_drill_toml
from tests.faults.s3_proxy import FaultyS3Proxy

ROOT = Path(__file__).resolve().parents[1]
DB = "drishti"


ARCHIVE_COMMAND = "test ! -f /archive/%f && cp %p /archive/%f.tmp && mv /archive/%f.tmp /archive/%f"


@contextlib.contextmanager
def production(
    run_session,
    postgres_image: str,
    *,
    scale: str = "1",
    sql: tuple[str, ...] = (),
    archive: Path | None = None,
) -> Iterator:
    """A "production" Postgres 15: the sample app's schema and data at `scale`, then `sql`.

    With `archive`, it archives its WAL into that host directory and lets replication
    connections in, as a server set up for point-in-time recovery (docs/pitr.md) does.
    """
    from drills.runtime.postgres import PostgresContainer, start_postgres

    if archive is None:
        server = start_postgres(postgres_image, run_session, dbname=DB)
    else:
        archive.chmod(0o777)  # the server's own user writes there
        settings = {
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": ARCHIVE_COMMAND,
        }
        server = PostgresContainer(postgres_image, run_session, dbname=DB, settings=settings)
        server.with_volume_mapping(str(archive), "/archive", "rw")
        server.on_network(None)
        server.start_ready()
    try:
        if archive is not None:
            hba = 'echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"'
            assert server.run(["sh", "-c", hba]).returncode == 0
            sql = ("SELECT pg_reload_conf()", *sql)
        run_sql_file(server, APP_DIR / "schema.sql", DB)
        run_sql_file(server, APP_DIR / "seed.sql", DB, scale=scale)
        with server.connect(DB, autocommit=True) as conn:
            for statement in sql:
                conn.execute(statement)
        yield server
    finally:
        server.stop()


def drill(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
    """Run the `drill` command in a child process, as cron or a person would."""
    return subprocess.run(
        [sys.executable, "-m", "drills.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


def s3_env(server: EmbeddedS3) -> dict[str, str]:
    """The embedded server's credentials, as a user puts them in the environment."""
    return {
        "AWS_ACCESS_KEY_ID": server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": server.secret_access_key,
        "AWS_DEFAULT_REGION": server.region,
    }


def pg_env(pg) -> dict[str, str]:
    """libpq's variables for the test server: the producer finds it as it would in cron."""
    return {
        "PGHOST": "127.0.0.1",
        "PGPORT": str(pg.port),
        "PGUSER": pg.user,
        "PGPASSWORD": pg.password,
    }


def config(
    directory: Path,
    storage_url: str,
    *,
    endpoint_url: str | None = None,
    database: str = DB,
    dump_format: str = "plain",
    backup: str = "",
    extra: str = "",
) -> Path:
    """A drill.toml with a [database] to dump and the given [backup] lines."""
    directory.mkdir(parents=True, exist_ok=True)
    sections = f'[database]\nname = "{database}"\nformat = "{dump_format}"\n'
    sections += f"[backup]\n{backup}\n{extra}"
    return write_drill_toml(directory, storage_url, sections, endpoint_url=endpoint_url)


def backdate(storage, manifest_key: str, days: float) -> None:
    """Rewrite a stored manifest as if its backup was taken `days` ago (by this producer).

    Retention counts days, and a test cannot wait for them: the backup and the rest of its
    manifest are the producer's own.
    """
    manifest = Manifest.from_json(storage.read_bytes(manifest_key))
    started = datetime.now(UTC) - timedelta(days=days)
    finished = started + (manifest.finished_at - manifest.started_at)
    manifest = dataclasses.replace(manifest, started_at=started, finished_at=finished)
    storage.put_bytes(manifest_key, manifest_bytes(manifest))


def old_backups(cfg: Path, env: dict[str, str], stores: list, ages: tuple[int, ...]) -> list[str]:
    """Take a backup per age with `drill backup database`, then date each that many days
    back in every store: the keys, oldest first."""
    for _ in ages:
        done = drill("backup", "database", "--config", str(cfg), env=env)
        assert done.returncode == 0, done.stderr
    keys = sorted(b.key for b in list_backups(stores[0], "database") if b.manifest_key)
    for age, key in zip(sorted(ages, reverse=True), keys, strict=True):
        for storage in stores:
            backdate(storage, manifest_key(key), age)
    return keys


class SlowS3Proxy(FaultyS3Proxy):
    """The real S3 behind a slow road (`delay` seconds before each request), which can also
    be cut like a store that died: after `cut_after(...)` matching requests got through,
    every later request, on new and open connections alike, gets no answer."""

    def __init__(self, upstream: str, delay: float = 0.0) -> None:
        super().__init__(upstream)
        self.delay = delay
        self.cut = threading.Event()
        self._cut_rule: tuple[str, str, int] | None = None
        self._seen = 0
        self._before: list[tuple[str, str, Callable[[], object]]] = []

    def before(self, method: str, fragment: str, action: Callable[[], object]) -> None:
        """Run `action` once, just before the first `method` request with `fragment` in its
        path goes through (another writer acting at the worst moment)."""
        self._before.append((method, fragment, action))

    def cut_after(self, method: str, fragment: str, count: int) -> None:
        """Die once `count` requests `method` with `fragment` in their path got through."""
        self._cut_rule = (method, fragment, count)

    def _handler(self):
        base = super()._handler()
        proxy = self

        class Slow(base):
            def _serve(self) -> None:
                if proxy.cut.is_set():
                    self.close_connection = True
                    return
                time.sleep(proxy.delay)
                for hook in list(proxy._before):
                    if self.command == hook[0] and hook[1] in self.path:
                        proxy._before.remove(hook)
                        hook[2]()
                base._serve(self)
                rule = proxy._cut_rule
                if rule and self.command == rule[0] and rule[1] in self.path:
                    proxy._seen += 1
                    if proxy._seen >= rule[2]:
                        proxy.cut.set()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        return Slow
