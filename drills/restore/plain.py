"""Plain SQL restores: one pass over the script, from the storage to psql.

    storage -> sha256 -> gunzip (in process) -> DumpScan -> named pipe -> psql ON_ERROR_STOP

A reader thread pulls the object from the storage and hashes it; a pump thread inflates gzip
in process (ISA-L, else zlib: less CPU than a gunzip process and one pipe fewer; zstd still goes
through its own process), reads the script as it passes (`drills.restore.dumpscan.DumpScan`: the
roles each block refers to are created before psql gets the block, the completion marker,
what the dump declares, statements that must not run as written) and writes it to psql.

A dump large enough for it to pay off is restored on several sessions, as pg_restore --jobs
restores an archive, in three steps, each a barrier: the pre-data section through the one
psql; the rows of every table the script creates cut into pieces at line ends, each piece a
COPY on whichever session is free (`drills.restore.lanes`, from `FAN_OUT_MIN_BYTES` stored);
the post-data section (the index builds and foreign-key checks), held back and run on
several sessions once the data is in (`drills.restore.postdata`, from `PARALLEL_MIN_BYTES`).

Causes, in order of blame: the storage failing; the bytes disagreeing with the manifest
(the rest of the object is still read and hashed when psql stops early, so the size or
checksum is only blamed when the bytes themselves disagree); the compressed stream corrupt
or ending early; the pump's own failure (a role that cannot be created, a script for two
databases); then psql's error.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import signal
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from drills.config.errors import DrillError, IntegrityError, StorageError
from drills.restore import progress
from drills.restore.common import (
    Drain,
    RestoreError,
    RestoreResult,
    RoleMaker,
    Secrets,
    decrypting,
    died,
    open_pipe,
    psql_input,
    raise_causes,
    tool_failure,
    wait_all,
)
from drills.restore.dumpscan import DumpScan
from drills.restore.lanes import Fanout, Lanes
from drills.restore.postdata import run_post_data
from drills.runtime.gpg import GpgPipe
from drills.runtime.postgres import PostgresContainer
from drills.storage import Storage
from drills.storage.catalog import Backup
from drills.storage.manifest import HashingReader

CHUNK = 1024 * 1024
# Inflated output per step: a highly compressible megabyte must not become a gigabyte in RAM.
# With the chunks queued between the storage reader and the pump, these set the plain path's
# memory: 16 chunks and 4 MiB steps peaked a drill at 138 MB, 4 and 2 MiB at 112 MB, in the
# same time (bench, 1.39 GB estate).
INFLATE_MAX = 2 * CHUNK
QUEUED_CHUNKS = 4
COMPRESSIONS = ("gzip", "zstd", "none")
ZSTD = ["zstd", "-dc", "-q"]
# The script size (decompressed) from which the post-data section runs on several sessions.
PARALLEL_MIN_BYTES = 64 * 1024 * 1024
# The stored size from which table data is loaded on several sessions (`drills.restore.lanes`):
# below it, starting the sessions costs more than they save.
FAN_OUT_MIN_BYTES = 16 * 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
try:
    # ISA-L inflates the same streams, with the same checks (CRC-32 and length of every
    # member), in about 40% of zlib's CPU time: 1.1 s against 2.6 s for 768 MB.
    from isal import isal_zlib as _inflater

    _INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, _inflater.error)
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the same format
    _inflater = zlib
    _INFLATE_ERRORS = (zlib.error,)
_GZIP_MAGIC = b"\x1f\x8b"


def restore_plain(
    storage: Storage,
    backup: Backup,
    pg: PostgresContainer,
    dbname: str,
    timeout: float,
    roles: RoleMaker,
    secrets: Secrets | None = None,
    sessions: int = 1,
) -> RestoreResult:
    """Stream a plain SQL dump into `dbname` through psql, once; raise with a named cause.
    An encrypted dump goes through `gpg --decrypt` first (no plaintext on disk). With
    `sessions` > 1 a large dump's post-data section runs on that many sessions
    (`drills.restore.postdata`)."""
    started = time.monotonic()
    if backup.compression not in COMPRESSIONS:
        raise RestoreError(f"{backup.key}: unknown compression {backup.compression!r}")
    with contextlib.ExitStack() as stack:
        gpg = stack.enter_context(decrypting(backup, secrets)) if backup.encrypted else None
        return _stream(storage, backup, pg, dbname, timeout, roles, gpg, started, sessions)


def _stream(
    storage: Storage,
    backup: Backup,
    pg: PostgresContainer,
    dbname: str,
    timeout: float,
    roles: RoleMaker,
    gpg: GpgPipe | None,
    started: float,
    sessions: int,
) -> RestoreResult:
    psql_argv, pipe = psql_input(pg, dbname, "script")
    psql = subprocess.Popen(
        pg.exec_argv(psql_argv, interactive=pipe is None),
        stdin=subprocess.DEVNULL if pipe else subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    errors = {"psql": Drain(psql.stderr)}
    unzstd = None
    scan = DumpScan(database=dbname)
    manifest = backup.manifest
    try:
        sink = psql.stdin if pipe is None else open_pipe(pipe[0], psql, timeout)
        _widen(sink)
        # The stored bytes go to gpg (when encrypted), then zstd (when zstd): the reader
        # writes into the first stage, the pump reads the last one's output.
        into = source = None
        if gpg is not None:
            into, source = gpg.proc.stdin, _FileSource(gpg.proc.stdout)
            _widen(gpg.proc.stdout)
        if backup.compression == "zstd":
            unzstd = subprocess.Popen(
                ZSTD,
                stdin=gpg.proc.stdout if gpg is not None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            errors["zstd"] = Drain(unzstd.stderr)
            _widen(unzstd.stdout)
            if gpg is None:
                into = unzstd.stdin
            else:
                gpg.proc.stdout.close()  # zstd holds it now
            source = _FileSource(unzstd.stdout)
        if into is None:
            into = source = _ChunkPipe()
        gunzip = _Gunzip(backup.key) if backup.compression == "gzip" else None
        # With a manifest, bytes the consumer never took are still read and hashed, so that
        # a size or checksum is only blamed when the bytes themselves disagree.
        reader = _Reader(storage, backup.key, into, drain=manifest is not None)
        pump = _Pump(source, sink, scan, roles, gunzip, split_post_data=sessions > 1)
        if sessions > 1 and backup.size >= FAN_OUT_MIN_BYTES:
            pump.fan_out(_Target(pg, dbname, psql, sessions, timeout))
        if sink is None:
            pump.stopped = True  # psql exited before it opened its input; its error says why
        reader.start()
        pump.start()
        procs = [p for p in (gpg.proc if gpg else None, unzstd, psql) if p is not None]
        what = f"restore of {backup.key}"
        try:
            wait_all(procs, [reader, pump], timeout, what)
            if pump.fanout is not None and pump.fanout.lanes is not None:
                pump.fanout.lanes.wait(max(1.0, timeout - (time.monotonic() - started)), what)
        except DrillError:
            for lanes in pump.fanout.all() if pump.fanout is not None else ():
                lanes.kill()
            raise
    finally:
        if pipe is not None:
            with contextlib.suppress(OSError):
                os.unlink(pipe[0])
    causes: list[DrillError] = []
    if reader.error is not None:
        causes.append(reader.error)
    if manifest is not None and reader.error is None and reader.complete:
        try:
            reader.hashed.verify(manifest.sha256, manifest.bytes, backup.key)
        except IntegrityError as exc:
            causes.append(exc)
    # gpg and zstd killed by SIGPIPE only saw their reader stop first: its error is the cause.
    if gpg is not None and gpg.proc.returncode not in (0, -signal.SIGPIPE):
        causes.append(gpg.error(backup.key))
    if unzstd is not None and unzstd.returncode not in (0, -signal.SIGPIPE):
        detail = errors["zstd"].text().strip() or f"exit {unzstd.returncode}"
        causes.append(
            IntegrityError(f"{backup.key}: zstd stream is corrupt or ends early ({detail})")
        )
    if pump.error is not None:
        causes.append(pump.error)
    if psql.returncode != 0:
        output = errors["psql"].text()
        died(pg, backup, causes, output)  # first: the target's death explains the rest
        causes.append(tool_failure(backup, "psql", output))
    for lanes in pump.fanout.all() if pump.fanout is not None else ():
        causes += lanes.errors()
        for output in lanes.failures():
            died(pg, backup, causes, output)
            cause = tool_failure(backup, "psql", output)
            if "COPY " in output and isinstance(cause, RestoreError):
                cause = RestoreError(f"{cause} ({PIECES_NOTE})")
            causes.append(cause)
    raise_causes(causes)
    stages = {"load": round(time.monotonic() - started, 3)}
    if pump.post_data is not None:
        progress.step("indexes and constraints")
        stages.update(
            run_post_data(
                pg,
                backup,
                dbname,
                scan.preamble or b"",
                bytes(pump.post_data).decode(errors="surrogateescape"),
                timeout=max(1.0, timeout - (time.monotonic() - started)),
                sessions=sessions,
            )
        )
    seconds = time.monotonic() - started
    how = "a named pipe" if pipe else "docker exec's stdin"
    spread = pump.fanout is not None and pump.fanout.spread
    return RestoreResult(
        bytes_read=reader.hashed.bytes_read,
        sha256=reader.hashed.sha256,
        seconds=seconds,
        method=f"stream {'gpg -> ' if gpg else ''}{backup.compression} -> psql (ON_ERROR_STOP) "
        f"through {how}"
        + (f"; table data on {sessions} sessions" if spread else "")
        + (f"; post-data on {sessions} sessions" if pump.post_data is not None else ""),
        stages=stages,
        facts=scan,
        notes=[f"not run as written: {what}" for what in scan.rewritten[:10]],
    )


def _widen(stream: BinaryIO | None) -> None:
    """A 1 MiB pipe buffer: fewer wake-ups per megabyte than the default 64 KiB."""
    if stream is not None:
        with contextlib.suppress(OSError, AttributeError, ValueError):
            fcntl.fcntl(stream.fileno(), F_SETPIPE_SZ, CHUNK)


class _ChunkPipe:
    """A bounded hand-over of chunks between two threads, with a pipe's manners: a write
    after the reader went is a BrokenPipeError, a read after the writer closed is b""."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes] = queue.Queue(QUEUED_CHUNKS)
        self._reader_gone = threading.Event()

    def write(self, data: bytes) -> None:
        while not self._reader_gone.is_set():
            try:
                self._queue.put(data, timeout=0.1)
                return
            except queue.Full:
                continue
        raise BrokenPipeError

    def close(self) -> None:
        """The writer is done (the reader gets b"" after the last chunk)."""
        with contextlib.suppress(BrokenPipeError):
            self.write(b"")

    def read_chunk(self) -> bytes:
        return self._queue.get()

    def reader_close(self) -> None:
        self._reader_gone.set()


