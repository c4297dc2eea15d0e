"""Restore engines: a database backup from storage into a Postgres the harness started.

The same engine serves drills and real recoveries. The client tools run inside the container
(the server's own major) and talk to it on its Unix socket; the backup reaches them through
the container's inbox (a bind-mounted directory, see `drills.runtime.postgres`) with no copy:

- plain SQL: storage -> sha256 -> decompressor -> named pipe -> `psql -v ON_ERROR_STOP=1`;
- directory format: every table's data file is a named pipe, fed from the storage when a
  `pg_restore --jobs` worker opens it (hashed and checked on the way, see `drills.fetch`);
- custom format (random access): downloaded into the inbox (parallel ranged GETs from S3)
  while hashed, then `pg_restore --jobs` (`drills.restore_archive`).

Without a usable inbox (an engine on another machine) the bytes go through `docker exec`:
the SQL stream on psql's stdin, an archive as a tar stream into the container's filesystem.
After the load, ANALYZE gives the planner its statistics (restore targets run with autovacuum
off); the database drill times it as a step of its own (`analyze_database`).

Every process's exit status is checked (pipefail semantics): a decompressor that does not
reach a clean end of stream, a psql or pg_restore error, a checksum or size mismatch each
fail with a named cause.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import psycopg

from drills.catalog import Backup
from drills.clock import StepTimeout
from drills.errors import DrillError, IntegrityError, StorageError
from drills.fetch import open_if_read
from drills.manifest import HashingReader
from drills.restore_archive import restore_archive
from drills.restore_common import (
    Drain,
    RestoreError,
    RestoreResult,
    died,
    jobs,
    last_lines,
    raise_causes,
    wait_all,
)
from drills.runtime.postgres import PostgresContainer
from drills.storage import Storage

__all__ = ["RestoreError", "RestoreResult", "analyze_database", "jobs", "restore_database"]

CHUNK = 1024 * 1024
DECOMPRESSORS = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dc", "-q"], "none": None}
_MISSING_ROLE = re.compile(r'role "([^"]+)" does not exist')
MAX_ROLE_RETRIES = 5
PIPE_OPEN_SECONDS = 60
# Ordinary, partitioned and materialised tables, as quoted names, the largest first.
_TABLES_BY_SIZE = """
SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY pg_total_relation_size(c.oid) DESC
"""


def restore_database(
    storage: Storage,
    backup: Backup,
    pg: PostgresContainer,
    dbname: str,
    *,
    timeout: float,
    parallel: int | None = None,
    analyze: bool = True,
) -> RestoreResult:
    """Restore `backup` into a new database `dbname` of `pg`, then ANALYZE it (unless
    `analyze` is false: the caller times it as a step of its own); raise with a named cause.
    """
    started = time.monotonic()
    notes: list[str] = []
    created_roles: list[str] = []
    n = parallel or jobs()
    for _attempt in range(MAX_ROLE_RETRIES + 1):
        _create_database(pg, dbname)
        try:
            result = _restore_once(storage, backup, pg, dbname, timeout, n)
        except RestoreError as exc:
            role = _MISSING_ROLE.search(str(exc))
            if role is None or role.group(1) in created_roles:
                raise
            # Dumps carry owners; the restore target lacks the production roles. Create the
            # role and restore again into a fresh database (plain SQL cannot skip owners).
            created_roles.append(role.group(1))
            _create_role(pg, role.group(1))
            _drop_database(pg, dbname)
            continue
        if created_roles:
            notes.append(f"created roles missing from the target: {', '.join(created_roles)}")
        if analyze:
            remaining = max(1.0, timeout - (time.monotonic() - started))
            seconds = analyze_database(pg, dbname, timeout=remaining, parallel=n)
            if seconds is None:
                notes.append(f"ANALYZE skipped: the restored {dbname} refuses connections")
            else:
                result.stages["analyze"] = seconds
        result.notes = notes + result.notes
        result.seconds = time.monotonic() - started
        return result
    raise RestoreError(f"{backup.key}: too many missing roles ({', '.join(created_roles)})")


def analyze_database(
    pg: PostgresContainer, dbname: str, *, timeout: float, parallel: int | None = None
) -> float | None:
    """ANALYZE every table of a restored database, the largest first, `parallel` (default:
    the cores) at a time; return the seconds taken, None when it refuses connections (the
    validation names why).

    Restore targets run with autovacuum off, so nothing else gives the planner statistics.
    """
    n = parallel or jobs()
    started = time.monotonic()
    try:
        conn = pg.connect(dbname, autocommit=True)
    except psycopg.OperationalError:
        return None
    try:
        with conn:
            tables = [row[0] for row in conn.execute(_TABLES_BY_SIZE).fetchall()]
        if not tables:
            return 0.0
        with ThreadPoolExecutor(min(n, len(tables))) as pool:
            for _ in pool.map(
                lambda group: _analyze_tables(pg, dbname, group, timeout),
                [tables[i::n] for i in range(n)],
            ):
                pass
    except psycopg.Error as exc:
        raise RestoreError(f"ANALYZE of the restored {dbname} failed: {exc}") from None
    return round(time.monotonic() - started, 3)


def _analyze_tables(pg: PostgresContainer, dbname: str, tables: list[str], timeout: float):
    if not tables:
        return
    with pg.connect(dbname, autocommit=True) as conn:
        conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
        for table in tables:
            conn.execute(f"ANALYZE {table}")


def _restore_once(
    storage: Storage, backup: Backup, pg: PostgresContainer, dbname: str, timeout: float, n: int
) -> RestoreResult:
    if backup.format == "plain":
        return _restore_plain(storage, backup, pg, dbname, timeout)
    if backup.format in ("custom", "directory"):
        return restore_archive(storage, backup, pg, dbname, timeout, n)
    raise RestoreError(f"{backup.key}: cannot restore format {backup.format!r}")


def _restore_plain(
    storage: Storage, backup: Backup, pg: PostgresContainer, dbname: str, timeout: float
) -> RestoreResult:
    started = time.monotonic()
    if backup.compression not in DECOMPRESSORS:
        raise RestoreError(f"{backup.key}: unknown compression {backup.compression!r}")
    decompress = DECOMPRESSORS[backup.compression]
    psql_argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null", "-d", dbname]
    pipe = pg.inbox_paths(f"{dbname}-{secrets.token_hex(4)}.sql")
    if pipe is not None:
        os.mkfifo(pipe[0], 0o600)
        psql_argv += ["-f", pipe[1]]
    psql = subprocess.Popen(
        pg.exec_argv(psql_argv, interactive=pipe is None),
        stdin=subprocess.DEVNULL if pipe else subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    errors = {"psql": Drain(psql.stderr)}
    decomp = None
    try:
        sink = psql.stdin if pipe is None else _open_pipe(pipe[0], psql, timeout)
        if sink is not None and decompress:
            decomp = subprocess.Popen(
                decompress, stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.PIPE
            )
            sink.close()  # the decompressor (and psql) own it now
            sink = decomp.stdin
            errors["decompress"] = Drain(decomp.stderr)
        feeder = _Feeder(storage, backup.key, sink)
        feeder.start()
        procs = [p for p in (decomp, psql) if p is not None]
        wait_all(procs, [feeder], timeout, f"restore of {backup.key}")
    finally:
        if pipe is not None:
            with contextlib.suppress(OSError):
                os.unlink(pipe[0])
    reader = feeder.reader
    # Causes in order of blame: the first one is the root, the others are its consequences.
    causes: list[DrillError] = []
    if feeder.error is not None:
        causes.append(feeder.error)
    manifest = backup.manifest
    if manifest is not None and feeder.error is None and sink is not None:
        try:
            reader.verify(manifest.sha256, manifest.bytes, backup.key)
        except IntegrityError as exc:
            causes.append(exc)
    # A decompressor killed by SIGPIPE only saw psql stop first: psql's error is the cause.
    if decomp is not None and decomp.returncode not in (0, -signal.SIGPIPE):
        detail = errors["decompress"].text().strip() or f"exit {decomp.returncode}"
        causes.append(
            IntegrityError(
                f"{backup.key}: {backup.compression} stream is corrupt or ends early ({detail})"
            )
        )
    if psql.returncode != 0:
        output = errors["psql"].text()
        died(pg, backup, causes, output)  # first: the target's death explains the rest
        causes.append(RestoreError(f"{backup.key}: psql failed: {last_lines(output)}"))
    raise_causes(causes)
    seconds = time.monotonic() - started
    how = "a named pipe" if pipe else "docker exec's stdin"
    return RestoreResult(
        bytes_read=reader.bytes_read,
        sha256=reader.sha256,
        seconds=seconds,
        method=f"stream {backup.compression} -> psql (ON_ERROR_STOP) through {how}",
        stages={"load": round(seconds, 3)},
    )


def _open_pipe(path: os.PathLike[str], psql: subprocess.Popen, timeout: float) -> BinaryIO | None:
    """The pipe's write end once psql has opened it; None if psql exited first."""
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


