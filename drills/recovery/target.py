"""A real Postgres server as the restore engine's target: host-side SQL, tools in a container.

The restore engine (`drills.restore.restore_database`) drives its target through a small
interface: `exec_argv`, `run`, `connect`, `state` and `logs_tail`. In a drill the target is a
throwaway container; in a real recovery it is a `ToolsTarget`: SQL goes over a host-side
psycopg connection to the user's DSN, and the client tools (psql, pg_restore, pg_dump) run in
a labelled container of the wanted major on the host network, so they reach the server the
way this host does. The connection parameters reach that container as its environment at
creation (PGHOST, PGPORT, PGUSER, PGPASSWORD, ...), never on a command line.

    >>> server = Server.probe("postgresql://app@db.internal/drishti")          # doctest: +SKIP
    >>> with ToolsTarget.start(client, session, server, major=15) as target:  # doctest: +SKIP
    ...     restore_database(storage, backup, target, "drishti_restore_x", timeout=7200)
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

import docker
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drills.config import redact_text
from drills.config.errors import ConfigError, DrillError
from drills.runtime import images
from drills.runtime.containers import LabelledContainer
from drills.runtime.labels import RunSession

CONNECT_TIMEOUT = 10
MAINTENANCE_DATABASES = ("postgres", "template1")
# libpq parameters that travel to the tools container as its environment.
_ENVIRONMENT = {
    "sslmode": "PGSSLMODE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}


class TargetUnreachable(DrillError):
    """The target server does not answer, or refuses us."""


@dataclass(frozen=True)
class Server:
    """A live Postgres server and the database to restore, as a probe connection found them."""

    params: dict[str, str]
    """libpq parameters of the DSN, without the password."""
    password: str | None = field(repr=False)
    host: str
    port: int
    user: str
    database: str
    """The database the recovery replaces (the DSN's)."""
    maintenance_db: str
    """The database the recovery connects to while it creates, renames and drops databases."""
    version: str

    @property
    def major(self) -> int:
        """The server's major version, e.g. 15."""
        return int(self.version.split(".")[0])

    @property
    def where(self) -> str:
        """'127.0.0.1:5432' (or the socket directory), for messages; never the password."""
        return self.host if self.host.startswith("/") else f"{self.host}:{self.port}"

    @classmethod
    def probe(cls, dsn: str, *, default_db: str | None = None) -> Server:
        """Connect to the server of `dsn` (its maintenance database) and describe it.

        A DSN without a database names `default_db`. Unreachable servers, refused logins and
        malformed DSNs raise with the cause, the password never shown.
        """
        try:
            params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
        except psycopg.ProgrammingError as exc:
            cause = redact_text(str(exc).strip().splitlines()[0])
            raise ConfigError(f"--to: not a libpq connection string or URI ({cause})") from None
        database = params.get("dbname") or os.environ.get("PGDATABASE") or default_db
        if not database:
            raise ConfigError(
                "--to: the DSN names no database (e.g. postgresql://user@host:5432/app), and "
                "neither PGDATABASE nor [database] name does"
            )
        params["dbname"] = database
        params.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
        password = params.pop("password", None)
        where = _where(params)
        last = ""
        for maintenance in MAINTENANCE_DATABASES:
            try:
                conn = psycopg.connect(
                    make_conninfo("", **{**params, "dbname": maintenance}),
                    password=password,
                    autocommit=True,
                    application_name="drill-restore",
                )
            except psycopg.Error as exc:
                last = _one_line(exc)
                if "does not exist" in last:
                    continue
                break
            with conn:
                info = conn.info
                version = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]
                return cls(
                    params=params,
                    password=info.password or password,
                    host=info.host,
                    port=int(info.port),
                    user=info.user,
                    database=database,
                    maintenance_db=maintenance,
                    version=version,
                )
        raise TargetUnreachable(
            f"target server {where}: cannot connect: {redact_text(last)}; nothing was changed"
        )

    def connect(self, dbname: str | None = None, **kwargs) -> psycopg.Connection:
        """A host-side connection to `dbname` (None: the maintenance database)."""
        conninfo = make_conninfo("", **{**self.params, "dbname": dbname or self.maintenance_db})
        kwargs.setdefault("application_name", "drill-restore")
        return psycopg.connect(conninfo, password=self.password, **kwargs)

    def environment(self) -> dict[str, str]:
        """libpq's environment for the client tools: where to connect and as whom."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": self.maintenance_db,
            "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
        }
        if self.password:
            env["PGPASSWORD"] = self.password
        for key, name in _ENVIRONMENT.items():
            if key in self.params:
                env[name] = self.params[key]
        return env


class ToolsContainer(LabelledContainer):
    """A labelled container that only holds client tools of one major, on the host network."""

    role = "recovery-tools"

    def __init__(self, image: str, session: RunSession, server: Server) -> None:
        super().__init__(image, session)
        for name, value in server.environment().items():
            self.with_env(name, value)
        self._kwargs["entrypoint"] = ["sleep", "infinity"]
        # The host's network: the tools reach the server as this host does (DNS, loopback).
        self._kwargs["network_mode"] = "host"
        if server.host.startswith("/"):
            self.with_volume_mapping(server.host, server.host, "rw")  # the Unix socket


@dataclass
class ToolsTarget:
    """The restore engine's target interface over a real server (see the module's doc)."""

    server: Server
    container: ToolsContainer
    major: int
    last_problem: str = ""

    @classmethod
    def start(
        cls,
        client: docker.DockerClient,
        session: RunSession,
        server: Server,
        *,
        major: int,
        timeout: float = 60,
    ) -> ToolsTarget:
        """Start the tools container of `major` and check that its psql reaches the server."""
        image = images.ensure_postgres_image(client, major)
        container = ToolsContainer(image, session, server)
        target = cls(server, container, major)
        container.start_or_clean(lambda: target._reaches(timeout))
        return target

    def _reaches(self, timeout: float) -> None:
        argv = ["psql", "-X", "-A", "-t", "-c", "SELECT 1"]
        try:
            result = self.run(argv, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TargetUnreachable(
                f"the PostgreSQL {self.major} client tools did not reach {self.server.where} "
                f"within {timeout:.0f} s"
            ) from None
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip().splitlines()
            raise TargetUnreachable(
                f"the PostgreSQL {self.major} client tools cannot reach {self.server.where}: "
                f"{redact_text(detail[-1] if detail else f'exit {result.returncode}')}"
            )

    def __enter__(self) -> ToolsTarget:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Remove the tools container (the run's sweep takes it if this fails)."""
        self.container.stop()

    @property
    def user(self) -> str:
        """The role the restore runs as."""
        return self.server.user

    def exec_argv(self, argv: list[str], interactive: bool = False) -> list[str]:
        """The `docker exec` command line running `argv` in the tools container."""
        cmd = ["docker", "exec", *(["-i"] if interactive else [])]
        return [*cmd, self.container.get_wrapped_container().id, *argv]

    def run(self, argv: list[str], timeout: float = 120, stdin: bytes | None = None):
        """Run a client tool in the container against the server."""
        return subprocess.run(
            self.exec_argv(argv, interactive=stdin is not None),
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def connect(self, dbname: str | None = None, **kwargs) -> psycopg.Connection:
        """A host-side connection to a database of the server (None: maintenance)."""
        return self.server.connect(dbname, **kwargs)

    def inbox_paths(self, name: str) -> None:
        """No inbox: a real recovery streams the backup through `docker exec -i`, so nothing
        of it is left on this host's disk beside the user's own safety dump."""
        return None

    def take_spare_database(self) -> None:
        """No spare database: a real server gets its database by CREATE DATABASE."""
        return None

    def server_version(self) -> str:
        """The server's version, e.g. '15.14'."""
        return self.server.version

    def state(self) -> str:
        """'running' while the tools container runs and the server answers."""
        state = self.container.state()
        if state != "running":
            return f"tools container {state}"
        try:
            with self.server.connect(connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            self.last_problem = redact_text(_one_line(exc))
            return "unreachable"
        return "running"

    def logs_tail(self, lines: int = 40) -> str:
        """Why the server stopped answering, as far as this side can tell."""
        if self.last_problem:
            return f"{self.server.where}: {self.last_problem} (see the server's own log)"
        return self.container.logs_tail(lines) or "(see the server's own log)"


def _where(params: dict[str, str]) -> str:
    host = params.get("host") or os.environ.get("PGHOST") or "the local socket"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    return host if host.startswith("/") else f"{host}:{port}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text.removeprefix("connection failed: ") or type(exc).__name__
