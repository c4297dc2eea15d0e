"""Restore engines: a database backup from storage into a Postgres the harness started.

The same engine serves drills and real recoveries. The client tools run inside the container
(the server's own major) and talk to it on its Unix socket; the backup reaches them through
the container's inbox (a bind-mounted directory, see `drills.runtime.postgres`) with no copy:

- plain SQL: storage -> sha256 -> gunzip -> the dump read as it passes -> named pipe ->
  `psql -v ON_ERROR_STOP=1` (`drills.restore.plain`);
- directory format: every table's data file is a named pipe, fed from the storage when a
  `pg_restore --jobs` worker opens it (hashed and checked on the way, see `drills.restore.fetch`);
- custom format (random access): downloaded into the inbox (parallel ranged GETs from S3)
  while hashed, then `pg_restore --jobs` (`drills.restore.archive`).

Without a usable inbox (an engine on another machine) the bytes go through `docker exec`:
the SQL stream on psql's stdin, an archive as a tar stream into the container's filesystem.
After the load, ANALYZE gives the planner its statistics (restore targets run with autovacuum
off); the database drill times it as a step of its own (`analyze_database`).

Every process's exit status is checked (pipefail semantics): a decompressor that does not
reach a clean end of stream, a psql or pg_restore error, a checksum or size mismatch each
fail with a named cause.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import psycopg

from drills.restore import progress
from drills.restore.archive import restore_archive
from drills.restore.common import RestoreError, RestoreResult, RoleMaker, Secrets, jobs
from drills.restore.plain import restore_plain
from drills.runtime.postgres import PostgresContainer
from drills.storage import Storage
from drills.storage.catalog import Backup

__all__ = ["RestoreError", "RestoreResult", "analyze_database", "jobs", "restore_database"]

# Ordinary, partitioned and materialised tables, as quoted names, the largest first.
_TABLES_BY_SIZE = """
SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY pg_total_relation_size(c.oid) DESC
"""


def restore_database(
    storage: Storage,
    backup: Backup,
    pg: PostgresContainer,
    dbname: str,
    *,
    timeout: float,
    parallel: int | None = None,
    analyze: bool = True,
    create_roles: bool = True,
    secrets: Secrets | None = None,
) -> RestoreResult:
    """Restore `backup` into a new database `dbname` of `pg`, once, then ANALYZE it (unless
    `analyze` is false: the caller times it as a step of its own); raise with a named cause.

    The roles the dump refers to (owners, grantees, policy roles) are created before the
    statements that need them run (`create_roles`; see `RoleMaker`); `result.facts` says
    what the dump declared, for the completeness and inventory checks. `secrets` open an
    encrypted (gpg) dump.
    """
    started = time.monotonic()
    n = parallel or jobs()
    _create_database(pg, dbname)
    roles = RoleMaker(pg, create=create_roles)
    # The bytes of the dump, out of the size the storage listed: the terminal's progress line.
    with progress.measuring(backup.key, backup.size):
        try:
            result = _restore_once(storage, backup, pg, dbname, timeout, n, roles, secrets)
        finally:
            roles.close()
        if analyze:
            progress.step("ANALYZE")
            remaining = max(1.0, timeout - (time.monotonic() - started))
            analyzed = analyze_database(pg, dbname, timeout=remaining, parallel=n)
    result.roles_created = list(roles.created)
    if roles.created:
        result.notes.insert(
            0, f"created roles the dump refers to (NOLOGIN): {', '.join(roles.created)}"
        )
    if analyze:
        if analyzed is None:
            result.notes.append(f"ANALYZE skipped: the restored {dbname} refuses connections")
        else:
            result.stages["analyze"] = analyzed
    result.seconds = time.monotonic() - started
    return result


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


def _restore_once(
    storage: Storage,
    backup: Backup,
    pg: PostgresContainer,
    dbname: str,
    timeout: float,
    n: int,
    roles: RoleMaker,
    secrets: Secrets | None,
) -> RestoreResult:
    if backup.format == "plain":
        return restore_plain(storage, backup, pg, dbname, timeout, roles, secrets, sessions=n)
    if backup.encrypted:
        # pg_restore needs random access to an archive: decrypting one would leave its
        # plaintext on disk, which an encrypted backup exists to avoid.
        raise RestoreError(
            f"{backup.key}: an encrypted {backup.format}-format dump cannot be restored without "
            "a plaintext copy on disk; encrypt plain dumps (`pg_dump | gzip | gpg`), as "
            "`drill backup database` does with [database] encrypt"
        )
    if backup.format in ("custom", "directory"):
        return restore_archive(storage, backup, pg, dbname, timeout, n, roles)
    raise RestoreError(f"{backup.key}: cannot restore format {backup.format!r}")


def _create_database(pg: PostgresContainer, dbname: str) -> None:
    spare = pg.take_spare_database()
    with pg.connect(autocommit=True) as conn:
        if spare is not None:
            conn.execute(f'ALTER DATABASE "{spare}" RENAME TO "{dbname}"')
        else:
            conn.execute(f'CREATE DATABASE "{dbname}"')


def _drop_database(pg: PostgresContainer, dbname: str) -> None:
    with pg.connect(autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
