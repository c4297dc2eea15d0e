"""`drill backup database`: pg_dump of one database, with a manifest, uploaded and pruned.

The seed runbook ran ``pg_dump | gzip > <db>_<ts>.sql.gz`` without pipefail, so a failed
pg_dump still left a valid-looking .gz. Here every process's exit code is checked and the dump
is renamed to its final name only when all of them exited 0.

The row counts in the manifest are taken in the very snapshot pg_dump dumps (exported with
``pg_export_snapshot()`` and handed over with ``--snapshot``), so a restore must reproduce
them exactly even while the database keeps changing.

Example::

    dest = Destination("database/", storage=open_storage("s3://b"), local_dir=Path("/b"))
    result = backup_database(dest, "drishti_production", dsn="host=db user=backup")
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import IO

from drills import __version__
from drills.backup.common import (
    BackupResult,
    Destination,
    HashingWriter,
    atomic_file,
    atomic_path,
    utcnow,
)
from drills.backup.plausibility import database_causes
from drills.backup.run import Run
from drills.backup.series import Series
from drills.backup.source import Bounds, Target, lock_wait, snapshot
from drills.backup.verify import file_digests
from drills.config import redact_text
from drills.config.errors import ConfigError, DrillError, EnvironmentProblem
from drills.runtime.gpg import Encryption
from drills.storage.manifest import FileEntry, Manifest

FORMATS = ("plain", "custom", "directory")
COMPRESSIONS = ("gzip", "zstd", "none")
COMPRESSORS = {"gzip": ["gzip", "-c"], "zstd": ["zstd", "-q", "-c", "-T0"]}
PLAIN_EXTENSIONS = {"gzip": ".sql.gz", "zstd": ".sql.zst", "none": ".sql"}
CHUNK = 1 << 20
# pg_dump's messages when --lock-wait-timeout ran out (it is a statement_timeout on its LOCK
# TABLE statements; a parallel worker's own lock says "could not obtain lock"), and the table
_LOCK_FAILED = re.compile(
    r"Query was: LOCK TABLE (\S+) IN|could not obtain lock on relation \"([^\"]+)\""
)


def extension(format: str, compression: str) -> str:
    """The file name ending of a dump: .sql.gz (the seed's), .sql.zst, .sql, .dump or .dir."""
    if format == "plain":
        return PLAIN_EXTENSIONS[compression]
    return ".dump" if format == "custom" else ".dir"


def backup_database(
    dest: Destination,
    name: str,
    *,
    dsn: str | None = None,
    format: str = "plain",
    compression: str = "gzip",
    exact_count_max_bytes: int = 100_000_000,
    bounds: Bounds | None = None,
    pg_dump: str = "pg_dump",
    encryption: Encryption | None = None,
) -> BackupResult:
    """Dump the database `name` (file names ``<name>_<YYYYMMDD_HHMMSS><ext>``) to `dest`.

    `dsn` is a libpq connection string or URI; unset, or where it leaves a parameter out,
    libpq's PG* environment variables apply (and the database defaults to `name`). `bounds`
    limit every query's lock wait and run time, and pg_dump's lock wait. With `encryption`
    a plain dump goes through gpg before it touches the disk (``.sql.gz.gpg``); the manifest's
    sha256 is of the stored, encrypted bytes.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown dump format {format!r} (expected one of {FORMATS})")
    if compression not in COMPRESSIONS:
        raise ConfigError(f"unknown compression {compression!r} (expected {COMPRESSIONS})")
    target = Target.of(dsn, name)
    bounds = bounds or Bounds()
    tool_version = _pg_dump_version(pg_dump)
    compress = _compress_options(format, compression, tool_version)
    ext = extension(format, compression)
    if format == "plain" and compression != "none":
        _need(COMPRESSORS[compression][0])
    if encryption is not None:
        if format != "plain":
            # pg_restore needs random access to an archive: restoring an encrypted one would
            # mean a plaintext copy on disk.
            raise ConfigError(
                f'[database] encrypt works with format = "plain" only (a {format}-format '
                "dump could not be restored without its plaintext on disk)"
            )
        ext += ".gpg"

    with Run(dest, Series("database", dest.prefix, f"{name}_")) as run, dest.workdir() as work:
        # taken before the snapshot, so the manifest's start is never after the data's time
        started = utcnow()
        with snapshot(target, bounds) as snap:
            run.check_space(work, compression)
            filename = run.name(started, ext, directory=format == "directory")
            final = work / filename
            tables = snap.tables(exact_count_max_bytes)
            objects = snap.inventory()
            argv = [pg_dump, f"--dbname={target.conninfo}", "--no-password"]
            argv += [f"--lock-wait-timeout={bounds.lock_ms}"]
            argv += [f"--snapshot={snap.snapshot}"] if snap.snapshot else []
            dump = _Dump(target, bounds, final)
            files: tuple[FileEntry, ...] = ()
            if format == "plain":
                size, digest, etags = dump.plain(argv, compression, encryption)
            elif format == "custom":
                size, digest, etags = dump.file([*argv, "--format=custom", *compress])
            else:
                files, etags = dump.directory([*argv, "--format=directory", *compress])
                size, digest = sum(f.size for f in files), None
        manifest = Manifest(
            kind="database",
            started_at=started,
            finished_at=utcnow(),
            format=format,
            compression=compression,
            encrypted=encryption is not None,
            bytes=size,
            sha256=digest,
            producer_version=__version__,
            database=snap.database,
            server_version=snap.server_version,
            pg_dump_version=tool_version,
            tables=tables,
            files=files,
            extra={
                "snapshot": bool(snap.snapshot),
                "database_bytes": snap.database_bytes,
                "inventory": objects,
            },
        )
        causes = database_causes(tables, size, run.previous(compression))
        return run.finish(final, run.mark(manifest, causes), etags)


class _Dump:
    """pg_dump into `final`, three ways; a failure names the tool, its cause and, for a lock
    wait, who holds the lock."""

    def __init__(self, target: Target, bounds: Bounds, final: Path) -> None:
        self.target = target
        self.bounds = bounds
        self.final = final

    def plain(
        self, argv: list[str], compression: str, encryption: Encryption | None = None
    ) -> tuple[int, str, dict[str, str | None]]:
        """``pg_dump | compressor [| gpg] > final`` with pipefail semantics; hashed as
        written."""
        compressor = COMPRESSORS.get(compression)
        with (
            tempfile.TemporaryFile() as dump_err,
            tempfile.TemporaryFile() as comp_err,
            contextlib.ExitStack() as stack,
            atomic_file(self.final) as out,
        ):
            writer = HashingWriter(out)
            dump = subprocess.Popen(
                [*argv, "--format=plain"],
                stdout=subprocess.PIPE,
                stderr=dump_err,
                env=self.target.env(),
            )
            procs = [dump]
            try:
                source = dump.stdout
                if compressor is not None:
                    comp = subprocess.Popen(
                        compressor, stdin=dump.stdout, stdout=subprocess.PIPE, stderr=comp_err
                    )
                    procs.append(comp)
                    dump.stdout.close()  # the compressor holds the pipe; pg_dump sees it close
                    source = comp.stdout
                gpg = None
                if encryption is not None:
                    gpg = stack.enter_context(encryption.pipe(stdin=source))
                    source.close()  # gpg holds it now
                    procs.append(gpg.proc)
                    source = gpg.proc.stdout
                while block := source.read(CHUNK):
                    writer.write(block)
                source.close()
                codes = [p.wait() for p in procs]
            except BaseException:
                _kill(procs)
                raise
            if codes[0] != 0:
                raise self.failed("pg_dump", codes[0], dump_err, writer.bytes)
            if compressor is not None and codes[1] != 0:
                raise self.failed(compressor[0], codes[1], comp_err, writer.bytes)
            if gpg is not None and codes[-1] != 0:
                raise self.failed("gpg", codes[-1], gpg.stderr, writer.bytes)
        return writer.bytes, writer.sha256, {"": writer.digests.etag}

    def file(self, argv: list[str]) -> tuple[int, str, dict[str, str | None]]:
        """pg_dump writing a custom-format file itself: a seekable file records where each
        table's data is, which pg_restore -j needs. Hashed once complete."""
        with tempfile.TemporaryFile() as err, atomic_path(self.final) as partial:
            code = subprocess.run(
                [*argv, f"--file={partial}"], stderr=err, env=self.target.env(), check=False
            ).returncode
            if code != 0:
                raise self.failed("pg_dump", code, err, partial.stat().st_size)
            digests = file_digests(partial)
        return digests.bytes, digests.sha256, {"": digests.etag}

    def directory(self, argv: list[str]) -> tuple[tuple[FileEntry, ...], dict[str, str | None]]:
        """pg_dump writing a directory-format dump; every file listed with its sha256."""
        with tempfile.TemporaryFile() as err, atomic_path(self.final, directory=True) as partial:
            code = subprocess.run(
                [*argv, f"--file={partial}"], stderr=err, env=self.target.env(), check=False
            ).returncode
            paths = sorted(p for p in partial.rglob("*") if p.is_file())
            if code != 0:
                written = sum(p.stat().st_size for p in paths)
                raise self.failed("pg_dump", code, err, written)
            entries, etags = [], {}
            for path in paths:
                path.chmod(0o600)
                rel = path.relative_to(partial).as_posix()
                digests = file_digests(path)
                entries.append(FileEntry(rel, digests.bytes, 0o600, digests.sha256))
                etags[rel] = digests.etag
        return tuple(entries), etags

    def failed(self, tool: str, code: int, stderr: IO[bytes], written: int) -> DrillError:
        """The one-line error of a pipeline member that failed."""
        stderr.seek(0)
        text = stderr.read().decode(errors="replace")
        name = self.final.name
        locked = _LOCK_FAILED.search(text) if tool == "pg_dump" else None
        if locked:
            table = locked.group(1) or locked.group(2)
            doing = f"locking {table} for pg_dump ({name})"
            return lock_wait(self.target, self.bounds, doing, table)
        lines = [line.strip() for line in text.splitlines()]
        errors = [line for line in lines if "error:" in line] or [line for line in lines if line]
        cause = errors[-1] if errors else "no message"
        # pg_dump puts the server's own reason on a detail line after its error line
        server = [ln.split("server:", 1)[1].strip() for ln in lines if "message from server:" in ln]
        if server:
            cause += f" (server: {' '.join(server[-1].split())})"
        how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
        return DrillError(
            f"{name}: {tool} failed ({how}) after {written} bytes: {redact_text(cause)}; "
            "nothing was kept under that name"
        )


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()
    for proc in procs:
        proc.wait()


def _compress_options(format: str, compression: str, tool_version: str) -> list[str]:
    if format == "plain":
        return []
    if compression == "none":
        return ["--compress=0"]
    if compression == "zstd":
        if int(tool_version.split(".")[0]) < 16:
            raise ConfigError(
                f"pg_dump {tool_version} cannot compress a {format}-format dump with zstd "
                "(PostgreSQL 16+ can); use compression gzip or none"
            )
        return ["--compress=zstd"]
    return []  # pg_dump's own default for custom and directory formats is gzip


def _pg_dump_version(pg_dump: str) -> str:
    _need(pg_dump)
    result = subprocess.run([pg_dump, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"\d+(?:\.\d+)+", result.stdout)
    if result.returncode != 0 or match is None:
        raise EnvironmentProblem(f"{pg_dump} --version: unexpected answer {result.stdout!r:.80}")
    return match.group(0)


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        raise EnvironmentProblem(f"{tool}: not found on PATH; install it to take backups")
