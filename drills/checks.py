"""Verifications of a restored database: tables, data, configured SQL, counts, amcheck.

Each check records its evidence (what was found, what was expected, the SQL run) into the
drill record; none of them raises on a failed expectation, so every check runs and the
report shows them all. The verdict is drawn afterwards from the record.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from drills.errors import DrillError
from drills.manifest import Manifest
from drills.record import DrillRecord

USER_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 1, 2
"""

BTREE_INDEXES = """
SELECT c.oid, n.nspname || '.' || c.relname
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_am am ON am.oid = c.relam
WHERE am.amname = 'btree' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND i.indisvalid
"""


def connect_restored(target, dbname: str) -> psycopg.Connection:
    """Connect to a restored database; a refusal is a named cause, not a driver traceback."""
    try:
        return target.connect(dbname)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DrillError(f"the restored database {dbname} refuses connections: {reason}") from None


def count_users(conn: psycopg.Connection, record: DrillRecord) -> int | None:
    """The restored `users` count for the app-level smoke check; None (and a failed check)
    when the table cannot be counted."""
    try:
        return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[0]
        record.check("users countable in the restored database", False, detail)
        return None


def _split(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return (schema or "public"), table


def _count(conn: psycopg.Connection, schema: str, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}.{}").format(
        sql.Identifier(schema), sql.Identifier(table)
    )
    return int(conn.execute(query).fetchone()[0])


def check_database(
    conn: psycopg.Connection,
    record: DrillRecord,
    manifest: Manifest | None,
    sql_checks: tuple[str, ...] = (),
    amcheck: bool = True,
) -> None:
    """Run every database check against a restored database, recording each result."""
    conn.autocommit = True
    tables = [(s, t) for s, t in conn.execute(USER_TABLES).fetchall()]
    record.check(
        "at least one table",
        bool(tables),
        f"{len(tables)} tables restored" if tables else "the restored database has no tables",
    )
    counts = {(s, t): _count(conn, s, t) for s, t in tables}
    total = sum(counts.values())
    record.check(
        "data present",
        total > 0,
        f"{total} rows in {len(tables)} tables" if total else "every restored table is empty",
    )
    if ("public", "users") in counts:
        users = counts[("public", "users")]
        record.check("users count > 0", users > 0, f"SELECT count(*) FROM users -> {users}")
    for query in sql_checks:
        _sql_check(conn, record, query)
    if manifest is not None and manifest.tables:
        _manifest_counts(record, manifest, counts)
    else:
        record.notes.append("no manifest row counts: restored counts could not be compared")
    if amcheck:
        _amcheck(conn, record)


def _sql_check(conn: psycopg.Connection, record: DrillRecord, query: str) -> None:
    try:
        row = conn.execute(query).fetchone()
    except psycopg.Error as exc:
        record.check(f"SQL: {query}", False, f"error: {str(exc).strip().splitlines()[0]}")
        return
    value = None if row is None else row[0]
    record.check(f"SQL: {query}", value is True, f"returned {value!r} (must be true)")


def _manifest_counts(
    record: DrillRecord, manifest: Manifest, counts: dict[tuple[str, str], int]
) -> None:
    mismatches, missing, compared = [], [], 0
    for table in manifest.tables:
        key = _split(table.name)
        if key not in counts:
            missing.append(table.name)
            continue
        if table.exact:
            compared += 1
            if counts[key] != table.rows:
                mismatches.append(f"{table.name}: manifest {table.rows}, restored {counts[key]}")
    record.check(
        "tables listed in the manifest exist",
        not missing,
        f"missing: {', '.join(missing)}" if missing else f"{len(manifest.tables)} tables present",
    )
    record.check(
        "row counts equal the manifest's exact counts",
        not mismatches,
        "; ".join(mismatches) if mismatches else f"{compared} tables compared, all equal",
    )


def _amcheck(conn: psycopg.Connection, record: DrillRecord) -> None:
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        indexes = conn.execute(BTREE_INDEXES).fetchall()
        for oid, _name in indexes:
            conn.execute("SELECT bt_index_check(%s::regclass)", (oid,))
    except psycopg.Error as exc:
        record.check("amcheck (btree indexes)", False, str(exc).strip().splitlines()[0])
        return
    record.check("amcheck (btree indexes)", True, f"{len(indexes)} btree indexes verified")