class _FileSource:
    """A decompressor's stdout, read a chunk at a time."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def read_chunk(self) -> bytes:
        return os.read(self.stream.fileno(), CHUNK)

    def reader_close(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.close()


class _Gunzip:
    """gzip inflated in process, every member to its end; corruption and a missing end of
    stream are named with the compressed byte where they show."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.consumed = 0
        self._inflate = _inflater.decompressobj(wbits=31)

    def inflate(self, data: bytes) -> Iterator[bytes]:
        """The inflated bytes of the next compressed chunk, at most INFLATE_MAX at a time."""
        while data:
            if self._inflate.eof:
                if not data.startswith(_GZIP_MAGIC):
                    raise IntegrityError(
                        f"{self.key}: gzip stream is corrupt: bytes after its end at "
                        f"compressed byte {self.consumed}"
                    )
                self._inflate = _inflater.decompressobj(wbits=31)  # another member follows
            try:
                out = self._inflate.decompress(data, INFLATE_MAX)
            except _INFLATE_ERRORS as exc:
                raise IntegrityError(
                    f"{self.key}: gzip stream is corrupt near compressed byte {self.consumed} "
                    f"({exc})"
                ) from None
            rest = self._inflate.unused_data if self._inflate.eof else self._inflate.unconsumed_tail
            self.consumed += len(data) - len(rest)
            data = rest
            if out:
                yield out

    def finish(self) -> None:
        """The compressed stream ended: it must have ended where gzip ends."""
        if not self._inflate.eof:
            raise IntegrityError(
                f"{self.key}: gzip stream is corrupt or ends early: it stops at compressed byte "
                f"{self.consumed} without gzip's end of stream (a truncated upload or copy?)"
            )


