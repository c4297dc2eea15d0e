"""Fetching a backup for a restore: ranged parallel downloads from S3 come out whole and
checked; named pipes are fed in whatever order their reader opens them, and every file,
read or not, is checked against the manifest."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

from drills.config.errors import IntegrityError
from drills.restore.fetch import PART, Part, PipeFeeder, download
from drills.storage import LocalStorage


def _blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _part(name: str, key: str, data: bytes, **changes) -> Part:
    fields = {"sha256": hashlib.sha256(data).hexdigest(), "expected_size": len(data)}
    fields.update(changes)
    return Part(name, key, len(data), **fields)


def test_ranged_download_from_s3_is_whole_and_checked(s3_bucket, tmp_path: Path):
    data = _blob(3 * PART + 12345, seed=1)  # several ranges, the last one short
    s3_bucket.put_bytes("database/app.dump", data)
    target = tmp_path / "app.dump"

    digest = download(s3_bucket, _part("app.dump", "database/app.dump", data), target)

    assert digest == hashlib.sha256(data).hexdigest()
    assert target.read_bytes() == data
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_ranged_download_with_a_wrong_checksum_is_named(s3_bucket, tmp_path: Path):
    data = _blob(2 * PART + 1, seed=2)
    s3_bucket.put_bytes("database/app.dump", data)
    part = _part("app.dump", "database/app.dump", data, sha256="0" * 64)

    with pytest.raises(IntegrityError, match=r"database/app\.dump: sha256 mismatch"):
        download(s3_bucket, part, tmp_path / "app.dump")


def test_an_object_shorter_than_listed_is_named(tmp_path: Path):
    store = LocalStorage(tmp_path / "store")
    data = _blob(5000, seed=3)
    store.put_bytes("database/app.dump", data[:4000])
    part = Part("app.dump", "database/app.dump", 5000)

    with pytest.raises(IntegrityError, match="object shorter than listed"):
        download(store, part, tmp_path / "app.dump")


def _directory(store: LocalStorage, files: dict[str, bytes]) -> list[Part]:
    for name, data in files.items():
        store.put_bytes(f"database/app.dir/{name}", data)
    return [_part(name, f"database/app.dir/{name}", data) for name, data in files.items()]


def _read_pipes(directory: Path, names: list[str]) -> dict[str, bytes]:
    """A reader that opens pipes one after another, in its own order, like pg_restore."""
    seen: dict[str, bytes] = {}

    def read() -> None:
        for name in names:
            with open(directory / name, "rb") as pipe:
                seen[name] = pipe.read()

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(timeout=60)
    assert not reader.is_alive()
    return seen


def test_pipes_are_fed_in_the_order_the_reader_opens_them(tmp_path: Path):
    store = LocalStorage(tmp_path / "store")
    files = {"toc.dat": b"TOC", **{f"{n}.dat.gz": _blob(300_000 + n, n) for n in (3, 4, 5)}}
    feeder = PipeFeeder(store, _directory(store, files), tmp_path / "inbox")
    feeder.prepare()
    assert (tmp_path / "inbox" / "toc.dat").read_bytes() == b"TOC"  # a plain file, first
    assert all(not (tmp_path / "inbox" / n).is_file() for n in files if n != "toc.dat")
    feeder.start()

    seen = _read_pipes(tmp_path / "inbox", ["5.dat.gz", "3.dat.gz", "4.dat.gz"])
    feeder.finish(reader_ok=True)

    assert seen == {n: d for n, d in files.items() if n != "toc.dat"}
    assert feeder.bytes_read == sum(len(d) for d in files.values())


def test_a_corrupt_file_is_named_even_when_the_reader_never_opened_it(tmp_path: Path):
    store = LocalStorage(tmp_path / "store")
    files = {"toc.dat": b"TOC", "3.dat.gz": _blob(1000, 3), "4.dat.gz": _blob(2000, 4)}
    parts = _directory(store, files)
    flipped = bytearray(files["4.dat.gz"])
    flipped[100] ^= 0xFF
    store.put_bytes("database/app.dir/4.dat.gz", bytes(flipped))
    feeder = PipeFeeder(store, parts, tmp_path / "inbox")
    feeder.prepare()
    feeder.start()
    _read_pipes(tmp_path / "inbox", ["3.dat.gz"])  # the reader stops before 4.dat.gz

    with pytest.raises(IntegrityError, match=r"database/app\.dir/4\.dat\.gz: sha256 mismatch"):
        feeder.finish(reader_ok=True)


def test_a_reader_that_fails_leaves_no_writer_behind(tmp_path: Path):
    store = LocalStorage(tmp_path / "store")
    files = {"toc.dat": b"TOC", "3.dat.gz": _blob(5_000_000, 3), "4.dat.gz": _blob(10, 4)}
    feeder = PipeFeeder(store, _directory(store, files), tmp_path / "inbox")
    feeder.prepare()
    feeder.start()
    fd = os.open(tmp_path / "inbox" / "3.dat.gz", os.O_RDONLY)
    os.read(fd, 1000)  # then the reader dies mid-file
    os.close(fd)

    feeder.finish(reader_ok=False)  # returns: nothing blocks on a pipe nobody reads

    assert threading.active_count() < 10
