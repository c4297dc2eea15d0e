"""Restore engines: a database backup from storage into a Postgres the harness started.

The same engine serves drills and real recoveries. Plain SQL dumps stream with no temporary
copy: storage -> sha256 -> decompressor -> `psql -v ON_ERROR_STOP=1` inside the container (the
client tools of the server's own major). Custom and directory formats need random access:
they are streamed into the container's filesystem while hashed, then `pg_restore --jobs`.
Every process's exit status is checked (pipefail semantics): a decompressor that does not
reach a clean end of stream, a psql error, a checksum or size mismatch each fail with a
named cause.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO

from drills.catalog import Backup
from drills.clock import StepTimeout
from drills.errors import DrillError, IntegrityError, StorageError
from drills.manifest import HashingReader
from drills.runtime.postgres import PostgresContainer
from drills.storage import Storage

CHUNK = 1024 * 1024
DECOMPRESSORS = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dc", "-q"], "none": None}
WORKDIR = "/var/lib/postgresql/restore"
_MISSING_ROLE = re.compile(r'role "([^"]+)" does not exist')
MAX_ROLE_RETRIES = 5


class RestoreError(DrillError):
    """The restore itself failed (psql or pg_restore reported an error)."""


@dataclass
class RestoreResult:
    """What a restore read and how long it took."""

    bytes_read: int = 0
    sha256: str | None = None
    seconds: float = 0.0
    method: str = ""
    notes: list[str] = field(default_factory=list)


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
) -> RestoreResult:
    """Restore `backup` into a new database `dbname` of `pg`; raise with a named cause."""
    notes: list[str] = []
    created_roles: list[str] = []
    for _attempt in range(MAX_ROLE_RETRIES + 1):
        _create_database(pg, dbname)
        try:
            result = _restore_once(storage, backup, pg, dbname, timeout, parallel or jobs())
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
        result.notes = notes + result.notes
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
    decomp = None
    if decompress:
        decomp = subprocess.Popen(
            decompress, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    psql = subprocess.Popen(
        pg.exec_argv(psql_argv, interactive=True),
        stdin=decomp.stdout if decomp else subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if decomp is not None:
        decomp.stdout.close()  # psql owns the read end now
    sink = decomp.stdin if decomp else psql.stdin
    feeder = _Feeder(storage, backup.key, sink)
    errors = {"psql": _Drain(psql.stderr)}
    if decomp is not None:
        errors["decompress"] = _Drain(decomp.stderr)
    feeder.start()
    procs = [p for p in (decomp, psql) if p is not None]
    _wait_all(procs, [feeder], timeout, f"restore of {backup.key}")
    reader = feeder.reader
    # Causes in order of blame: the first one is the root, the others are its consequences.
    causes: list[DrillError] = []
    if feeder.error is not None:
        causes.append(feeder.error)
    manifest = backup.manifest
    if manifest is not None and feeder.error is None:
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
        causes.append(
            RestoreError(f"{backup.key}: psql failed: {_last_lines(errors['psql'].text())}")
        )
        died = _target_died(pg)
        if died:
            causes.insert(0, RestoreError(f"{backup.key}: {died}"))
    if causes:
        root = causes[0]
        raise type(root)("; then ".join(str(c) for c in causes))
    return RestoreResult(
        bytes_read=reader.bytes_read,
        sha256=reader.sha256,
        seconds=time.monotonic() - started,
        method=f"stream {backup.compression} -> psql (ON_ERROR_STOP)",
    )


def _restore_archive(
    storage: Storage,
    backup: Backup,
    pg: PostgresContainer,
    dbname: str,
    timeout: float,
    n: int,
) -> RestoreResult:
    """Custom/directory format: stream into the container while hashing, then pg_restore -j."""
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
    remaining = max(1.0, timeout - (time.monotonic() - started))
    argv = ["pg_restore", "--exit-on-error", "--jobs", str(n), "-d", dbname, target]
    result = _in_container(pg, argv, remaining, check=False, what=f"pg_restore of {backup.key}")
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace")
        died = _target_died(pg)
        prefix = f"{died}; then " if died else ""
        raise RestoreError(f"{backup.key}: {prefix}pg_restore failed: {_last_lines(stderr)}")
    _in_container(pg, ["rm", "-rf", WORKDIR], 120, check=False)
    return RestoreResult(
        bytes_read=sender.bytes_read,
        sha256=sender.sha256,
        seconds=time.monotonic() - started,
        method=f"pg_restore --jobs {n} ({backup.format})",
    )


class _Feeder(threading.Thread):
    """Copies a storage object into a pipe, hashing it; remembers the first error."""

    def __init__(self, storage: Storage, key: str, sink: BinaryIO) -> None:
        super().__init__(daemon=True, name=f"feed {key}")
        self.storage, self.key, self.sink = storage, key, sink
        self.reader: HashingReader | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
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
            objects = [o for o in self.storage.list(backup.key) if not o.key.endswith("/")]
            expected = {f.path: f for f in manifest.files} if manifest else {}
            seen = set()
            with tarfile.open(fileobj=self.sink, mode="w|") as tar:
                for obj in objects:
                    rel = obj.key[len(backup.key) :]
                    reader = self._add(tar, f"{root}/{rel}", obj.key, obj.size)
                    seen.add(rel)
                    entry = expected.get(rel)
                    if entry is not None:
                        reader.verify(entry.sha256, entry.size, obj.key)
            missing = sorted(set(expected) - seen)
            if missing:
                raise IntegrityError(
                    f"{backup.key}: files listed in the manifest are missing: {', '.join(missing)}"
                )
            if "toc.dat" not in seen:
                raise IntegrityError(f"{backup.key}: no toc.dat (not a directory-format dump)")
        else:
            size = self._size(backup.key)
            with tarfile.open(fileobj=self.sink, mode="w|") as tar:
                reader = self._add(tar, os.path.basename(backup.key), backup.key, size)
            if manifest is not None:
                reader.verify(manifest.sha256, manifest.bytes, backup.key)
            self.sha256 = reader.sha256

    def _size(self, key: str) -> int:
        for obj in self.storage.list(key):
            if obj.key == key:
                return obj.size
        raise StorageError(f"{key}: no such object (deleted after listing?)")

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


def _target_died(pg: PostgresContainer) -> str | None:
    """Why the restore target is gone, if it is: a killed container explains a failed client."""
    state = pg.state()
    if state == "running":
        return None
    return (
        f"the restore target container died during the restore (state {state}); "
        f"its last output: {_last_lines(pg.logs_tail(20), 3)}"
    )


def _last_lines(text: str, n: int = 6) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"
