"""One way to start a throwaway Postgres container: image, major, tuning, labels, network.

>>> pg = start_postgres(image, session, tuning="restore")     # doctest: +SKIP
>>> with pg.connect() as conn: conn.execute("select 1")         # doctest: +SKIP
>>> pg.stop()                                                   # doctest: +SKIP

A restore-tuned container also gets an *inbox*: a private host directory bind-mounted into
the container, where the restore engine puts named pipes (and, for custom-format dumps, the
downloaded file) so that the client tools inside the container read a backup with no copy
through `docker exec`. It is removed with the container; inboxes of dead runs are swept.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from testcontainers.core.network import Network

from drills.runtime import labels
from drills.runtime.containers import LOOPBACK, ContainerNotReady, LabelledContainer
from drills.runtime.labels import RunSession
from drills.runtime.warm import SPARE_DATABASE, warm_image

PORT = 5432
INBOX = "/drill-inbox"
DATA_DIR = "/var/lib/postgresql/data"
WARM_USER = "postgres"

# Settings for a restore target that nobody needs to survive a crash. Only ever applied to
# containers the harness created for a drill: never to anything that restores production.
# WAL: with wal_level minimal, tables and indexes created in the restoring transaction skip
# WAL entirely (pg_restore --jobs loads each table after a TRUNCATE in the same transaction).
# Autovacuum stays off for the container's whole short life: turned on after the load, its
# insert-triggered vacuums of every fresh table would compete with the validation; the
# restore runs ANALYZE itself instead. JIT compiles each big one-off query (foreign-key
# validation, count(*)) for longer than it saves.
RESTORE_TUNING = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "autovacuum": "off",
    "jit": "off",
}

TUNINGS = {"default": {}, "restore": RESTORE_TUNING}
# initdb's final fsync of a data directory that is thrown away after the drill.
RESTORE_INITDB_ARGS = "--no-sync"
# Transparent huge pages for the server's private memory (glibc >= 2.35; older ones ignore
# it): the foreign-key checks' hash joins and the index builds' sorts of a restore touch
# hundreds of MB at random, and 4 kB pages make that a TLB miss per probe (measured: the
# 6M x 2M foreign-key check of the reference estate 6.9 s -> 4.6 s, index builds -25%).
RESTORE_ENVIRONMENT = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
_WARM_ARGS = (RESTORE_INITDB_ARGS, DATA_DIR)


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def restore_memory_settings(total: int | None = None) -> dict[str, str]:
    """Memory sized from the machine's: index builds and foreign-key checks (which run with
    maintenance_work_mem) dominate restores, and shared buffers large enough to hold what
    was just loaded spare the index builds a second read through the kernel."""
    total = total if total is not None else _total_memory()
    if not total:
        return {}
    mb = total // (1024 * 1024)
    maintenance = max(64, min(2048, mb // 16))
    shared = max(128, min(4096, mb // 8))
    return {"maintenance_work_mem": f"{maintenance}MB", "shared_buffers": f"{shared}MB"}


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
        inbox: bool | None = None,
        warm: bool | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(image, session, name=name)
        self.user = user
        self.password = password or secrets.token_urlsafe(18)
        self.dbname = dbname
        self.tuning = tuning
        self.data = data
        self.ready_seconds: float | None = None
        self.settings = dict(TUNINGS[tuning])
        if tuning == "restore":
            self.settings.update(restore_memory_settings())
            self.with_env("POSTGRES_INITDB_ARGS", RESTORE_INITDB_ARGS)
            for key, value in RESTORE_ENVIRONMENT.items():
                self.with_env(key, value)
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
            self.with_tmpfs_mount(DATA_DIR)
        self.warm = (warm if warm is not None else tuning == "restore") and data == "layer"
        self._warmed = False
        self._spare: str | None = None
        self.inbox: Path | None = None
        self._inbox_works: bool | None = None
        self._inbox_probe: threading.Thread | None = None
        if inbox if inbox is not None else tuning == "restore":
            self.inbox = _new_inbox(session)
            if self.inbox is not None:
                self.with_volume_mapping(str(self.inbox), INBOX, "rw")

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
        if self._warmed:
            cmd += ["-u", "0"]
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

    def take_spare_database(self) -> str | None:
        """The name of an empty database to rename rather than create, once; else None."""
        spare, self._spare = self._spare, None
        return spare

    def inbox_paths(self, name: str) -> tuple[Path, str] | None:
        """(host path, container path) of `name` in the inbox, None without a working one.

        The first call checks that the container sees what the host writes there (it does
        not when the engine runs on another machine, or remaps users).
        """
        if self.inbox is None:
            return None
        if self._inbox_probe is not None:
            self._inbox_probe.join()
        if self._inbox_works is None:
            self._probe_inbox()
        if not self._inbox_works:
            return None
        return self.inbox / name, f"{INBOX}/{name}"

    def _probe_inbox(self) -> None:
        token = secrets.token_hex(8)
        marker = self.inbox / ".probe"
        try:
            marker.write_text(token)
            seen = self.run(["cat", f"{INBOX}/.probe"], timeout=30)
            works = seen.returncode == 0 and seen.stdout.decode(errors="replace") == token
        except (OSError, subprocess.TimeoutExpired):
            works = False
        finally:
            with contextlib.suppress(OSError):
                marker.unlink()
        self._inbox_works = works

    def _probe(self) -> bool:
        with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def start_ready(self, timeout: float = 90) -> PostgresContainer:
        """Start and wait until the final server accepts a password login over TCP."""
        what = f"Postgres container ({self.image})"
        if self.warm:
            client = self.get_docker_client().client
            source, session, user = self.image, self.session, self.user
            tag = warm_image(
                client,
                source,
                user,
                *_WARM_ARGS,
                template=lambda: PostgresContainer(source, session, user=user, inbox=False),
            )
            if tag is not None:
                self.image, self._warmed, self._spare = tag, True, SPARE_DATABASE
                # As root, the entrypoint's `chown -R` of the data directory would copy every
                # file of the image's layer up into the container's layer: seconds. Client
                # tools still run as root through `docker exec -u 0`, as in a cold container.
                self._kwargs["user"] = WARM_USER
        started = time.monotonic()
        self.start_or_clean(lambda: self._ready(timeout, what))
        self.ready_seconds = time.monotonic() - started
        return self

    def _ready(self, timeout: float, what: str) -> None:
        if self.inbox is not None:
            # checked while the server starts, so the restore does not wait for it
            self._inbox_probe = threading.Thread(target=self._probe_inbox, daemon=True)
            self._inbox_probe.start()
        if self._warmed:
            self._own_password(timeout, what)
        self.wait_ready(self._probe, timeout, what)

    def _own_password(self, timeout: float, what: str) -> None:
        """Give a warm container's superuser this container's password (over the socket)."""
        role = self.user.replace('"', '""')
        secret = self.password.replace("'", "''")
        db = self.dbname.replace('"', '""')
        # ON_ERROR_STOP goes in the script: on the command line, a process listing would
        # show this step as a restore (the interrupt and fault tests look for it there).
        script = f"""\\set ON_ERROR_STOP on\nALTER ROLE "{role}" PASSWORD '{secret}';\n"""
        if self.dbname != "postgres":
            literal = self.dbname.replace("'", "''")
            script += (
                f"SELECT 'CREATE DATABASE \"{db}\"' WHERE NOT EXISTS "
                f"(SELECT FROM pg_database WHERE datname = '{literal}')\\gexec\n"
            )
        wait = "until pg_isready -q; do sleep 0.05; done; exec psql -X -q"
        argv = ["sh", "-c", f"{wait} -d postgres"]
        try:
            done = self.run(argv, timeout=timeout, stdin=script.encode())
        except subprocess.TimeoutExpired:
            done = None
        if done is None or done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip() if done else "timed out"
            raise ContainerNotReady(
                f"{what}: setting the superuser's password failed ({detail}); its last "
                f"output:\n{self.logs_tail()}",
                container=self.display,
            )

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        """Remove the container, then its inbox."""
        try:
            super().stop(force=force, delete_volume=delete_volume)
        finally:
            if self.inbox is not None:
                shutil.rmtree(self.inbox, ignore_errors=True)


def _inbox_root() -> Path:
    root = labels.runs_dir() / "inbox"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def _new_inbox(session: RunSession) -> Path | None:
    """A private (0700) host directory for one container; None where bind mounts cannot
    reach the engine's machine (the restore then copies through `docker exec`)."""
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        return None
    try:
        root = _inbox_root()
        sweep_inboxes(root)
        return Path(tempfile.mkdtemp(prefix=f"{session.run_id}-", dir=root))
    except OSError:
        return None


def sweep_inboxes(root: Path | None = None) -> list[str]:
    """Remove the inboxes of dead runs (a SIGKILLed run leaves its inbox behind)."""
    root = root or _inbox_root()
    removed = []
    for entry in root.iterdir():
        run_id = entry.name.split("-", 1)[0]
        if entry.is_dir() and not labels.is_alive(run_id):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    return removed


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
    inbox: bool | None = None,
    warm: bool | None = None,
    timeout: float = 90,
    name: str | None = None,
) -> PostgresContainer:
    """Start a labelled Postgres container and wait until it is ready; remove it on failure.

    `tuning="restore"` is for drill restore targets only (crash-unsafe, see RESTORE_TUNING);
    such a container gets an inbox unless `inbox=False`, and starts from a warm image
    (`drills.runtime.warm`) unless `warm=False`.
    """
    container = PostgresContainer(
        image,
        session,
        user=user,
        password=password,
        dbname=dbname,
        tuning=tuning,
        settings=settings,
        data=data,
        inbox=inbox,
        warm=warm,
        name=name,
    )
    container.on_network(network, *aliases)
    return container.start_ready(timeout)
