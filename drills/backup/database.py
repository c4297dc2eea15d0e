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
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drills import __version__
from drills.backup.common import (
    BackupResult,
    Destination,
    HashingWriter,
    atomic_file,
    atomic_path,
    choose_time,
    prune,
    stamp,
    upload,
    utcnow,
    write_manifest,
)
from drills.config import redact_text
from drills.errors import ConfigError, DrillError, EnvironmentProblem
from drills.manifest import SUFFIX, FileEntry, Manifest, TableCount, sha256_file

FORMATS = ("plain", "custom", "directory")
COMPRESSIONS = ("gzip", "zstd", "none")
COMPRESSORS = {"gzip": ["gzip", "-c"], "zstd": ["zstd", "-q", "-c", "-T0"]}
PLAIN_EXTENSIONS = {"gzip": ".sql.gz", "zstd": ".sql.zst", "none": ".sql"}
EXTENSIONS = (".sql.gz", ".sql.zst", ".sql", ".dump", ".dir")
CHUNK = 1 << 20
CONNECT_TIMEOUT = "10"

# Ordinary and partition tables of the user's schemas; extension members are left out, as
# pg_dump leaves out their data.
_TABLES = """
SELECT n.nspname, c.relname, pg_total_relation_size(c.oid), c.reltuples::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


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
    pg_dump: str = "pg_dump",
) -> BackupResult:
    """Dump the database `name` (file names ``<name>_<YYYYMMDD_HHMMSS><ext>``) to `dest`.

    `dsn` is a libpq connection string or URI; unset, or where it leaves a parameter out,
    libpq's PG* environment variables apply (and the database defaults to `name`).
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown dump format {format!r} (expected one of {FORMATS})")
    if compression not in COMPRESSIONS:
        raise ConfigError(f"unknown compression {compression!r} (expected {COMPRESSIONS})")
    target = _Target.of(dsn, name)
    tool_version = _pg_dump_version(pg_dump)
    compress = _compress_options(format, compression, tool_version)
    ext = extension(format, compression)
    if format == "plain" and compression != "none":
        _need(COMPRESSORS[compression][0])

    with dest.workdir() as work:
        # chosen before the snapshot, so the manifest's start is never after the data's time
        started = choose_time(lambda ts: dest.taken(f"{name}_{ts}{ext}"))
        filename = f"{name}_{stamp(started)}{ext}"
        final = work / filename
        with _snapshot(target) as snap:
            tables = snap.tables(exact_count_max_bytes)
            argv = [pg_dump, f"--dbname={target.conninfo}", "--no-password"]
            argv += [f"--snapshot={snap.snapshot}"] if snap.snapshot else []
            files: tuple[FileEntry, ...] = ()
            if format == "plain":
                size, digest = _dump_plain(argv, target, compression, final)
            elif format == "custom":
                size, digest = _dump_file([*argv, "--format=custom", *compress], target, final)
            else:
                files = _dump_dir([*argv, "--format=directory", *compress], target, final)
                size, digest = sum(f.size for f in files), None
        manifest = Manifest(
            kind="database",
            started_at=started,
            finished_at=utcnow(),
            format=format,
            compression=compression,
            bytes=size,
            sha256=digest,
            producer_version=__version__,
            database=snap.database,
            server_version=snap.server_version,
            pg_dump_version=tool_version,
            tables=tables,
            files=files,
            extra={"snapshot": bool(snap.snapshot), "database_bytes": snap.database_bytes},
        )
        write_manifest(work / f"{filename}{SUFFIX}", manifest)
        key = dest.key(filename + ("/" if format == "directory" else ""))
        uploaded, stored_at = upload(dest, key, final, manifest)
        local = dest.local_copy(final)
    pruned = ()
    if dest.kind_dir is not None:
        pruned = prune(dest.kind_dir, _stamp_matcher(name), dest.retention_days, utcnow())
    return BackupResult("database", key, manifest, local, stored_at, uploaded, pruned=pruned)


@dataclass(frozen=True)
class _Target:
    """Where to connect: libpq parameters, the password kept apart from pg_dump's argv."""

    params: dict[str, str]
    password: str | None
    label: str

    @classmethod
    def of(cls, dsn: str | None, name: str) -> _Target:
        try:
            params = {k: str(v) for k, v in conninfo_to_dict(dsn or "").items()}
        except psycopg.ProgrammingError as exc:
            cause = redact_text(_one_line(exc))
            raise ConfigError(
                f"database dsn: not a libpq connection string or URI ({cause})"
            ) from None
        if "dbname" not in params and not os.environ.get("PGDATABASE"):
            params["dbname"] = name
        if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
            params["connect_timeout"] = CONNECT_TIMEOUT
        password = params.pop("password", None)
        dbname = params.get("dbname") or os.environ.get("PGDATABASE") or name
        host = params.get("host") or os.environ.get("PGHOST") or "the local socket"
        port = params.get("port") or os.environ.get("PGPORT")
        label = f"database {dbname} at {host}{':' + port if port else ''}"
        return cls(params, password, label)

    @property
    def conninfo(self) -> str:
        """The connection string without the password (it goes through PGPASSWORD)."""
        return make_conninfo("", **self.params)

    def env(self) -> dict[str, str]:
        """pg_dump's environment: ours, plus the DSN's password if it had one."""
        env = dict(os.environ)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env