class _Feeder(threading.Thread):
    """Copies a storage object into a pipe, hashing it; remembers the first error."""

    def __init__(self, storage: Storage, key: str, sink: BinaryIO | None) -> None:
        super().__init__(daemon=True, name=f"feed {key}")
        self.storage, self.key, self.sink = storage, key, sink
        self.reader: HashingReader | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.sink is None:
                return  # the consumer exited before it opened its input; its error says why
            self.reader = HashingReader(self.storage.open(self.key))
            with self.reader:
                while chunk := self.reader.read(CHUNK):
                    self.sink.write(chunk)
        except BrokenPipeError:
            pass  # the consumer stopped early; its exit status names the cause
        except StorageError as exc:
            self.error = exc
        except Exception as exc:
            self.error = StorageError(f"{self.key}: reading from storage failed: {exc}")
        finally:
            if self.sink is not None:
                with contextlib.suppress(BrokenPipeError):
                    self.sink.close()
            if self.reader is None:
                self.reader = HashingReader(_Empty())


class _Empty:
    def read(self, object_size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _create_database(pg: PostgresContainer, dbname: str) -> None:
    spare = pg.take_spare_database()
    with pg.connect(autocommit=True) as conn:
        if spare is not None:
            conn.execute(f'ALTER DATABASE "{spare}" RENAME TO "{dbname}"')
        else:
            conn.execute(f'CREATE DATABASE "{dbname}"')


def _drop_database(pg: PostgresContainer, dbname: str) -> None:
    with pg.connect(autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _create_role(pg: PostgresContainer, role: str) -> None:
    with pg.connect(autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role.replace(chr(34), "")}"')
