"""The safety dump: a copy of the database a recovery is about to replace, taken first.

`pg_dump --format=custom` of the target database, run with the client tools of the *server's*
major (an older pg_dump cannot dump a newer server) in the recovery's tools container, written
to a local file (mode 600) under a name the catalog reads, with a manifest (sha256, size, the
row counts taken in the very snapshot pg_dump dumps). The safety directory is therefore itself
a ``file://`` backup storage: the same `drill restore database` restores it.

    >>> dump = take_safety_dump(tools, "drishti", Path("/var/backups/safety"), "20250115_031200",
    ...                         timeout=1800)                               # doctest: +SKIP
    >>> dump.path  # /var/backups/safety/database/drishti_20250115_031200.dump  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from drills import __version__
from drills.config.clock import StepTimeout, human
from drills.config.errors import DrillError
from drills.recovery.target import ToolsTarget
from drills.storage.manifest import SUFFIX, Manifest, TableCount, sha256_file

PREFIX = "database/"
_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


class SafetyDumpError(DrillError):
    """The safety dump failed; the recovery stops before anything is replaced."""


@dataclass(frozen=True)
class SafetyDump:
    """A safety dump on disk, its manifest beside it."""

    path: Path
    directory: Path
    """The safety directory: a ``file://`` storage holding the dump under ``database/``."""
    key: str
    bytes: int
    sha256: str
    seconds: float
    tables: int


def dump_path(directory: Path, dbname: str, stamp: str) -> Path:
    """Where the safety dump of `dbname` taken at `stamp` goes."""
    return directory / PREFIX / f"{dbname}_{stamp}.dump"


def take_safety_dump(
    tools: ToolsTarget, dbname: str, directory: Path, stamp: str, *, timeout: float
) -> SafetyDump:
    """Dump `dbname` with `tools` into the safety directory; raise with the cause."""
    path = dump_path(directory, dbname, stamp)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SafetyDumpError(f"{path.parent}: cannot create it: {exc.strerror}") from None
    started_at = datetime.now(UTC)
    started = time.monotonic()
    partial = path.with_name(path.name + ".partial")
    with _snapshot(tools, dbname) as (snapshot, tables):
        argv = ["pg_dump", "--format=custom", "--no-password", f"--dbname={dbname}"]
        if snapshot:
            argv.append(f"--snapshot={snapshot}")
        _run_pg_dump(tools, argv, partial, timeout, dbname)
    os.replace(partial, path)
    digest = sha256_file(path)
    count = path.stat().st_size
    manifest = Manifest(
        kind="database",
        started_at=started_at,
        finished_at=datetime.now(UTC),
        format="custom",
        compression="gzip",
        bytes=count,
        sha256=digest,
        producer_version=__version__,
        database=dbname,
        server_version=tools.server.version,
        pg_dump_version=_pg_dump_version(tools),
        tables=tables,
        extra={"snapshot": bool(snapshot), "safety_dump": True, "server": tools.server.where},
    )
    manifest_path = path.with_name(path.name + SUFFIX)
    manifest_path.write_text(manifest.to_json())
    manifest_path.chmod(0o600)
    return SafetyDump(
        path, directory, PREFIX + path.name, count, digest, time.monotonic() - started, len(tables)
    )


@contextlib.contextmanager
def _snapshot(tools: ToolsTarget, dbname: str):
    """A repeatable-read snapshot pg_dump shares, and the row counts in it."""
    try:
        conn = tools.connect(dbname)
    except psycopg.Error as exc:
        raise SafetyDumpError(f"{dbname}: cannot connect for the safety dump: {exc}") from None
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        try:
            snapshot = str(conn.execute("SELECT pg_export_snapshot()").fetchone()[0])
        except psycopg.Error:
            conn.rollback()  # a standby: pg_dump takes its own snapshot, counts may differ
            snapshot = None
        counts = []
        for schema, table in conn.execute(_TABLES).fetchall():
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            rows = int(conn.execute(query).fetchone()[0])
            counts.append(TableCount(f"{schema}.{table}", rows, snapshot is not None))
        yield snapshot, tuple(counts)
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()


def _pg_dump_version(tools: ToolsTarget) -> str | None:
    result = tools.run(["pg_dump", "--version"], timeout=30)
    words = result.stdout.decode(errors="replace").split()
    return words[-1] if result.returncode == 0 and words else None


def _run_pg_dump(tools: ToolsTarget, argv: list[str], partial: Path, timeout: float, db: str):
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    try:
        out = os.fdopen(os.open(partial, flags, 0o600), "wb")
    except OSError as exc:
        raise SafetyDumpError(f"{partial}: cannot write the safety dump: {exc.strerror}") from None
    with out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(tools.exec_argv(argv), stdout=out, stderr=err)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            partial.unlink(missing_ok=True)
            raise StepTimeout(
                f"the safety dump of {db} did not finish within its bound of {human(timeout)}"
            ) from None
        if code != 0:
            err.seek(0)
            lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
            partial.unlink(missing_ok=True)
            raise SafetyDumpError(
                f"the safety dump of {db} failed (pg_dump exit {code}): "
                f"{' | '.join(lines[-3:]) or 'no message'}; nothing was replaced"
            )
