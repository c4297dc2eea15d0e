"""`drill backup base --import PATH`: a `pg_basebackup` made elsewhere, stored as ours.

People take base backups by hand or with their own scripts: plain format (``-Fp``: a data
directory), tar format (``-Ft``: ``base.tar`` and, with the default ``-X stream``,
``pg_wal.tar``), compressed (``-z``: ``.tar.gz``; also ``.zst``, ``.lz4``). This importer
reads any of them, checks it with `pg_verifybackup` against PostgreSQL's own
``backup_manifest`` when it has one (with the WAL it carries, if any), and writes it in the
layout `drill backup base` writes: ``base/<ts>/base.tar.gz``, ``pg_wal.tar.gz`` when it
carries WAL, ``backup_manifest``, and our manifest beside them. The drill then uses it like
its own.

What the backup says of itself is read by `drills.backup.basebackup`.

A tar-format backup is unpacked into the staging directory to be verified (the
`pg_verifybackup` of PostgreSQL 15 to 17 reads directories only): it needs that much room.

Example::

    result = import_base(destination(config, "base"), "/backups/basebackup-2025-01-15")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

from drills.backup.base import (
    BASE_TAR,
    PG_MANIFEST,
    base_manifest,
    find_tool,
    finish_base,
    seal,
    system_identifier,
)
from drills.backup.basebackup import (
    Source,
    backup_history,
    find_source,
    label_time,
    newest_mtime,
    read_file,
    read_label,
    segment_size,
    server_major,
    superuser_of,
    wal_files,
    wal_range_of,
)
from drills.backup.common import BackupResult, Destination, atomic_path, os_error
from drills.backup.run import Run
from drills.backup.series import Series
from drills.config.errors import DrillError, IntegrityError
from drills.storage import Storage
from drills.storage.walcodec import chunks
from drills.storage.walfile import (
    SEGMENT,
    format_lsn,
)

WAL_TAR = "pg_wal.tar.gz"
CHUNK = 1 << 20


def import_base(
    dest: Destination,
    path: str | os.PathLike[str],
    *,
    superuser: str | None = None,
    storage: Storage | None = None,
    wal_prefix: str = "wal/",
    archive_dir: str | None = None,
    timeout: float = 1800.0,
) -> BackupResult:
    """Verify the pg_basebackup output at `path` and store it as a base backup of ours.

    `storage`/`wal_prefix` and `archive_dir` are where the backup history file and archived
    WAL are looked for when the backup does not carry what the manifest needs.
    """
    source = find_source(path)
    with dest.workdir() as work, _unpacked(source, work, timeout) as data:
        major = server_major(data)
        has_wal = any(SEGMENT.match(p.name) for p in wal_files(data))
        verified = _verify(source, data, major, has_wal, timeout)
        label = read_label(data / "backup_label")
        history = backup_history(label, storage, wal_prefix, archive_dir)
        wal = wal_range_of(source, label, history)
        seg = segment_size(data, label, storage, wal_prefix)
        sysid = system_identifier(read_file(data / "global" / "pg_control"))
        who, who_source = superuser_of(data, superuser)
        started = label_time(label.get("START TIME")) or newest_mtime(source.path)
        ended, ended_source = stop_time(history), "backup history file"
        if ended is None:
            ended, ended_source = newest_mtime(source.path), "the backup's newest file time"
            source.notes.append(
                "no backup history file archived: the end time is the newest file time of the "
                "backup, by this machine's clock"
            )
        with Run(dest, Series("base", dest.prefix)) as run:
            _refuse_twice(run, wal, sysid)
            run.check_space(work)
            name = run.name(started, directory=True)
            final = work / name
            with atomic_path(final, directory=True) as partial:
                _store_base(source, data, partial / BASE_TAR, timeout)
                if has_wal:
                    _pack(data / "pg_wal", [p.name for p in wal_files(data)], partial / WAL_TAR)
                if source.manifest is not None:
                    shutil.copyfile(source.manifest, partial / PG_MANIFEST)
                files, etags = seal(partial)
            manifest = base_manifest(
                started=started,
                finished=ended,
                server_version=major,
                files=files,
                wal=wal,
                segment_size=seg,
                system_identifier=sysid,
                superuser=who,
                ended_at=ended,
                extra={
                    "label": label.get("LABEL", ""),
                    "imported_from": str(source.path),
                    "pg_basebackup_format": source.format,
                    "wal_included": has_wal,
                    "verified": verified,
                    "superuser_source": who_source,
                    "ended_at_source": ended_source,
                    "import_notes": source.notes,
                },
            )
            return finish_base(run, final, manifest, etags)


@contextlib.contextmanager
def _unpacked(source: Source, work: Path, timeout: float) -> Iterator[Path]:
    """The backup as a directory: the plain one itself, a tar one unpacked under `work`."""
    if source.format == "plain":
        yield source.path
        return
    unpacked = Path(tempfile.mkdtemp(prefix=".import-", dir=work))
    try:
        assert source.tar is not None
        _untar(source.tar, source.tar_compression, unpacked, timeout)
        if source.wal_tar is not None:
            (unpacked / "pg_wal").mkdir(exist_ok=True)
            _untar(source.wal_tar, source.wal_compression, unpacked / "pg_wal", timeout)
        yield unpacked
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def _untar(archive: Path, compression: str, into: Path, timeout: float) -> None:
    _tar(
        ["tar", "-xf", "-", "-C", str(into)],
        str(archive),
        timeout,
        feed=chunks(archive, compression),
    )


def _verify(source: Source, data: Path, major: str, has_wal: bool, timeout: float) -> bool:
    """pg_verifybackup against backup_manifest (and the WAL the backup carries)."""
    if source.manifest is None:
        source.notes.append("no backup_manifest (pg_basebackup --no-manifest): not verified")
        return False
    tool, _ = find_tool("pg_verifybackup", int(major))
    argv = [tool, f"--manifest-path={source.manifest}"]
    argv += [] if has_wal else ["--no-parse-wal"]
    try:
        done = subprocess.run(
            [*argv, str(data)], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise DrillError(f"{source.path}: pg_verifybackup ran past {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
        raise IntegrityError(
            f"{source.path}: pg_verifybackup failed: {' | '.join(lines[-4:])}; nothing was imported"
        )
    if not has_wal:
        source.notes.append("verified without WAL (taken with -X none): the archive must hold it")
    return True


def _refuse_twice(run: Run, wal: dict[str, int], sysid: int) -> None:
    same = {"start_lsn": format_lsn(wal["start"]), "system_identifier": str(sysid)}
    for stored in run.stored:
        extra = stored.manifest.extra if stored.manifest else {}
        if all(extra.get(k) == v for k, v in same.items()):
            raise DrillError(f"this base backup is stored already as {stored.key}; not twice")


def _store_base(source: Source, data: Path, target: Path, timeout: float) -> None:
    """base.tar.gz: a gzip tar as pg_basebackup -z wrote it, else packed from the data."""
    if source.format == "tar" and source.tar_compression == "gzip":
        assert source.tar is not None
        shutil.copyfile(source.tar, target)
        return
    entries = sorted(p.name for p in data.iterdir() if p.name not in (PG_MANIFEST, "pg_wal"))
    _pack(data, entries, target, empty_dirs=("pg_wal",), timeout=timeout)


def _pack(
    directory: Path,
    entries: list[str],
    target: Path,
    *,
    empty_dirs: tuple[str, ...] = (),
    timeout: float = 1800.0,
) -> None:
    """`tar` of `entries` of `directory` (plus empty `empty_dirs`), gzip level 1, to target."""
    argv = ["tar", "-cf", "-", "-C", str(directory), "--no-recursion", *empty_dirs]
    _tar([*argv, "--recursion", *entries], str(directory), timeout, out=target)


def _tar(
    argv: list[str],
    what: str,
    timeout: float,
    *,
    feed: Iterator[bytes] | None = None,
    out: Path | None = None,
) -> None:
    """Run tar, feeding it `feed` on stdin, or gzipping (level 1) what it writes into `out`."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL if feed is None else subprocess.PIPE,
        stdout=subprocess.DEVNULL if out is None else subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        if feed is not None:
            with proc.stdin:
                for block in feed:
                    proc.stdin.write(block)
        if out is not None:
            # level 1: a data directory is mostly pages of which half are free space
            compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
            with open(out, "wb") as sink:
                while block := proc.stdout.read(CHUNK):
                    sink.write(compressor.compress(block))
                sink.write(compressor.flush())
    except BrokenPipeError:
        pass  # tar stopped reading: its exit status says why
    except OSError as exc:
        proc.kill()
        raise os_error(exc.filename or what, exc) from None
    finally:
        code, errors = _ended(proc, timeout)
    if code != 0:
        raise IntegrityError(f"{what}: tar failed: {errors or f'exit {code}'}")


def _ended(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Wait for a tar process whose stream is done: its exit status and error output."""
    errors = proc.stderr.read().decode(errors="replace").strip()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.wait(timeout=timeout), errors


def stop_time(history: dict[str, str]) -> datetime | None:
    """The backup's end by the server's clock: the history file's ``STOP TIME`` plus 1 s.

    PostgreSQL writes it to the second, truncated, after the end-of-backup record: a target
    in that second can lie before the point where the backup is consistent, and a recovery
    to it fails ("requested recovery stop point is before consistent recovery point").
    """
    stop = label_time(history.get("STOP TIME"))
    return stop + timedelta(seconds=1) if stop is not None else None
