"""Verifications of a restored database: whole, faithful, checked, and what it holds.

Each check records its evidence (what was found, what was expected, the SQL run) into the
drill record; none of them raises on a failed expectation, so every check runs and the
report shows them all. The verdict is drawn afterwards from the record. The rungs:

- completeness: the dump reached pg_dump's completion marker (plain) and every table it
  declares has its data in it (`DumpScan`, read while the bytes streamed);
- fidelity: every object the dump (and the manifest) declares exists after the restore, row
  counts equal the manifest's exact counts, amcheck on the indexes and tables;
- the profile of what was restored (rows per table, objects, bytes), returned for the
  plausibility checks against history (`drills.checks.plausibility`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from drills.config.errors import DrillError
from drills.record import DrillRecord
from drills.restore import inventory
from drills.storage.manifest import Manifest

USER_TABLES = """
SELECT n.nspname, c.relname, c.relkind = 'p', pg_relation_size(c.oid), c.reltuples::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 1, 2
"""

# Indexes amcheck can verify: btree, with storage of their own (a partitioned table's index
# has none: its partitions' indexes are checked instead), valid, not another session's temp.
BTREE_INDEXES = """
SELECT c.oid, n.nspname || '.' || c.relname, pg_relation_size(c.oid)
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_am am ON am.oid = c.relam
WHERE am.amname = 'btree' AND c.relkind = 'i' AND c.relpersistence <> 't' AND i.indisvalid
  AND i.indisready AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 3
"""
PARTITIONED_INDEXES = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'I' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""
# Tables verify_heapam can read: ordinary tables and materialised views (their TOAST too).
HEAP_TABLES = """
SELECT c.oid, n.nspname || '.' || c.relname, pg_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 3
"""
AMCHECK_SECONDS = 600.0
AMCHECK_WORKERS = 2


@dataclass(frozen=True)
class CheckLimits:
    """How far the database checks go: exact counts up to a size, amcheck within a time."""

    exact_count_max_bytes: int = 100_000_000
    """Tables larger than this are counted by the planner's estimate (after ANALYZE)."""
    amcheck_seconds: float = AMCHECK_SECONDS
    """Time for amcheck (indexes and heap together); what is left unchecked is counted."""
    tables_without_data: tuple[str, ...] = ()
    """Tables the dump is known to carry without data (pg_dump --exclude-table-data)."""


@dataclass
class DatabaseProfile:
    """What a restore holds: rows per table (exact or estimated), objects, bytes."""

    rows: dict[str, int] = field(default_factory=dict)
    exact: dict[str, bool] = field(default_factory=dict)
    database_bytes: int | None = None
    inventory: inventory.Inventory = field(default_factory=inventory.Inventory)

    @property
    def total_rows(self) -> int:
        """Rows in every table."""
        return sum(self.rows.values())

    def as_dict(self) -> dict:
        """The profile as drill.json and the history keep it."""
        return {
            "tables": len(self.rows),
            "total_rows": self.total_rows,
            "database_bytes": self.database_bytes,
            "rows": self.rows,
            "estimated": sorted(name for name, exact in self.exact.items() if not exact),
            "objects": inventory.summary(self.inventory),
            "inventory": inventory.to_json(self.inventory),
        }


def connect_restored(target, dbname: str) -> psycopg.Connection:
    """Connect to a restored database; a refusal is a named cause, not a driver traceback."""
    try:
        return target.connect(dbname)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DrillError(f"the restored database {dbname} refuses connections: {reason}") from None