class _Reader(threading.Thread):
    """Copies a storage object into a pipe, hashing it; remembers the first error.

    When the pipe's reader stops early, `drain` keeps reading (and hashing) to the end of the
    object, so its size and checksum can still be compared with the manifest.
    """

    def __init__(self, storage: Storage, key: str, sink, *, drain: bool) -> None:
        super().__init__(daemon=True, name=f"read {key}")
        self.storage, self.key, self.sink, self.drain = storage, key, sink, drain
        self.hashed: HashingReader = HashingReader(_Empty())
        self.error: BaseException | None = None
        self.complete = False
        """The whole object was read (passed on, or drained after the reader stopped)."""
        self.count = progress.counter()

    def run(self) -> None:
        try:
            self.hashed = HashingReader(self.storage.open(self.key))
            with self.hashed:
                writing = True
                while chunk := self.hashed.read(CHUNK):
                    self.count.done += len(chunk)
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


class _Pump(threading.Thread):
    """Inflates (gzip), scans and writes the script to psql, creating the roles each block
    refers to before psql gets it. Stops when psql stops (its error is the cause); keeps the
    first error of its own."""

    def __init__(
        self,
        source,
        sink: BinaryIO | None,
        scan: DumpScan,
        roles: RoleMaker,
        gunzip: _Gunzip | None,
        split_post_data: bool = False,
    ) -> None:
        super().__init__(daemon=True, name="pump")
        self.source, self.sink, self.scan, self.roles = source, sink, scan, roles
        self.gunzip = gunzip
        self.error: DrillError | None = None
        self.stopped = False
        self.split_post_data = split_post_data
        self.post_data: bytearray | None = None
        """The post-data section, held back for `drills.restore.postdata` when it was split
        off (a dump large enough for parallel sessions to pay off)."""
        self.fanout: Fanout | None = None
        self._target: _Target | None = None

    def fan_out(self, target: _Target) -> None:
        """Load the table data on several sessions of `target` (`drills.restore.lanes`)."""
        self._target = target
        self.fanout = Fanout(self.scan, self._write, self._open_lanes)

    def _open_lanes(self, ended: Lanes | None) -> Lanes | None:
        """The sessions for the table data, once the single psql has run the pre-data
        section (`ended` None); one session for the rest of the script once `ended` are
        done (a barrier). None when a session before failed: its error is the cause."""
        target = self._target
        if ended is None:
            self._close_sink()
            try:
                target.psql.wait(timeout=target.timeout)
            except subprocess.TimeoutExpired:
                return None  # the restore's own bound names it
            if target.psql.returncode != 0:
                return None
        else:
            ended.wait(target.timeout, "the table data")
            if ended.failures() or ended.errors():
                return None
        sessions = target.sessions if ended is None else 1
        preamble = self.scan.preamble or b""
        return Lanes(target.pg, target.dbname, preamble, sessions, target.timeout)

    def _close_sink(self) -> None:
        if self.sink is not None:
            with contextlib.suppress(OSError):
                self.sink.close()
            self.sink = None

    def run(self) -> None:
        try:
            while not self.stopped:
                chunk = self.source.read_chunk()
                if not chunk:
                    if self.gunzip is not None:
                        self.gunzip.finish()
                    self._send(self.scan.end())
                    break
                for piece in self.gunzip.inflate(chunk) if self.gunzip else (chunk,):
                    self._send(self.scan.feed(piece))
                    if self.stopped:
                        break
        except DrillError as exc:
            self.error = exc
        except OSError as exc:
            self.error = RestoreError(f"passing the script to psql failed: {exc}")
        finally:
            self.source.reader_close()
            self._close_sink()
            if self.fanout is not None:
                self.fanout.finish()

    def _send(self, ready: bytes | memoryview) -> None:
        if self.scan.new_roles:
            self.roles.ensure(self.scan.new_roles)
            self.scan.new_roles = set()
        if self.post_data is not None:
            self.post_data += ready
            return
        split = self.scan.post_data_split
        if split is not None and self.split_post_data and self._worth_it(len(ready) - split):
            events = [event for event in self.scan.copy_events if event[0] <= split]
            self._route(memoryview(ready)[:split], events)
            self.post_data = bytearray(ready[split:])
            self._close_sink()  # psql ends with the data; post-data runs in sessions
            if self.fanout is not None:
                self.fanout.finish()
            return
        self._route(ready, self.scan.copy_events)

    def _route(self, ready: bytes | memoryview, events: list) -> None:
        if self.fanout is None:
            self._write(ready)
            return
        self.fanout.send(ready, events)
        if self.fanout.stopped:
            self.stopped = True

    def _worth_it(self, held: int) -> bool:
        """Parallel post-data pays off for a large load only: below it, one psql is quicker
        than starting the sessions."""
        return bool(self.scan.preamble) and self.scan.passed - held >= PARALLEL_MIN_BYTES

    def _write(self, ready: bytes | memoryview) -> None:
        if self.sink is None:
            self.stopped = True
            return
        view = memoryview(ready)
        try:
            while view:
                view = view[self.sink.write(view) :]
        except BrokenPipeError:
            self.stopped = True  # psql stopped reading: its exit status names why


@dataclass(frozen=True)
class _Target:
    """Where the table data's sessions go: the restore target, and the single psql that
    runs the script up to the data."""

    pg: PostgresContainer
    dbname: str
    psql: subprocess.Popen
    sessions: int
    timeout: float


PIECES_NOTE = (
    "the table's rows were loaded in pieces on several sessions: line numbers count from "
    "the start of a piece"
)


class _Empty:
    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass
