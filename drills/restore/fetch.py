"""Getting a backup's bytes to where a restore reads them, checked on the way.

- `download`: one object into a local file, for formats that need random access (custom).
  From S3 the object comes in parallel ranged GETs (one GET stream is slower than a restore
  consumes), each written in place; the file is hashed in order as its written prefix grows.
  Memory stays flat whatever the size: every stream moves 1 MiB at a time.
- `read_head`: the first bytes of an object (a ranged GET on S3), for sniffing its type.
- `PipeFeeder`: a directory-format dump whose table data files are named pipes. Each pipe is
  fed from the storage when its reader (a `pg_restore --jobs` worker) opens it, so the
  download overlaps the restore and there is no temporary copy. Every file is hashed as it
  streams and checked against the manifest; files the reader never opened are hashed too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from drills.config.errors import DrillError, IntegrityError, StorageError
from drills.restore import progress
from drills.storage import Storage
from drills.storage.manifest import HashingReader

CHUNK = 1024 * 1024
PART = 16 * 1024 * 1024
PARALLEL_GETS = 4
POLL_SECONDS = 0.005
# Table data of a directory-format dump (read once, front to back, by one worker). The TOC,
# large objects and anything else are copied as plain files before the reader starts.
_STREAMED = re.compile(r"^\d+\.dat(\.(gz|lz4|zst))?$")


@dataclass(frozen=True)
class Part:
    """One object of a backup: its storage key, its size, what the manifest says of it."""

    name: str
    key: str
    size: int
    sha256: str | None = None
    expected_size: int | None = None


def download(storage: Storage, part: Part, path: Path) -> str:
    """Copy one object into `path` (created 0600); return its sha256, checked if known."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if _ranged(storage) and part.size > 2 * PART:
            digest, count = _download_ranges(storage, part, fd)
        else:
            digest, count = _download_stream(storage, part, fd)
    finally:
        os.close(fd)
    _verify(part, digest, count)
    return digest


def read_head(storage: Storage, key: str, size: int) -> bytes:
    """The first `size` bytes of an object (one ranged GET on S3, never the whole body)."""
    if not _ranged(storage):
        with storage.open(key) as stream:
            return stream.read(size)
    import botocore.exceptions

    try:
        response = storage.client.get_object(
            Bucket=storage.bucket, Key=storage.prefix + key, Range=f"bytes=0-{size - 1}"
        )
        with contextlib.closing(response["Body"]) as body:
            return body.read(size)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise StorageError(f"{storage.url}/{key}: reading its first bytes failed: {exc}") from None


def _ranged(storage: Storage) -> bool:
    return hasattr(storage, "client") and hasattr(storage, "bucket")


def _download_stream(storage: Storage, part: Part, fd: int) -> tuple[str, int]:
    count = progress.counter()
    with HashingReader(storage.open(part.key)) as reader:
        while block := reader.read(CHUNK):
            _write_all(fd, block)
            count.done += len(block)
        return reader.sha256, reader.bytes_read


def _download_ranges(storage: Storage, part: Part, fd: int) -> tuple[str, int]:
    """Parallel ranged GETs written with pwrite; hashed in order from the written file."""
    spans = [(start, min(PART, part.size - start)) for start in range(0, part.size, PART)]
    done = [threading.Event() for _ in spans]
    stop = threading.Event()
    counts = [progress.counter() for _ in spans]  # one writer each: no lock

    def fetch(index: int) -> None:
        start, length = spans[index]
        try:
            _fetch_range(storage, part, fd, start, length, stop, counts[index])
        finally:
            done[index].set()

    digest = hashlib.sha256()
    with ThreadPoolExecutor(PARALLEL_GETS, thread_name_prefix="ranged-get") as pool:
        futures = [pool.submit(fetch, i) for i in range(len(spans))]
        try:
            for index, (start, length) in enumerate(spans):
                done[index].wait()
                futures[index].result()  # raises the range's error
                for offset in range(start, start + length, CHUNK):
                    digest.update(os.pread(fd, min(CHUNK, start + length - offset), offset))
        finally:
            stop.set()
    return digest.hexdigest(), part.size


def _fetch_range(
    storage,
    part: Part,
    fd: int,
    start: int,
    length: int,
    stop: threading.Event,
    count: progress.Counter,
) -> None:
    import botocore.exceptions

    where = f"{storage.url}/{part.key}"
    position, end = start, start + length
    for attempt in range(2):  # a dropped connection mid-body is retried once, from where it was
        try:
            response = storage.client.get_object(
                Bucket=storage.bucket,
                Key=storage.prefix + part.key,
                Range=f"bytes={position}-{end - 1}",
            )
            body = response["Body"]
            while position < end and not stop.is_set():
                block = body.read(min(CHUNK, end - position))
                if not block:
                    break
                os.pwrite(fd, block, position)
                position += len(block)
                count.done += len(block)
            body.close()
            break
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if attempt or isinstance(exc, botocore.exceptions.ClientError):
                raise StorageError(
                    f"{where}: ranged read at byte {position} failed: {exc}"
                ) from None
    if position < end and not stop.is_set():
        raise IntegrityError(
            f"{part.key}: object shorter than listed (ends before byte {end} of {part.size})"
        )


class PipeFeeder:
    """Lay out a directory-format dump in `directory`: plain files, and named pipes fed on open.

    >>> feeder = PipeFeeder(storage, parts, Path("/inbox/db.dir"))  # doctest: +SKIP
    >>> feeder.prepare(); feeder.start()       # then run the reader      # doctest: +SKIP
    >>> feeder.finish(reader_ok=True)           # raises the first problem  # doctest: +SKIP
    """

    def __init__(self, storage: Storage, parts: list[Part], directory: Path) -> None:
        self.storage = storage
        self.parts = parts
        self.directory = directory
        self.bytes_read = 0
        self._pending: dict[str, Part] = {}
        self._unfinished: list[Part] = []
        self._errors: list[DrillError] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._feeds: list[threading.Thread] = []
        self._poller = threading.Thread(target=self._poll, daemon=True, name="pipe-poll")
        self.never_opened: list[str] = []
        """Data files the reader never opened although it succeeded (after `finish`)."""

    def prepare(self) -> None:
        """Create the directory (0700), its pipes, and copy the files that are not streamed."""
        self.directory.mkdir(mode=0o700)
        for part in self.parts:
            path = self.directory / part.name
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if _STREAMED.match(part.name):
                os.mkfifo(path, 0o600)
                self._pending[part.name] = part
            else:
                download(self.storage, part, path)
                self._count(part.size)

    def start(self) -> None:
        """Start feeding pipes as they are opened."""
        self._poller.start()

    def abandon(self) -> None:
        """Stop opening pipes; feeds under way end when their reader goes (with its container)."""
        self._stop.set()

    def finish(self, reader_ok: bool) -> None:
        """Stop feeding, then check what the reader did not read to its end: the files it
        left midway (a corrupt one is the likely cause of a failed reader) and, when it
        succeeded, the files it never opened. Raises the first problem found."""
        self._stop.set()
        self._poller.join()
        for feed in self._feeds:
            feed.join()  # the reader has exited: a pipe it left gives EPIPE at once
        unread = list(self._unfinished)
        if reader_ok:
            unread += list(self._pending.values())
            self.never_opened = sorted(self._pending)
        for part in unread:
            with _reported(self._errors):
                with HashingReader(self.storage.open(part.key)) as reader:
                    while reader.read(CHUNK):
                        pass
                _verify(part, reader.sha256, reader.bytes_read)
        if self._errors:
            raise self._errors[0]

    def _poll(self) -> None:
        with _reported(self._errors):
            self._poll_pipes()

    def _poll_pipes(self) -> None:
        while self._pending and not self._stop.is_set():
            opened = False
            for name, part in list(self._pending.items()):
                fd = open_if_read(self.directory / name)
                if fd is None:
                    continue
                del self._pending[name]
                feed = threading.Thread(target=self._feed, args=(part, fd), daemon=True)
                feed.start()
                self._feeds.append(feed)
                opened = True
            if not opened:
                self._stop.wait(POLL_SECONDS)

    def _feed(self, part: Part, fd: int) -> None:
        count = progress.counter()
        with _reported(self._errors), os.fdopen(fd, "wb", buffering=0) as pipe:
            with HashingReader(self.storage.open(part.key)) as reader:
                try:
                    while block := reader.read(CHUNK):
                        _write_all(pipe.fileno(), block)
                        count.done += len(block)
                except BrokenPipeError:
                    with self._lock:
                        self._unfinished.append(part)  # hashed again by finish()
                    return
                finally:
                    self._count(reader.bytes_read)
            _verify(part, reader.sha256, reader.bytes_read)

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_read += n


def open_if_read(path: Path) -> int | None:
    """The pipe opened for writing if a reader has it open, else None (never blocks)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        raise
    os.set_blocking(fd, True)
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _verify(part: Part, digest: str, count: int) -> None:
    if part.expected_size is not None and count != part.expected_size:
        hint = " (truncated?)" if count < part.expected_size else ""
        raise IntegrityError(
            f"{part.key}: size mismatch: manifest says {part.expected_size} bytes, "
            f"read {count}{hint}"
        )
    if count != part.size:
        raise IntegrityError(
            f"{part.key}: object shorter than listed ({count} of {part.size} bytes)"
            if count < part.size
            else f"{part.key}: object longer than listed ({count} of {part.size} bytes)"
        )
    if part.sha256 is not None and digest != part.sha256.lower():
        raise IntegrityError(
            f"{part.key}: sha256 mismatch: manifest says {part.sha256[:16]}…, read {digest[:16]}…"
        )


@contextlib.contextmanager
def _reported(errors: list[DrillError]):
    """Collect a DrillError (or a storage failure, named) instead of raising it."""
    try:
        yield
    except DrillError as exc:
        errors.append(exc)
    except OSError as exc:
        errors.append(StorageError(f"reading from storage failed: {exc}"))