def count_for_app(
    conn: psycopg.Connection, record: DrillRecord, count_sql: str | None = None
) -> tuple[int, str] | None:
    """The count the app's API must report, and the query that gave it: `count_sql`
    (`[app] count_sql`), else the `users` table's count when there is such a table.

    None with a note when there is nothing to count; None and a failed check when the query
    fails or gives no single integer.
    """
    if count_sql is None:
        if conn.execute("SELECT to_regclass('users')").fetchone()[0] is None:
            record.notes.append(
                "no users table and no [app] count_sql: the count through the API is not compared"
            )
            return None
        count_sql = "SELECT count(*) FROM users"
    name = "the count for the API runs on the restored database"
    try:
        rows = conn.execute(count_sql).fetchall()
    except psycopg.Error as exc:
        conn.rollback()
        record.check(name, False, f"{count_sql}: {str(exc).strip().splitlines()[0]}")
        return None
    value = rows[0][0] if len(rows) == 1 and len(rows[0]) == 1 else None
    if isinstance(value, bool) or not isinstance(value, int):
        record.check(name, False, f"{count_sql}: expected one integer, got {rows[:2]!r}")
        return None
    return value, count_sql


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
    *,
    facts=None,
    limits: CheckLimits | None = None,
    target=None,
) -> DatabaseProfile:
    """Run every database check against a restored database, recording each result; return
    the profile of what it holds.

    `facts` is what the dump declared while it streamed (`RestoreResult.facts`); `target`
    (the restore target) lets amcheck work on two connections at once.
    """
    limits = limits or CheckLimits()
    conn.autocommit = True
    if facts is not None:
        _completeness(record, facts, limits)
    profile = DatabaseProfile()
    profile.inventory = inventory.read_inventory(conn)
    if facts is not None:
        _declared(record, "the dump", facts.inventory, profile.inventory)
    declared = inventory.from_json(manifest.extra.get("inventory")) if manifest else None
    if declared is not None:
        _declared(record, "the manifest", declared, profile.inventory)
    tables = conn.execute(USER_TABLES).fetchall()
    record.check(
        "at least one table",
        bool(tables),
        f"{len(tables)} tables restored" if tables else "the restored database has no tables",
    )
    exact_in_manifest = {t.name for t in manifest.tables if t.exact} if manifest else set()
    for schema, table, partitioned, size, estimate in tables:
        if partitioned:
            continue  # its rows are its partitions'
        name = f"{schema}.{table}"
        # Never-analysed tables have no estimate (-1): they are counted.
        exact = size <= limits.exact_count_max_bytes or name in exact_in_manifest or estimate < 0
        profile.rows[name] = _count(conn, schema, table) if exact else int(estimate)
        profile.exact[name] = exact
    total = profile.total_rows
    record.check(
        "data present",
        total > 0,
        f"{total} rows in {len(tables)} tables" if total else "every restored table is empty",
    )
    if "public.users" in profile.rows:
        users = profile.rows["public.users"]
        record.check("users count > 0", users > 0, f"SELECT count(*) FROM users -> {users}")
    for query in sql_checks:
        _sql_check(conn, record, query)
    if manifest is not None and manifest.tables:
        _manifest_counts(record, manifest, profile.rows)
    else:
        record.notes.append("no manifest row counts: restored counts could not be compared")
    profile.database_bytes = int(
        conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    )
    if amcheck:
        _amcheck(conn, record, limits.amcheck_seconds, target)
    return profile


def _completeness(record: DrillRecord, facts, limits: CheckLimits) -> None:
    ending = facts.ending()
    if ending is not None:
        never = facts.tables_without_data()
        if never:
            ending += f"; the data of {_names(never)} never came"
        record.check("the dump is complete", False, ending)
        return  # what the dump lacks follows from where it ends
    detail = f"pg_dump's completion marker reached; {facts.headers} object entries read"
    if facts.entries:
        detail = f"the archive's table of contents: {facts.headers} objects, "
        detail += f"{len(facts.entries)} data entries, every one restored"
    record.check("the dump is complete", True, detail)
    excused = set(limits.tables_without_data)
    lacking = [t for t in facts.tables_without_data() if t not in excused]
    record.check(
        "every table's data is in the dump",
        not lacking,
        (
            f"no data for {_names(lacking)} in the dump (made with --schema-only or "
            "--exclude-table-data? list such tables in [database] tables_without_data)"
        )
        if lacking
        else f"{len(facts.data_tables)} tables with their data"
        + (f"; {len(excused)} excused by [database] tables_without_data" if excused else ""),
    )


def _declared(record: DrillRecord, source: str, declared, present) -> None:
    absent = inventory.missing(declared, present)
    count = sum(declared.values())
    record.check(
        f"every object {source} declares was restored",
        not absent,
        f"declared by {source} but missing after the restore: {inventory.describe(absent)}"
        if absent
        else f"{count} objects ({_kinds(inventory.summary(declared))}) all present",
    )


def _kinds(summary: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in summary.items())


def _names(names: Iterable[str], limit: int = 10) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _sql_check(conn: psycopg.Connection, record: DrillRecord, query: str) -> None:
    try:
        row = conn.execute(query).fetchone()
    except psycopg.Error as exc:
        record.check(f"SQL: {query}", False, f"error: {str(exc).strip().splitlines()[0]}")
        return
    value = None if row is None else row[0]
    record.check(f"SQL: {query}", value is True, f"returned {value!r} (must be true)")


