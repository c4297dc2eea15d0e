"""Restore engines: a database backup from storage into a Postgres the harness started.

The same engine serves drills and real recoveries. The client tools run inside the container
(the server's own major) and talk to it on its Unix socket; the backup reaches them through
the container's inbox (a bind-mounted directory, see `drills.runtime.postgres`) with no copy:

- plain SQL: storage -> sha256 -> decompressor -> named pipe -> `psql -v ON_ERROR_STOP=1`;
- directory format: every table's data file is a named pipe, fed from the storage when a
  `pg_restore --jobs` worker opens it (hashed and checked on the way, see `drills.fetch`);
- custom format (random access): downloaded into the inbox (parallel ranged GETs from S3)
  while hashed, then `pg_restore --jobs`.

Without a usable inbox (an engine on another machine) the bytes go through `docker exec`:
the SQL stream on psql's stdin, an archive as a tar stream into the container's filesystem.
After the load, ANALYZE gives the planner its statistics: a restore is not
done before that, and the restore targets run with autovacuum off.

Every process's exit status is checked (pipefail semantics): a decompressor that does not
reach a clean end of stream, a psql or pg_restore error, a checksum or size mismatch each
fail with a named cause.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

import psycopg

from drills.catalog import Backup
from drills.clock import StepTimeout
from drills.errors import DrillError, IntegrityError, StorageError
from drills.fetch import Part, PipeFeeder, download, open_if_read
from drills.manifest import HashingReader
from drills.runtime.postgres import PostgresContainer
from drills.storage import Storage

CHUNK = 1024 * 1024
DECOMPRESSORS = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dc", "-q"], "none": None}
WORKDIR = "/var/lib/postgresql/restore"
_MISSING_ROLE = re.compile(r'role "([^"]+)" does not exist')
MAX_ROLE_RETRIES = 5
PIPE_OPEN_SECONDS = 60
DEATH_SETTLE_SECONDS = 3.0
_CONNECTION_LOST = ("server closed the connection", "connection to server", "terminated")
# Ordinary, partitioned and materialised tables, as quoted names, the largest first.
_TABLES_BY_SIZE = """
SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY pg_total_relation_size(c.oid) DESC
"""


class RestoreError(DrillError):
    """The restore itself failed (psql or pg_restore reported an error)."""


@dataclass
class RestoreResult:
    """What a restore read and how long it took (`stages`: fetch, load, analyze seconds)."""

    bytes_read: int = 0
    sha256: str | None = None
    seconds: float = 0.0
    method: str = ""
    notes: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)


def jobs() -> int:
    """Parallel restore jobs: the cores available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


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


def _restore_once(
    storage: Storage, backup: Backup, pg: PostgresContainer, dbname: str, timeout: float, n: int
) -> RestoreResult:
    if backup.format == "plain":
        return _restore_plain(storage, backup, pg, dbname, timeout)
    if backup.format in ("custom", "directory"):
        return _restore_archive(storage, backup, pg, dbname, timeout, n)
    raise RestoreError(f"{backup.key}: cannot restore format {backup.format!r}")


def _restore_plain(
    storage: Storage, backup: Backup, pg: PostgresContainer, dbname: str, timeout: float
) -> RestoreResult:
    started = time.monotonic()
    if backup.compression not in DECOMPRESSORS:
        raise RestoreError(f"{backup.key}: unknown compression {backup.compression!r}")
    decompress = DECOMPRESSORS[backup.compression]
    psql_argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null", "-d", dbname]
    pipe = _inbox(pg, f"{dbname}-{secrets.token_hex(4)}.sql")
    if pipe is not None:
        os.mkfifo(pipe[0], 0o600)
        psql_argv += ["-f", pipe[1]]
    psql = subprocess.Popen(
        pg.exec_argv(psql_argv, interactive=pipe is None),
        stdin=subprocess.DEVNULL if pipe else subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    errors = {"psql": _Drain(psql.stderr)}
    decomp = None
    try:
        sink = psql.stdin if pipe is None else _open_pipe(pipe[0], psql, timeout)
        if sink is not None and decompress:
            decomp = subprocess.Popen(
                decompress, stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.PIPE
            )
            sink.close()  # the decompressor (and psql) own it now
            sink = decomp.stdin
            errors["decompress"] = _Drain(decomp.stderr)
        feeder = _Feeder(storage, backup.key, sink)
        feeder.start()
        procs = [p for p in (decomp, psql) if p is not None]
        _wait_all(procs, [feeder], timeout, f"restore of {backup.key}")
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
        _died(pg, backup, causes, output)  # first: the target's death explains the rest
        causes.append(RestoreError(f"{backup.key}: psql failed: {_last_lines(output)}"))
    if causes:
        root = causes[0]
        raise type(root)("; then ".join(str(c) for c in causes))
    seconds = time.monotonic() - started
    how = "named pipe" if pipe else "docker exec stdin"
    return RestoreResult(
        bytes_read=reader.bytes_read,
        sha256=reader.sha256,
        seconds=seconds,
        method=f"stream {backup.compression} -> psql (ON_ERROR_STOP) through a {how}",
        stages={"load": round(seconds, 3)},
    )


def _open_pipe(path, psql: subprocess.Popen, timeout: float) -> BinaryIO | None:
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


def _restore_archive(
    storage: Storage,
    backup: Backup,
    pg: PostgresContainer,
    dbname: str,
    timeout: float,
    n: int,
) -> RestoreResult:
    """Custom/directory format: into the container's inbox (or filesystem), pg_restore -j."""
    started = time.monotonic()
    name = f"{os.path.basename(backup.key.rstrip('/'))}-{secrets.token_hex(4)}"
    inbox = _inbox(pg, name)
    if inbox is None:
        return _restore_archive_copied(storage, backup, pg, dbname, timeout, n)
    host_path, target = inbox
    argv = ["pg_restore", "--exit-on-error", "--jobs", str(n), "-d", dbname, target]
    what = f"pg_restore of {backup.key}"
    if backup.format == "custom":
        part = _single_part(storage, backup)
        try:
            sha256 = download(storage, part, host_path)
            fetched = time.monotonic() - started
            remaining = max(1.0, timeout - fetched)
            result = _in_container(pg, argv, remaining, check=False, what=what)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(host_path)
        _check_pg_restore(pg, backup, result.returncode, result.stderr.decode(errors="replace"))
        seconds = time.monotonic() - started
        return RestoreResult(
            bytes_read=part.size,
            sha256=sha256,
            seconds=seconds,
            method=f"pg_restore --jobs {n} (custom, downloaded into the container's inbox)",
            stages={"fetch": round(fetched, 3), "load": round(seconds - fetched, 3)},
        )
    feeder = PipeFeeder(storage, _directory_parts(storage, backup), host_path)
    try:
        feeder.prepare()
        feeder.start()
        proc = subprocess.Popen(
            pg.exec_argv(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        drain = _Drain(proc.stderr)
        try:
            _wait_all([proc], [], timeout, what)
        except StepTimeout:
            feeder.abandon()
            raise
        causes: list[DrillError] = []
        try:
            feeder.finish(reader_ok=proc.returncode == 0)
        except DrillError as exc:
            causes.append(exc)
        if proc.returncode != 0:
            output = drain.text()
            _died(pg, backup, causes, output)
            causes.append(RestoreError(f"{backup.key}: pg_restore failed: {_last_lines(output)}"))
        if causes:
            raise type(causes[0])("; then ".join(str(c) for c in causes))
    finally:
        _remove_tree(host_path)
    seconds = time.monotonic() - started
    return RestoreResult(
        bytes_read=feeder.bytes_read,
        sha256=None,
        seconds=seconds,
        method=f"pg_restore --jobs {n} (directory, streamed through named pipes)",
        stages={"load": round(seconds, 3)},
    )


def _inbox(pg: PostgresContainer, name: str) -> tuple[os.PathLike[str], str] | None:
    """(host path, container path) of `name` in the target's inbox; None without one (a
    recovery's tools container, an engine on another machine)."""
    paths = getattr(pg, "inbox_paths", None)
    return paths(name) if paths is not None else None


def _single_part(storage: Storage, backup: Backup) -> Part:
    manifest = backup.manifest
    return Part(
        os.path.basename(backup.key),
        backup.key,
        _size(storage, backup.key),
        manifest.sha256 if manifest else None,
        manifest.bytes if manifest else None,
    )


def _directory_parts(storage: Storage, backup: Backup) -> list[Part]:
    """Every file of a directory-format dump, with what the manifest says of it."""
    manifest = backup.manifest
    expected = {f.path: f for f in manifest.files} if manifest else {}
    parts = []
    for obj in storage.list(backup.key):
        if obj.key.endswith("/"):
            continue
        rel = obj.key[len(backup.key) :]
        entry = expected.get(rel)
        sha256, size = (entry.sha256, entry.size) if entry else (None, None)
        parts.append(Part(rel, obj.key, obj.size, sha256, size))
    names = {p.name for p in parts}
    missing = sorted(set(expected) - names)
    if missing:
        raise IntegrityError(
            f"{backup.key}: files listed in the manifest are missing: {', '.join(missing)}"
        )
    if "toc.dat" not in names:
        raise IntegrityError(f"{backup.key}: no toc.dat (not a directory-format dump)")
    return parts


def _check_pg_restore(pg: PostgresContainer, backup: Backup, code: int, stderr: str) -> None:
    if code != 0:
        causes: list[DrillError] = []
        _died(pg, backup, causes, stderr)
        causes.append(RestoreError(f"{backup.key}: pg_restore failed: {_last_lines(stderr)}"))
        raise type(causes[0])("; then ".join(str(c) for c in causes))


def _died(pg: PostgresContainer, backup: Backup, causes: list[DrillError], output: str) -> None:
    """Name a restore target that stopped running under the restore (killed, OOM, crashed).

    The client tool's stream ends before the engine reports the container gone, so when the
    tool's output says nothing or says the server went away, the state gets a moment to
    catch up.
    """
    state = getattr(pg, "state", None)
    if state is None:
        return
    lost = not output.strip() or any(sign in output for sign in _CONNECTION_LOST)
    deadline = time.monotonic() + (DEATH_SETTLE_SECONDS if lost else 0)
    while (current := state()) == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    if current != "running":
        causes.insert(
            0,
            RestoreError(
                f"{backup.key}: the restore target container died during the restore "
                f"(now {current})"
            ),
        )


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


def _remove_tree(path: os.PathLike[str]) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _restore_archive_copied(
    storage: Storage,
    backup: Backup,
    pg: PostgresContainer,
    dbname: str,
    timeout: float,
    n: int,
) -> RestoreResult:
    """Without an inbox: stream into the container's filesystem as tar while hashing."""
    started = time.monotonic()
    target = f"{WORKDIR}/{os.path.basename(backup.key.rstrip('/'))}"
    _in_container(pg, ["sh", "-c", f"rm -rf {WORKDIR} && mkdir -p {WORKDIR}"], 60)
    untar = subprocess.Popen(
        pg.exec_argv(["tar", "-x", "-C", WORKDIR], interactive=True),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    drain = _Drain(untar.stderr)
    sender = _TarSender(storage, backup, untar.stdin)
    sender.start()
    _wait_all([untar], [sender], timeout, f"fetch of {backup.key}")
    if sender.error is not None:
        raise sender.error
    if untar.returncode != 0:
        raise RestoreError(f"{backup.key}: copy into the container failed: {drain.text()}")
    fetched = time.monotonic() - started
    remaining = max(1.0, timeout - fetched)
    argv = ["pg_restore", "--exit-on-error", "--jobs", str(n), "-d", dbname, target]
    result = _in_container(pg, argv, remaining, check=False, what=f"pg_restore of {backup.key}")
    _check_pg_restore(pg, backup, result.returncode, result.stderr.decode(errors="replace"))
    _in_container(pg, ["rm", "-rf", WORKDIR], 120, check=False)
    seconds = time.monotonic() - started
    return RestoreResult(
        bytes_read=sender.bytes_read,
        sha256=sender.sha256,
        seconds=seconds,
        method=f"pg_restore --jobs {n} ({backup.format}, copied through docker exec)",
        stages={"fetch": round(fetched, 3), "load": round(seconds - fetched, 3)},
    )


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


class _TarSender(threading.Thread):
    """Streams a backup (one object, or every object under a directory) as a tar archive."""

    def __init__(self, storage: Storage, backup: Backup, sink: BinaryIO) -> None:
        super().__init__(daemon=True, name=f"tar {backup.key}")
        self.storage, self.backup, self.sink = storage, backup, sink
        self.error: BaseException | None = None
        self.bytes_read = 0
        self.sha256: str | None = None

    def run(self) -> None:
        try:
            self._send()
        except BrokenPipeError:
            self.error = RestoreError(f"{self.backup.key}: the container stopped reading")
        except DrillError as exc:
            self.error = exc
        except Exception as exc:
            self.error = StorageError(f"{self.backup.key}: reading from storage failed: {exc}")
        finally:
            with contextlib.suppress(BrokenPipeError):
                self.sink.close()

    def _send(self) -> None:
        backup, manifest = self.backup, self.backup.manifest
        if backup.is_directory:
            root = os.path.basename(backup.key.rstrip("/"))
            with tarfile.open(fileobj=self.sink, mode="w|") as tar:
                for part in _directory_parts(self.storage, backup):
                    reader = self._add(tar, f"{root}/{part.name}", part.key, part.size)
                    reader.verify(part.sha256, part.expected_size, part.key)
        else:
            size = _size(self.storage, backup.key)
            with tarfile.open(fileobj=self.sink, mode="w|") as tar:
                reader = self._add(tar, os.path.basename(backup.key), backup.key, size)
            if manifest is not None:
                reader.verify(manifest.sha256, manifest.bytes, backup.key)
            self.sha256 = reader.sha256

    def _add(self, tar: tarfile.TarFile, name: str, key: str, size: int) -> HashingReader:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o644
        reader = HashingReader(self.storage.open(key))
        with reader:
            try:
                tar.addfile(info, reader)
            except OSError as exc:
                if "unexpected end of data" in str(exc):
                    raise IntegrityError(
                        f"{key}: object shorter than listed ({reader.bytes_read} of {size} bytes)"
                    ) from None
                raise
        self.bytes_read += reader.bytes_read
        return reader


def _size(storage: Storage, key: str) -> int:
    for obj in storage.list(key):
        if obj.key == key:
            return obj.size
    raise StorageError(f"{key}: no such object (deleted after listing?)")


class _Drain(threading.Thread):
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


class _Empty:
    def read(self, _size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _wait_all(procs: list, threads: list, timeout: float, what: str) -> None:
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


def _in_container(
    pg: PostgresContainer,
    argv: list[str],
    timeout: float,
    check: bool = True,
    what: str | None = None,
) -> subprocess.CompletedProcess:
    try:
        result = pg.run(argv, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StepTimeout(
            f"{what or argv[0]} did not finish within its bound of {timeout:.0f} s"
        ) from None
    if check and result.returncode != 0:
        raise RestoreError(f"{' '.join(argv)}: {result.stderr.decode(errors='replace').strip()}")
    return result


def _create_database(pg: PostgresContainer, dbname: str) -> None:
    with pg.connect(autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')


def _drop_database(pg: PostgresContainer, dbname: str) -> None:
    with pg.connect(autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _create_role(pg: PostgresContainer, role: str) -> None:
    with pg.connect(autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role.replace(chr(34), "")}"')


def _last_lines(text: str, n: int = 6) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"
