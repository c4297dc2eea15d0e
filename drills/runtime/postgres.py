"""One way to start a throwaway Postgres container: image, major, tuning, labels, network.

>>> pg = start_postgres(image, session, tuning="restore")     # doctest: +SKIP
>>> with pg.connect() as conn: conn.execute("select 1")         # doctest: +SKIP
>>> pg.stop()                                                   # doctest: +SKIP
"""

from __future__ import annotations

import os
import secrets
import subprocess

import psycopg
from testcontainers.core.network import Network

from drills.runtime.containers import LOOPBACK, LabelledContainer
from drills.runtime.labels import RunSession

PORT = 5432

# Settings for a restore target that nobody needs to survive a crash. Only ever applied to
# containers the harness created for a drill: never to anything that restores production.
RESTORE_TUNING = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "autovacuum": "off",
}

TUNINGS = {"default": {}, "restore": RESTORE_TUNING}


def _memory_settings() -> dict[str, str]:
    """maintenance_work_mem sized from the machine's memory (index builds dominate restores)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return {}
    mb = max(64, min(2048, total // (1024 * 1024) // 16))
    return {"maintenance_work_mem": f"{mb}MB"}


class PostgresContainer(LabelledContainer):
    """A labelled Postgres container whose port is published on 127.0.0.1."""

    role = "postgres"

    def __init__(
        self,
        image: str,
        session: RunSession,
        *,
        user: str = "drill",
        password: str | None = None,
        dbname: str = "postgres",
        tuning: str = "default",
        settings: dict[str, str] | None = None,
        data: str = "layer",
    ) -> None:
        super().__init__(image, session)
        self.user = user
        self.password = password or secrets.token_urlsafe(18)
        self.dbname = dbname
        self.tuning = tuning
        self.data = data
        self.settings = dict(TUNINGS[tuning])
        if tuning == "restore":
            self.settings.update(_memory_settings())
        self.settings.update(settings or {})
        self.with_env("POSTGRES_USER", user)
        self.with_env("POSTGRES_PASSWORD", self.password)
        self.with_env("POSTGRES_DB", dbname)
        self.publish(PORT)
        # Docker's default 64 MB /dev/shm is too small for parallel workers and big sorts.
        self._kwargs["shm_size"] = "512m"
        command = ["postgres"]
        for key, value in self.settings.items():
            command += ["-c", f"{key}={value}"]
        self.with_command(command)
        if data == "tmpfs":
            self.with_tmpfs_mount("/var/lib/postgresql/data")

    @property
    def port(self) -> int:
        """The loopback port of the server."""
        return self.host_port(PORT)

    def dsn(self, dbname: str | None = None) -> str:
        """A libpq keyword DSN to the server on loopback (carries the password)."""
        return (
            f"host={LOOPBACK} port={self.port} user={self.user} password={self.password} "
            f"dbname={dbname or self.dbname} connect_timeout=5"
        )

    def connect(self, dbname: str | None = None, **kwargs) -> psycopg.Connection:
        """Open a psycopg connection to a database of this server."""
        return psycopg.connect(self.dsn(dbname), **kwargs)

    def exec_argv(self, argv: list[str], interactive: bool = False) -> list[str]:
        """The `docker exec` command line that runs `argv` inside the container as its user."""
        cmd = ["docker", "exec"]
        if interactive:
            cmd.append("-i")
        # Inside the container psql uses the Unix socket, where the image trusts local users,
        # so no password goes on a command line (where `ps` would show it).
        cmd += ["-e", f"PGUSER={self.user}"]
        cmd += ["-e", f"PGDATABASE={self.dbname}"]
        return [*cmd, self.get_wrapped_container().id, *argv]

    def run(self, argv: list[str], timeout: float = 120, stdin: bytes | None = None):
        """Run a client tool inside the container (tools of the server's own major)."""
        return subprocess.run(
            self.exec_argv(argv, interactive=stdin is not None),
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def server_version(self) -> str:
        """The server's version, e.g. '15.14'."""
        with self.connect() as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]

    def _probe(self) -> bool:
        with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def start_ready(self, timeout: float = 90) -> PostgresContainer:
        """Start and wait until the final server accepts a password login over TCP."""
        what = f"Postgres container ({self.image})"
        return self.start_or_clean(lambda: self.wait_ready(self._probe, timeout, what))


def start_postgres(
    image: str,
    session: RunSession,
    *,
    network: Network | None = None,
    aliases: tuple[str, ...] = (),
    tuning: str = "default",
    settings: dict[str, str] | None = None,
    dbname: str = "postgres",
    user: str = "drill",
    password: str | None = None,
    data: str = "layer",
    timeout: float = 90,
) -> PostgresContainer:
    """Start a labelled Postgres container and wait until it is ready; remove it on failure."""
    container = PostgresContainer(
        image,
        session,
        user=user,
        password=password,
        dbname=dbname,
        tuning=tuning,
        settings=settings,
        data=data,
    )
    container.on_network(network, *aliases)
    return container.start_ready(timeout)
