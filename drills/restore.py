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
import fcntl
import os
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
from drills.dumpscan import DumpScan
from drills.errors import DrillError, IntegrityError, StorageError
from drills.fetch import open_if_read
from drills.manifest import HashingReader
from drills.restore_archive import restore_archive
from drills.restore_common import (
    Drain,
    RestoreError,
    RestoreResult,
    RoleMaker,
    died,
    jobs,
    raise_causes,
    tool_failure,
    wait_all,
)
from drills.runtime.postgres import PostgresContainer
from drills.storage import Storage

__all__ = ["RestoreError", "RestoreResult", "analyze_database", "jobs", "restore_database"]

CHUNK = 1024 * 1024
DECOMPRESSORS = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dc", "-q"], "none": None}
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
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
    create_roles: bool = True,
) -> RestoreResult:
    """Restore `backup` into a new database `dbname` of `pg`, once, then ANALYZE it (unless
    `analyze` is false: the caller times it as a step of its own); raise with a named cause.

    The roles the dump refers to (owners, grantees, policy roles) are created before the
    statements that need them run (`create_roles`; see `RoleMaker`); `result.facts` says
    what the dump declared, for the completeness and inventory checks.
    """
    started = time.monotonic()
    n = parallel or jobs()
    _create_database(pg, dbname)
    roles = RoleMaker(pg, create=create_roles)
    try:
        result = _restore_once(storage, backup, pg, dbname, timeout, n, roles)
    finally:
        roles.close()
    result.roles_created = list(roles.created)
    if roles.created:
        result.notes.insert(
            0, f"created roles the dump refers to (NOLOGIN): {', '.join(roles.created)}"
        )
    if analyze:
        remaining = max(1.0, timeout - (time.monotonic() - started))
        seconds = analyze_database(pg, dbname, timeout=remaining, parallel=n)
        if seconds is None:
            result.notes.append(f"ANALYZE skipped: the restored {dbname} refuses connections")
        else:
            result.stages["analyze"] = seconds
    result.seconds = time.monotonic() - started
    return result


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
    storage: Storage,
    backup: Backup,
    pg: PostgresContainer,
    dbname: str,
    timeout: float,
    n: int,
    roles: RoleMaker,
) -> RestoreResult:
    if backup.format == "plain":
        return _restore_plain(storage, backup, pg, dbname, timeout, roles)
    if backup.format in ("custom", "directory"):
        return restore_archive(storage, backup, pg, dbname, timeout, n, roles)
    raise RestoreError(f"{backup.key}: cannot restore format {backup.format!r}")


