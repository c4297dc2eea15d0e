"""What the restore engines share: their result and error, and the plumbing of the client
processes they run inside the restore target (bounded waits, drained stderr, a target that
died under them)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import psycopg
from psycopg import sql

from drills.config.clock import StepTimeout
from drills.config.errors import DrillError, EnvironmentProblem, StorageError
from drills.restore.fetch import open_if_read
from drills.runtime.gpg import Passphrase, gpg_pipe
from drills.runtime.postgres import PostgresContainer
from drills.storage import Storage
from drills.storage.catalog import Backup

DEATH_SETTLE_SECONDS = 3.0
_CONNECTION_LOST = ("server closed the connection", "connection to server", "terminated")


class RestoreError(DrillError):
    """The restore itself failed (psql or pg_restore reported an error)."""


@dataclass
class RestoreResult:
    """What a restore read and how long it took (`stages`: fetch, load, analyze seconds).

    `facts` is what the dump declared about itself (a `drills.restore.dumpscan.DumpScan`: whether it
    is whole, its objects, its roles, its tables' data entries), for the checks that compare
    the restored database with it. `attempts` is how many times the data was loaded: one.
    """

    bytes_read: int = 0
    sha256: str | None = None
    seconds: float = 0.0
    method: str = ""
    notes: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    facts: Any = None
    roles_created: list[str] = field(default_factory=list)
    attempts: int = 1


@dataclass(frozen=True)
class Secrets:
    """How to open an encrypted backup: the NAME of the variable holding its passphrase,
    and a GnuPG home whose keyring holds its secret key (either, or both)."""

    passphrase_env: str | None = None
    gpg_home: str | None = None


def decrypting(backup: Backup, secrets: Secrets | None):
    """`gpg --decrypt` for an encrypted backup (a context manager: a `GpgPipe`), with its
    passphrase from the variable `[database] passphrase_env` names, or its keyring."""
    secrets = secrets or Secrets()
    passphrase = None
    if secrets.passphrase_env or not secrets.gpg_home:
        passphrase = Passphrase.from_env(
            secrets.passphrase_env, backup.key, "[database] passphrase_env"
        )
    return gpg_pipe(
        "decrypt", passphrase=passphrase, keyring=secrets.gpg_home, hide=secrets.passphrase_env
    )


class RoleMaker:
    """Creates, before the restore needs them, the roles a dump refers to that the target
    lacks: NOLOGIN, no password, no privileges beyond what the dump itself grants.

    A drill's target is a fresh server with none of production's roles; a real recovery onto
    a new server lacks them too. With `create` false a missing role is an error naming it.
    """

    def __init__(self, pg: Any, *, create: bool = True) -> None:
        self.pg = pg
        self.create = create
        self.created: list[str] = []
        self._conn: psycopg.Connection | None = None
        self._known: set[str] = set()

    def ensure(self, names: Iterable[str]) -> None:
        """Make sure every role of `names` exists."""
        wanted = set(names) - self._known
        if not wanted:
            return
        try:
            if self._conn is None:
                self._conn = self.pg.connect(autocommit=True)
            # All of them: a server has a handful of roles, and no array parameter to adapt.
            rows = self._conn.execute("SELECT rolname FROM pg_roles").fetchall()
            absent = sorted(wanted - {row[0] for row in rows})
            if absent and not self.create:
                raise RestoreError(
                    f"the dump refers to roles the server lacks: {', '.join(absent)}; create "
                    "them first (or let the restore create them as NOLOGIN roles)"
                )
            for name in absent:
                self._conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
                self.created.append(name)
        except psycopg.Error as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RestoreError(f"cannot create the roles the dump refers to: {detail}") from None
        self._known |= wanted

    def close(self) -> None:
        """Close the connection (best effort)."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


_NO_EXTENSION = re.compile(
    r'extension "(?P<name>[^"]+)" is not available|could not open extension control file '
    r'"[^"]*/(?P<file>[^"/]+)\.control"'
)


def tool_failure(backup: Backup, tool: str, output: str) -> DrillError:
    """The error of a failed psql or pg_restore, named: an extension the restore image lacks
    is the machine's problem (exit 3), anything else the restore's."""
    missing = _NO_EXTENSION.search(output)
    if missing:
        name = missing["name"] or missing["file"]
        return EnvironmentProblem(
            f"{backup.key}: the dump needs the extension {name}, which the restore image does "
            "not have; set [runtime] postgres_image to an image that has it"
        )
    return RestoreError(f"{backup.key}: {tool} failed: {last_lines(output)}")


def jobs() -> int:
    """Parallel restore jobs: the cores available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class Drain(threading.Thread):
    """Reads a pipe to the end in the background, keeping the last 64 KiB."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.buffer = bytearray()
        self.start()

    def run(self) -> None:
        while chunk := self.stream.read(65536):
            self.buffer += chunk
            del self.buffer[:-65536]

    def text(self) -> str:
        """What was read, decoded."""
        self.join(timeout=5)
        return self.buffer.decode(errors="replace")


def wait_all(procs: list, threads: list, timeout: float, what: str) -> None:
    """Wait for every process and thread; past the bound kill them and name the step."""
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for thread in threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
            if thread.is_alive():
                raise subprocess.TimeoutExpired(what, timeout)
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        raise StepTimeout(f"{what} did not finish within its bound of {timeout:.0f} s") from None


def in_container(
    pg: PostgresContainer,
    argv: list[str],
    timeout: float,
    check: bool = True,
    what: str | None = None,
) -> subprocess.CompletedProcess:
    """Run a client tool in the target within `timeout`; with `check`, a failure raises."""
    try:
        result = pg.run(argv, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StepTimeout(
            f"{what or argv[0]} did not finish within its bound of {timeout:.0f} s"
        ) from None
    if check and result.returncode != 0:
        raise RestoreError(f"{' '.join(argv)}: {result.stderr.decode(errors='replace').strip()}")
    return result


def died(pg: PostgresContainer, backup: Backup, causes: list[DrillError], output: str) -> None:
    """Name a restore target that stopped running under the restore (killed, OOM, crashed).

    The client tool's stream ends before the engine reports the container gone, so when the
    tool's output says nothing or says the server went away, the state gets a moment to
    catch up.
    """
    lost = not output.strip() or any(sign in output for sign in _CONNECTION_LOST)
    deadline = time.monotonic() + (DEATH_SETTLE_SECONDS if lost else 0)
    while (current := pg.state()) == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    if current != "running":
        causes.insert(
            0,
            RestoreError(
                f"{backup.key}: the restore target container died during the restore "
                f"(now {current})"
            ),
        )


def object_size(storage: Storage, key: str) -> int:
    """The listed size of one object (named StorageError when it vanished)."""
    for obj in storage.list(key):
        if obj.key == key:
            return obj.size
    raise StorageError(f"{key}: no such object (deleted after listing?)")


def last_lines(text: str, n: int = 6) -> str:
    """The last `n` non-blank lines of a tool's output, on one line."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def raise_causes(causes: list[DrillError]) -> None:
    """Raise the causes, if any, as one error of the first one's type: the root cause first,
    its consequences after "; then "."""
    if causes:
        raise type(causes[0])("; then ".join(str(c) for c in causes))


PIPE_OPEN_SECONDS = 60


def psql_input(pg: PostgresContainer, dbname: str, label: str) -> tuple[list[str], tuple | None]:
    """The psql command line (ON_ERROR_STOP, quiet) of a session into `dbname`, and the named
    pipe in the target's inbox it reads (host path, container path), made here; no pipe
    (None) when the inbox does not work: psql then reads `docker exec`'s stdin."""
    argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null", "-d", dbname]
    pipe = pg.inbox_paths(f"{dbname}-{label}-{secrets.token_hex(4)}.sql")
    if pipe is not None:
        os.mkfifo(pipe[0], 0o600)
        argv += ["-f", pipe[1]]
    return argv, pipe


def open_pipe(path: os.PathLike[str], psql: subprocess.Popen, timeout: float) -> BinaryIO | None:
    """The named pipe's write end once psql has opened it; None if psql exited first."""
    deadline = time.monotonic() + min(timeout, PIPE_OPEN_SECONDS)
    while time.monotonic() < deadline:
        fd = open_if_read(path)
        if fd is not None:
            return os.fdopen(fd, "wb", buffering=0)
        if psql.poll() is not None:
            return None
        time.sleep(0.005)
    psql.kill()
    raise StepTimeout(f"psql did not open its input within {PIPE_OPEN_SECONDS} s")
