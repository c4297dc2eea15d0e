"""The database a dump is taken from: connecting, bounding every query, checking rights,
and naming who holds a lock the dump waits on.

Every query of the producer's own session runs under ``lock_timeout`` and
``statement_timeout``; a wait that ends in a lock timeout is reported with the table and the
session that blocks it (from ``pg_locks`` and ``pg_stat_activity``, asked on a second
connection), so that the person reading cron's mail knows whom to ask.

Example::

    target = Target.of("host=db user=backup", "drishti")
    with snapshot(target, Bounds(lock_timeout=300, statement_timeout=1800)) as snap:
        tables = snap.tables(exact_count_max_bytes=100_000_000)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drills.config import redact_text
from drills.config.errors import ConfigError, DrillError
from drills.restore import inventory
from drills.storage.manifest import TableCount

CONNECT_TIMEOUT = "10"
APPLICATION = "drill-backup"

_USER_RELATIONS = """
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
"""
# Ordinary and partition tables of the user's schemas; extension members are left out, as
# pg_dump leaves out their data.
_TABLES = f"""
SELECT n.nspname, c.relname, pg_total_relation_size(c.oid), c.reltuples::bigint
{_USER_RELATIONS} AND c.relkind = 'r'
ORDER BY 1, 2
"""
# What pg_dump needs and a role may lack: USAGE on the schema, SELECT on tables and
# sequences, and a way past row-level security (pg_dump refuses to dump filtered rows).
_DENIED = f"""
SELECT format('%I.%I', n.nspname, c.relname),
       CASE WHEN NOT has_schema_privilege(n.oid, 'USAGE')
                 THEN 'no USAGE on schema ' || quote_ident(n.nspname)
            WHEN c.relkind = 'S' AND NOT has_sequence_privilege(c.oid, 'SELECT')
                 THEN 'no SELECT on the sequence'
            WHEN c.relkind IN ('r', 'p') AND NOT has_table_privilege(c.oid, 'SELECT')
                 THEN 'no SELECT'
            WHEN c.relkind IN ('r', 'p') AND c.relrowsecurity
                 AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE'))
                 AND NOT (SELECT rolbypassrls OR rolsuper FROM pg_roles
                          WHERE rolname = current_user)
                 THEN 'row-level security applies (the role needs BYPASSRLS)'
       END
{_USER_RELATIONS} AND c.relkind IN ('r', 'p', 'S')
ORDER BY 1
"""
# Sessions holding or queueing for an ACCESS EXCLUSIVE lock: the only mode that blocks the
# ACCESS SHARE locks a dump takes.
_BLOCKERS = """
SELECT format('%I.%I', n.nspname, c.relname), l.granted, a.pid, a.usename,
       a.application_name, a.state,
       to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
       left(regexp_replace(a.query, '\\s+', ' ', 'g'), 100)
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND a.pid <> pg_backend_pid()
ORDER BY l.granted DESC, a.xact_start
LIMIT 5
"""


@dataclass(frozen=True)
class Bounds:
    """How long the producer's queries may wait for a lock, and run, in seconds."""

    lock_timeout: float = 300.0
    statement_timeout: float | None = 1800.0

    @property
    def lock_ms(self) -> int:
        """The lock timeout in milliseconds (pg_dump's --lock-wait-timeout unit)."""
        return max(1, int(self.lock_timeout * 1000))


@dataclass(frozen=True)
class Target:
    """Where to connect: libpq parameters, the password kept apart from pg_dump's argv."""

    params: dict[str, str]
    password: str | None
    label: str

    @classmethod
    def of(cls, dsn: str | None, name: str) -> Target:
        """The target of `dsn` (libpq string or URI; PG* variables fill the gaps)."""
        try:
            params = {k: str(v) for k, v in conninfo_to_dict(dsn or "").items()}
        except psycopg.ProgrammingError as exc:
            cause = redact_text(one_line(exc))
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

    def connect(self, bounds: Bounds) -> psycopg.Connection:
        """A connection whose every query is bounded; DrillError naming the cause."""
        try:
            conn = psycopg.connect(
                self.conninfo, password=self.password, application_name=APPLICATION,
                autocommit=True,
            )  # fmt: skip
        except psycopg.Error as exc:
            cause = redact_text(one_line(exc).removeprefix("connection failed: "))
            raise DrillError(f"{self.label}: cannot connect: {cause}") from None
        try:
            conn.execute(f"SET lock_timeout = {bounds.lock_ms}")
            statement = int((bounds.statement_timeout or 0) * 1000)
            conn.execute(f"SET statement_timeout = {statement}")
        except psycopg.Error as exc:
            conn.close()
            raise DrillError(f"{self.label}: {one_line(exc)}") from None
        return conn

    def blockers(self, bounds: Bounds, table: str | None = None) -> str:
        """Who holds (or queues for) the locks that block a dump, in words; "" if nobody
        does any more, or the server cannot say."""
        try:
            with self.connect(Bounds(bounds.lock_timeout, 10.0)) as conn:
                rows = conn.execute(_BLOCKERS).fetchall()
        except (DrillError, psycopg.Error):
            return ""
        if table is not None:
            rows = [r for r in rows if r[0] == table] or rows
        return "; ".join(_blocker(*row) for row in rows)