def _manifest_counts(record: DrillRecord, manifest: Manifest, counts: dict[str, int]) -> None:
    mismatches, missing, compared = [], [], 0
    for table in manifest.tables:
        schema, name = _split(table.name)
        key = f"{schema}.{name}"
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


def _amcheck(conn: psycopg.Connection, record: DrillRecord, seconds: float, target) -> None:
    """bt_index_check on every btree index with storage, verify_heapam on every table (on
    majors that have it), two at a time, within `seconds`; counts what was left."""
    deadline = time.monotonic() + seconds
    try:
        created = conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'amcheck')"
        ).fetchone()[0]
        conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        heapam = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'verify_heapam')"
        ).fetchone()[0]
        indexes = conn.execute(BTREE_INDEXES).fetchall()
        parents = int(conn.execute(PARTITIONED_INDEXES).fetchone()[0])
        tables = conn.execute(HEAP_TABLES).fetchall() if heapam else []
    except psycopg.Error as exc:
        record.check("amcheck (btree indexes)", False, _first_line(exc))
        return
    dbname = conn.info.dbname
    work = [("index", oid, name) for oid, name, _ in indexes]
    work += [("heap", oid, name) for oid, name, _ in tables]
    outcome = _Amcheck(target, conn, dbname, deadline)
    outcome.run(work)
    if created:
        # The restored database keeps only what the dump made: amcheck goes again.
        try:
            conn.execute("DROP EXTENSION IF EXISTS amcheck")
        except psycopg.Error:
            record.notes.append("amcheck could not be dropped from the restored database")
    skipped = f"; {parents} partitioned-table indexes skipped (no storage of their own)"
    record.check(
        "amcheck (btree indexes)",
        not outcome.failed["index"],
        "; ".join(outcome.failed["index"])
        if outcome.failed["index"]
        else outcome.summary("index", len(indexes), "btree indexes verified")
        + (skipped if parents else ""),
    )
    if not heapam:
        record.notes.append("verify_heapam is not available on this major: tables not checked")
        return
    record.check(
        "amcheck (tables: verify_heapam)",
        not outcome.failed["heap"],
        "; ".join(outcome.failed["heap"])
        if outcome.failed["heap"]
        else outcome.summary("heap", len(tables), "tables verified, no corruption"),
    )


class _Amcheck:
    """Runs the checks on up to `AMCHECK_WORKERS` connections until the deadline."""

    def __init__(self, target, conn: psycopg.Connection, dbname: str, deadline: float) -> None:
        self.target, self.conn, self.dbname, self.deadline = target, conn, dbname, deadline
        self.failed: dict[str, list[str]] = {"index": [], "heap": []}
        self.done: dict[str, int] = {"index": 0, "heap": 0}
        self.late: dict[str, int] = {"index": 0, "heap": 0}

    def run(self, work: list[tuple[str, int, str]]) -> None:
        if not work:
            return
        if self.target is None:
            self._worker(self.conn, work)
            return
        lanes = [work[i::AMCHECK_WORKERS] for i in range(AMCHECK_WORKERS)]
        with ThreadPoolExecutor(AMCHECK_WORKERS) as pool:
            list(pool.map(self._lane, lanes))

    def _lane(self, work: list[tuple[str, int, str]]) -> None:
        if not work:
            return
        with self.target.connect(self.dbname, autocommit=True) as conn:
            self._worker(conn, work)

    def _worker(self, conn: psycopg.Connection, work: list[tuple[str, int, str]]) -> None:
        for what, oid, name in work:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.late[what] += 1
                continue
            try:
                conn.execute(f"SET statement_timeout = {max(1, int(left * 1000))}")
                if what == "index":
                    conn.execute("SELECT bt_index_check(%s::regclass)", (oid,))
                else:
                    rows = conn.execute(
                        "SELECT blkno, msg FROM verify_heapam(%s::regclass, check_toast => true)"
                        " LIMIT 3",
                        (oid,),
                    ).fetchall()
                    if rows:
                        found = "; ".join(f"block {b}: {m}" for b, m in rows)
                        self.failed[what].append(f"{name}: {found}")
                        continue
            except psycopg.errors.QueryCanceled:
                self.late[what] += 1
                continue
            except psycopg.Error as exc:
                self.failed[what].append(f"{name}: {_first_line(exc)}")
                continue
            self.done[what] += 1

    def summary(self, what: str, total: int, words: str) -> str:
        text = f"{self.done[what]} of {total} {words}"
        if self.late[what]:
            text += f"; {self.late[what]} not checked within the time bound"
        return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
