"""Custom and directory format restores: `pg_restore --jobs` inside the restore target.

A directory-format dump is laid out in the target's inbox with its table data files as
named pipes, each fed from the storage when a pg_restore worker opens it: the download
overlaps the restore and nothing is copied first (`drills.restore.fetch.PipeFeeder`). A
custom-format dump needs random access: it is downloaded into the inbox (from S3 in
parallel ranged GETs), hashed, then restored. Without an inbox (a recovery's tools
container, an engine on another machine) the dump is streamed into the container's
filesystem as a tar archive first.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from typing import BinaryIO

from drills.config.clock import StepTimeout
from drills.config.errors import DrillError, IntegrityError, StorageError
from drills.restore import progress
from drills.restore.common import (
    Drain,
    RestoreError,
    RestoreResult,
    RoleMaker,
    died,
    in_container,
    last_lines,
    object_size,
    raise_causes,
    tool_failure,
    wait_all,
)
from drills.restore.dumpscan import DumpScan, data_entries, resolve_table
from drills.restore.fetch import Part, PipeFeeder, download
from drills.runtime.postgres import PostgresContainer
from drills.storage import Storage
from drills.storage.catalog import Backup
from drills.storage.manifest import HashingReader

WORKDIR = "/var/lib/postgresql/restore"
TOC_SECONDS = 300
_TOC_SEPARATOR = "-- drill: end of the table of contents --"
_BLOB = re.compile(r"^\d+; \d+ \d+ BLOB - (\d+) ", re.MULTILINE)
_DATA_FILE = re.compile(r"/(?P<id>\d+)\.dat(?:\.\w+)?\b")


def restore_archive(
    storage: Storage,
    backup: Backup,
    pg: PostgresContainer,
    dbname: str,
    timeout: float,
    n: int,
    roles: RoleMaker,
) -> RestoreResult:
    """Restore a custom- or directory-format dump into `dbname` with `pg_restore --jobs n`,
    once: its table of contents is read first (`read_toc`), for the roles it refers to and
    for what it declares."""
    name = f"{os.path.basename(backup.key.rstrip('/'))}-{secrets.token_hex(4)}"
    paths = pg.inbox_paths(name)
    if paths is None:
        return _restore_copied(storage, backup, pg, dbname, timeout, n, roles)
    host_path, target = paths
    argv = ["pg_restore", "--exit-on-error", "--jobs", str(n), "-d", dbname, target]
    if backup.format == "custom":
        return _restore_custom(storage, backup, pg, argv, host_path, timeout, roles)
    return _restore_directory(storage, backup, pg, argv, host_path, timeout, roles)


def read_toc(pg: PostgresContainer, backup: Backup, path: str, timeout: float) -> DumpScan:
    """What an archive declares, read by the target's own pg_restore: its schema script
    (`--schema-only --file=-`, scanned like a plain dump: objects, roles) and its list of
    entries (`--list`: which tables have data). Reads no table data: a directory dump's
    data files may already be named pipes."""
    script = 'pg_restore --list "$1" && echo "$2" && pg_restore --schema-only --file=- "$1"'
    result = in_container(
        pg,
        ["sh", "-c", script, "sh", path, _TOC_SEPARATOR],
        min(timeout, TOC_SECONDS),
        check=False,
        what=f"reading the table of contents of {backup.key}",
    )
    output = result.stdout.decode(errors="replace")
    listing, sep, schema = output.partition(_TOC_SEPARATOR + "\n")
    if result.returncode != 0 or not sep:
        detail = last_lines(result.stderr.decode(errors="replace"))
        raise IntegrityError(
            f"{backup.key}: pg_restore cannot read the archive's table of contents: {detail}"
        )
    scan = DumpScan()
    scan.feed(schema.encode())
    scan.end()
    # Large objects are TOC entries of their own that a schema-only script leaves out.
    for oid in _BLOB.findall(listing):
        scan.inventory[("large object", oid)] += 1
    scan.entries = data_entries(listing)
    for entry in scan.entries:
        table = resolve_table(entry, scan.table_names)
        if table is not None:
            scan.data_tables.add(table)
            scan.data_files[entry.dump_id] = table
    return scan


def _restore_custom(
    storage: Storage,
    backup: Backup,
    pg: PostgresContainer,
    argv: list[str],
    host_path: Path,
    timeout: float,
    roles: RoleMaker,
) -> RestoreResult:
    """Download into the inbox (hashed, checked), read its TOC, then pg_restore."""
    started = time.monotonic()
    part = _single_part(storage, backup)
    try:
        sha256 = download(storage, part, host_path)
        fetched = time.monotonic() - started
        progress.step("pg_restore")
        facts = read_toc(pg, backup, argv[-1], timeout)
        roles.ensure(facts.roles)
        remaining = max(1.0, timeout - (time.monotonic() - started))
        what = f"pg_restore of {backup.key}"
        result = in_container(pg, argv, remaining, check=False, what=what)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(host_path)
    _check_pg_restore(pg, backup, result.returncode, result.stderr.decode(errors="replace"))
    seconds = time.monotonic() - started
    return RestoreResult(
        bytes_read=part.size,
        sha256=sha256,
        seconds=seconds,
        method=f"pg_restore --jobs {argv[3]} (custom, downloaded into the container's inbox)",
        stages={"fetch": round(fetched, 3), "load": round(seconds - fetched, 3)},
        facts=facts,
    )


def _restore_directory(
    storage: Storage,
    backup: Backup,
    pg: PostgresContainer,
    argv: list[str],
    host_path: Path,
    timeout: float,
    roles: RoleMaker,
) -> RestoreResult:
    """Table data through named pipes fed while pg_restore reads them; every file checked."""
    started = time.monotonic()
    feeder = PipeFeeder(storage, _directory_parts(storage, backup), host_path)
    try:
        feeder.prepare()
        facts = read_toc(pg, backup, argv[-1], timeout)
        roles.ensure(facts.roles)
        feeder.start()
        proc = subprocess.Popen(
            pg.exec_argv(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        drain = Drain(proc.stderr)
        try:
            wait_all([proc], [], timeout, f"pg_restore of {backup.key}")
        except StepTimeout:
            feeder.abandon()
            raise
        causes: list[DrillError] = []
        try:
            feeder.finish(reader_ok=proc.returncode == 0)
        except DrillError as exc:
            # a corrupt or missing file explains a failed pg_restore
            causes.append(type(exc)(_name_data_file(str(exc), facts)))
        if proc.returncode != 0:
            output = drain.text()
            died(pg, backup, causes, output)
            failure = tool_failure(backup, "pg_restore", output)
            causes.append(type(failure)(_name_data_file(str(failure), facts)))
        elif feeder.never_opened:
            causes.append(
                IntegrityError(
                    f"{backup.key}: pg_restore never read these data files, which the dump's "
                    f"table of contents does not list: {', '.join(feeder.never_opened)} (a "
                    "table of contents from another dump?)"
                )
            )
        raise_causes(causes)
    finally:
        shutil.rmtree(host_path, ignore_errors=True)
    seconds = time.monotonic() - started
    return RestoreResult(
        bytes_read=feeder.bytes_read,
        sha256=None,
        seconds=seconds,
        method=f"pg_restore --jobs {argv[3]} (directory, streamed through named pipes)",
        stages={"load": round(seconds, 3)},
        facts=facts,
    )


def _name_data_file(message: str, facts: DumpScan) -> str:
    """A data file's error with the table whose rows it holds: "3350.dat.gz: ... (the data of
    public.transactions)"."""
    found = _DATA_FILE.search(message)
    if found is None:
        return message
    table = facts.data_files.get(int(found["id"]))
    return f"{message} (the data of {table})" if table else message