def _restore_plain(
    storage: Storage,
    backup: Backup,
    pg: PostgresContainer,
    dbname: str,
    timeout: float,
    roles: RoleMaker,
) -> RestoreResult:
    """storage -> sha256 -> decompressor -> `DumpScan` (roles created on the way) -> psql.

    The relay between the decompressor and psql reads the script as it passes: the roles a
    block refers to are created before psql gets the block, and the scan says afterwards
    whether the dump was whole and what it declared. No second pass over the bytes.
    """
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
    scan = DumpScan(database=dbname)
    manifest = backup.manifest
    relay: _Relay | None = None
    try:
        sink = psql.stdin if pipe is None else _open_pipe(pipe[0], psql, timeout)
        if decompress:
            decomp = subprocess.Popen(
                decompress, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            errors["decompress"] = Drain(decomp.stderr)
            feed_into, relay_from = decomp.stdin, decomp.stdout
        else:
            read_end, write_end = os.pipe()
            feed_into = os.fdopen(write_end, "wb", buffering=0)
            relay_from = os.fdopen(read_end, "rb", buffering=0)
        _widen(relay_from)
        # With a manifest, bytes the consumer never took are still read and hashed, so that
        # a size or checksum is only blamed when the bytes themselves disagree.
        feeder = _Feeder(storage, backup.key, feed_into, drain=manifest is not None)
        relay = _Relay(relay_from, sink, scan, roles)
        if sink is None:
            relay.stopped = True  # psql exited before it opened its input; its error says why
        feeder.start()
        relay.start()
        procs = [p for p in (decomp, psql) if p is not None]
        wait_all(procs, [feeder, relay], timeout, f"restore of {backup.key}")
    finally:
        if pipe is not None:
            with contextlib.suppress(OSError):
                os.unlink(pipe[0])
    reader = feeder.reader
    # Causes in order of blame: the first one is the root, the others are its consequences.
    causes: list[DrillError] = []
    if feeder.error is not None:
        causes.append(feeder.error)
    if manifest is not None and feeder.error is None and feeder.complete:
        try:
            reader.verify(manifest.sha256, manifest.bytes, backup.key)
        except IntegrityError as exc:
            causes.append(exc)
    # A decompressor killed by SIGPIPE only saw its reader stop first: that reader's error
    # (psql's, or the relay's) is the cause.
    if decomp is not None and decomp.returncode not in (0, -signal.SIGPIPE):
        detail = errors["decompress"].text().strip() or f"exit {decomp.returncode}"
        causes.append(
            IntegrityError(
                f"{backup.key}: {backup.compression} stream is corrupt or ends early ({detail})"
            )
        )
    if relay.error is not None:
        causes.append(relay.error)
    if psql.returncode != 0:
        output = errors["psql"].text()
        died(pg, backup, causes, output)  # first: the target's death explains the rest
        causes.append(tool_failure(backup, "psql", output))
    raise_causes(causes)
    seconds = time.monotonic() - started
    how = "a named pipe" if pipe else "docker exec's stdin"
    return RestoreResult(
        bytes_read=reader.bytes_read,
        sha256=reader.sha256,
        seconds=seconds,
        method=f"stream {backup.compression} -> psql (ON_ERROR_STOP) through {how}",
        stages={"load": round(seconds, 3)},
        facts=scan,
        notes=[f"not run as written: {what}" for what in scan.rewritten[:10]],
    )


def _widen(stream: BinaryIO) -> None:
    """A 1 MiB pipe buffer: fewer wake-ups of the relay per megabyte than the default 64 KiB."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(stream.fileno(), F_SETPIPE_SZ, CHUNK)


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
    """Copies a storage object into a pipe, hashing it; remembers the first error.

    When the pipe's reader stops early, `drain` keeps reading (and hashing) to the end of the
    object, so its size and checksum can still be compared with the manifest.
    """

    def __init__(self, storage: Storage, key: str, sink: BinaryIO, *, drain: bool) -> None:
        super().__init__(daemon=True, name=f"feed {key}")
        self.storage, self.key, self.sink, self.drain = storage, key, sink, drain
        self.reader: HashingReader = HashingReader(_Empty())
        self.error: BaseException | None = None
        self.complete = False
        """The whole object was read (written on, or drained after the reader stopped)."""

    def run(self) -> None:
        try:
            self.reader = HashingReader(self.storage.open(self.key))
            with self.reader:
                writing = True
                while chunk := self.reader.read(CHUNK):
                    if not writing:
                        continue
                    try:
                        self.sink.write(chunk)
                    except BrokenPipeError:
                        if not self.drain:
                            return  # nothing to compare the rest with; the reader's error rules
                        writing = False
                self.complete = True
        except StorageError as exc:
            self.error = exc
        except Exception as exc:
            self.error = StorageError(f"{self.key}: reading from storage failed: {exc}")
        finally:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.sink.close()


class _Relay(threading.Thread):
    """Moves the decompressed script to psql through a `DumpScan`, creating the roles each
    block refers to before psql gets that block. Stops reading when psql stops (its
    error is the cause); keeps the first error of its own."""

    def __init__(self, source: BinaryIO, sink: BinaryIO | None, scan: DumpScan, roles: RoleMaker):
        super().__init__(daemon=True, name="relay")
        self.source, self.sink, self.scan, self.roles = source, sink, scan, roles
        self.error: DrillError | None = None
        self.stopped = False

    def run(self) -> None:
        fd = self.source.fileno()
        try:
            while not self.stopped:
                chunk = os.read(fd, CHUNK)
                ready = self.scan.feed(chunk) if chunk else self.scan.end()
                if self.scan.new_roles:
                    self.roles.ensure(self.scan.new_roles)
                try:
                    _write_all(self.sink, ready)
                except BrokenPipeError:
                    self.stopped = True  # psql stopped reading: its exit status names why
                if not chunk:
                    break
        except DrillError as exc:
            self.error = exc
        except OSError as exc:
            self.error = RestoreError(f"passing the script to psql failed: {exc}")
        finally:
            for stream in (self.sink, self.source):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def _write_all(sink: BinaryIO | None, data: bytes | memoryview) -> None:
    if sink is None:
        raise BrokenPipeError
    view = memoryview(data)
    while view:
        written = sink.write(view)
        view = view[written:] if written is not None else view[len(view) :]


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