class _Snapshot:
    """A repeatable-read transaction whose snapshot pg_dump shares; counts rows in it."""

    def __init__(self, conn: psycopg.Connection, target: _Target) -> None:
        self.conn = conn
        self.target = target
        # the first query fixes a repeatable-read transaction's snapshot: export that one
        self.snapshot: str | None
        try:
            self.snapshot = str(self._one("SELECT pg_export_snapshot()"))
        except psycopg.Error:
            # e.g. a hot standby of an old major: pg_dump then takes its own snapshot
            conn.rollback()
            self.snapshot = None
        self.database = str(self._one("SELECT current_database()"))
        self.server_version = str(self._one("SHOW server_version")).split()[0]
        # what a drill projects its restore time to (drills.projection)
        self.database_bytes = int(self._one("SELECT pg_database_size(current_database())"))

    def _one(self, query: str | sql.Composed) -> object:
        row = self.conn.execute(query).fetchone()
        return row[0] if row else None

    def tables(self, exact_count_max_bytes: int) -> tuple[TableCount, ...]:
        """Row counts: exact under the size bound (and for never-analysed tables), else
        the planner's estimate."""
        counts = []
        try:
            for schema, table, size, estimate in self.conn.execute(_TABLES).fetchall():
                if size <= exact_count_max_bytes or estimate < 0:
                    query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                        sql.Identifier(schema), sql.Identifier(table)
                    )
                    counts.append(TableCount(f"{schema}.{table}", int(self._one(query)), True))
                else:
                    counts.append(TableCount(f"{schema}.{table}", int(estimate), False))
        except psycopg.Error as exc:
            raise DrillError(f"{self.target.label}: cannot count rows: {_one_line(exc)}") from None
        return tuple(counts)


@contextlib.contextmanager
def _snapshot(target: _Target):
    """Connect, open the shared snapshot, keep it open while the block (the dump) runs."""
    try:
        conn = psycopg.connect(
            target.conninfo, password=target.password, application_name="drill-backup"
        )
    except psycopg.Error as exc:
        cause = redact_text(_one_line(exc).removeprefix("connection failed: "))
        raise DrillError(f"{target.label}: cannot connect: {cause}") from None
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        try:
            snap = _Snapshot(conn, target)
        except psycopg.Error as exc:
            raise DrillError(f"{target.label}: {_one_line(exc)}") from None
        yield snap
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()


def _dump_plain(argv: list[str], target: _Target, compression: str, final: Path):
    """``pg_dump | compressor > final`` with pipefail semantics; hashed as written."""
    compressor = COMPRESSORS.get(compression)
    with (
        tempfile.TemporaryFile() as dump_err,
        tempfile.TemporaryFile() as comp_err,
        atomic_file(final) as out,
    ):
        writer = HashingWriter(out)
        dump = subprocess.Popen(
            [*argv, "--format=plain"], stdout=subprocess.PIPE, stderr=dump_err, env=target.env()
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
            while block := source.read(CHUNK):
                writer.write(block)
            source.close()
            codes = [p.wait() for p in procs]
        except BaseException:
            _kill(procs)
            raise
        if codes[0] != 0:
            raise _failed(final.name, "pg_dump", codes[0], dump_err, writer.bytes)
        if compressor is not None and codes[1] != 0:
            raise _failed(final.name, compressor[0], codes[1], comp_err, writer.bytes)
    return writer.bytes, writer.sha256


def _dump_file(argv: list[str], target: _Target, final: Path) -> tuple[int, str]:
    """pg_dump writing a custom-format file itself: a seekable file records where each
    table's data is, which pg_restore -j needs. Hashed once complete."""
    with tempfile.TemporaryFile() as err, atomic_path(final) as partial:
        code = subprocess.run(
            [*argv, f"--file={partial}"], stderr=err, env=target.env(), check=False
        ).returncode
        if code != 0:
            raise _failed(final.name, "pg_dump", code, err, partial.stat().st_size)
        return partial.stat().st_size, sha256_file(partial)


def _dump_dir(argv: list[str], target: _Target, final: Path) -> tuple[FileEntry, ...]:
    """pg_dump writing a directory-format dump; every file listed with its sha256."""
    with tempfile.TemporaryFile() as err, atomic_path(final, directory=True) as partial:
        code = subprocess.run(
            [*argv, f"--file={partial}"], stderr=err, env=target.env(), check=False
        ).returncode
        paths = sorted(p for p in partial.rglob("*") if p.is_file())
        if code != 0:
            written = sum(p.stat().st_size for p in paths)
            raise _failed(final.name, "pg_dump", code, err, written)
        entries = []
        for path in paths:
            path.chmod(0o600)
            rel = path.relative_to(partial).as_posix()
            entries.append(FileEntry(rel, path.stat().st_size, 0o600, sha256_file(path)))
        return tuple(entries)


def _failed(name: str, tool: str, code: int, stderr: IO[bytes], written: int) -> DrillError:
    stderr.seek(0)
    lines = [line.strip() for line in stderr.read().decode(errors="replace").splitlines()]
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


def _stamp_matcher(name: str):
    pattern = re.compile(
        rf"^{re.escape(name)}_(\d{{8}}_\d{{6}})(?:{'|'.join(map(re.escape, EXTENSIONS))})$"
    )

    def stamp_of(entry: str) -> str | None:
        match = pattern.match(entry)
        return match.group(1) if match else None

    return stamp_of


def _one_line(exc: BaseException) -> str:
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