def _single_part(storage: Storage, backup: Backup) -> Part:
    manifest = backup.manifest
    return Part(
        os.path.basename(backup.key),
        backup.key,
        object_size(storage, backup.key),
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
        died(pg, backup, causes, stderr)
        causes.append(tool_failure(backup, "pg_restore", stderr))
        raise_causes(causes)


def _restore_copied(
    storage: Storage,
    backup: Backup,
    pg: PostgresContainer,
    dbname: str,
    timeout: float,
    n: int,
    roles: RoleMaker,
) -> RestoreResult:
    """Without an inbox: stream into the container's filesystem as tar while hashing."""
    started = time.monotonic()
    target = f"{WORKDIR}/{os.path.basename(backup.key.rstrip('/'))}"
    in_container(pg, ["sh", "-c", f"rm -rf {WORKDIR} && mkdir -p {WORKDIR}"], 60)
    untar = subprocess.Popen(
        pg.exec_argv(["tar", "-x", "-C", WORKDIR], interactive=True),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    drain = Drain(untar.stderr)
    sender = _TarSender(storage, backup, untar.stdin)
    sender.start()
    wait_all([untar], [sender], timeout, f"fetch of {backup.key}")
    if sender.error is not None:
        raise sender.error
    if untar.returncode != 0:
        raise RestoreError(f"{backup.key}: copy into the container failed: {drain.text()}")
    fetched = time.monotonic() - started
    facts = read_toc(pg, backup, target, timeout)
    roles.ensure(facts.roles)
    remaining = max(1.0, timeout - (time.monotonic() - started))
    argv = ["pg_restore", "--exit-on-error", "--jobs", str(n), "-d", dbname, target]
    result = in_container(pg, argv, remaining, check=False, what=f"pg_restore of {backup.key}")
    _check_pg_restore(pg, backup, result.returncode, result.stderr.decode(errors="replace"))
    in_container(pg, ["rm", "-rf", WORKDIR], 120, check=False)
    seconds = time.monotonic() - started
    return RestoreResult(
        bytes_read=sender.bytes_read,
        sha256=sender.sha256,
        seconds=seconds,
        method=f"pg_restore --jobs {n} ({backup.format}, copied through docker exec)",
        stages={"fetch": round(fetched, 3), "load": round(seconds - fetched, 3)},
        facts=facts,
    )


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
            size = object_size(self.storage, backup.key)
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
        progress.follow(reader)
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