class Snapshot:
    """A repeatable-read transaction whose snapshot pg_dump shares; counts rows in it."""

    def __init__(self, conn: psycopg.Connection, target: Target, bounds: Bounds) -> None:
        self.conn = conn
        self.target = target
        self.bounds = bounds
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
        # what a drill projects its restore time to (drills.checks.projection)
        self.database_bytes = int(self._one("SELECT pg_database_size(current_database())"))

    def _one(self, query: str | sql.Composed) -> object:
        row = self.conn.execute(query).fetchone()
        return row[0] if row else None

    def check_rights(self) -> None:
        """Fail before the dump when the role cannot read something pg_dump must read."""
        denied = [(name, why) for name, why in self.conn.execute(_DENIED).fetchall() if why]
        if not denied:
            return
        role = str(self._one("SELECT current_user"))
        shown = ", ".join(f"{name} ({why})" for name, why in denied[:5])
        more = f" and {len(denied) - 5} more" if len(denied) > 5 else ""
        raise DrillError(
            f"{self.target.label}: role {role} cannot dump {shown}{more}; pg_dump would fail, "
            "so nothing was dumped (grant the role what it lacks, or use one that has it)"
        )

    def inventory(self) -> dict[str, list[str]]:
        """The objects the database holds in the dump's snapshot (`drills.restore.inventory`), as a
        manifest keeps them: a drill names any of them its restore lacks."""
        try:
            return inventory.to_json(inventory.read_inventory(self.conn))
        except psycopg.errors.QueryCanceled:
            raise slow_query(self.target, self.bounds, "listing objects") from None
        except psycopg.Error as exc:
            raise DrillError(f"{self.target.label}: cannot list objects: {one_line(exc)}") from None

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
        except psycopg.errors.LockNotAvailable:
            raise lock_wait(self.target, self.bounds, "counting rows") from None
        except psycopg.errors.QueryCanceled:  # statement_timeout: [runtime] step_timeout
            raise slow_query(self.target, self.bounds, "counting rows") from None
        except psycopg.Error as exc:
            raise DrillError(f"{self.target.label}: cannot count rows: {one_line(exc)}") from None
        return tuple(counts)


def lock_wait(target: Target, bounds: Bounds, doing: str, table: str | None = None) -> DrillError:
    """The error of a lock wait that timed out, naming the sessions that block it."""
    who = target.blockers(bounds, table)
    blocked = f": {who}" if who else " (the blocking session has ended since)"
    return DrillError(
        f"{target.label}: gave up {doing} after waiting {bounds.lock_timeout:g} s for a "
        f"lock{blocked}; no backup was kept (end that session, or raise [backup] lock_timeout)"
    )


def slow_query(target: Target, bounds: Bounds, doing: str) -> DrillError:
    """The error of a query stopped by statement_timeout, naming any lock it waited on."""
    who = target.blockers(bounds)
    cause = f"waiting for a lock: {who}" if who else "the query itself was that slow"
    return DrillError(
        f"{target.label}: gave up {doing} after [runtime] step_timeout "
        f"({bounds.statement_timeout:g} s), {cause}; no backup was kept"
    )


@contextlib.contextmanager
def snapshot(target: Target, bounds: Bounds) -> Iterator[Snapshot]:
    """Connect, check the role's rights, open the shared snapshot; keep it open while the
    block (the dump) runs."""
    conn = target.connect(bounds)
    try:
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        try:
            snap = Snapshot(conn, target, bounds)
            snap.check_rights()
        except psycopg.Error as exc:
            raise DrillError(f"{target.label}: {one_line(exc)}") from None
        yield snap
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()


def _blocker(
    table: str, granted: bool, pid: int, user: str, app: str, state: str, since: str, query: str
) -> str:
    how = "held" if granted else "queued for (it waits itself, and everyone after it)"
    app = f", application {app}" if app else ""
    return f"{table} {how} by pid {pid} (user {user}{app}, {state} since {since}: {query})"


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
