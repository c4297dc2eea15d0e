"""The database operations of a recovery on the target server: look, name, hand over, swap,
drop. SQL over the host-side connection, identifiers always quoted by psycopg.

The swap is two renames in one transaction (``ALTER DATABASE ... RENAME`` is transactional):
either the restored database has the name and the old one is kept beside it, or nothing
changed. The old database's sessions are ended first; one that reconnects in between makes
the rename fail, and it is tried again a few times.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from drills.config.errors import DrillError
from drills.recovery.target import Server

NAME_MAX = 63  # Postgres truncates longer identifiers: two long names could collide
SWAP_ATTEMPTS = 5
_EXISTING = """
SELECT pg_database_size(d.oid), pg_get_userbyid(d.datdba),
       (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname)
FROM pg_database d WHERE d.datname = %s
"""
_TERMINATE = """
SELECT pg_terminate_backend(pid) FROM pg_stat_activity
WHERE datname = %s AND pid <> pg_backend_pid()
"""


class SwapFailed(DrillError):
    """The renames did not happen; both databases are as they were."""


@dataclass(frozen=True)
class Existing:
    """A database on the server: its size, owner and open sessions."""

    bytes: int
    owner: str
    sessions: int


def existing(server: Server, dbname: str) -> Existing | None:
    """The database `dbname` as the server describes it; None when there is none."""
    with server.connect(autocommit=True) as conn:
        row = conn.execute(_EXISTING, (dbname,)).fetchone()
    return None if row is None else Existing(int(row[0]), str(row[1]), int(row[2]))


def name(base: str, suffix: str) -> str:
    """`base` + `suffix`, `base` shortened so the whole fits Postgres' 63 bytes."""
    room = NAME_MAX - len(suffix.encode())
    return base.encode()[:room].decode(errors="ignore") + suffix


def give_owner(server: Server, dbname: str, owner: str | None) -> str | None:
    """Make `owner` own `dbname` if it is not us; a note when the server refuses."""
    if owner is None or owner == server.user:
        return None
    query = sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
        sql.Identifier(dbname), sql.Identifier(owner)
    )
    try:
        with server.connect(autocommit=True) as conn:
            conn.execute(query)
    except psycopg.Error as exc:
        return f"the restored database is owned by {server.user}, not {owner} ({_first(exc)})"
    return None


def swap(server: Server, db: str, new: str, kept: str | None) -> None:
    """`db` -> `kept` (when there is a `db`) and `new` -> `db`, in one transaction."""
    last: Exception | None = None
    try:
        with server.connect(autocommit=True) as conn:
            for _attempt in range(SWAP_ATTEMPTS):
                if kept is not None:
                    conn.execute(_TERMINATE, (db,))
                try:
                    with conn.transaction():
                        if kept is not None:
                            conn.execute(_rename(db, kept))
                        conn.execute(_rename(new, db))
                    return
                except psycopg.errors.ObjectInUse as exc:
                    last = exc  # a session came back between the terminate and the rename
                    time.sleep(1)
    except psycopg.Error as exc:
        raise SwapFailed(f"the swap failed: {_first(exc)}") from None
    raise SwapFailed(
        f"cannot rename {db}: {_first(last)} (an application keeps reconnecting: stop it "
        "with [database] pre_restore)"
    )


def drop_quietly(server: Server, dbname: str) -> None:
    """Drop a half-made database; best effort."""
    force = " WITH (FORCE)" if server.major >= 13 else ""
    query = sql.SQL("DROP DATABASE IF EXISTS {}" + force).format(sql.Identifier(dbname))
    with contextlib.suppress(psycopg.Error), server.connect(autocommit=True) as conn:
        if not force:
            conn.execute(_TERMINATE, (dbname,))
        conn.execute(query)


def _rename(old: str, new: str) -> sql.Composed:
    return sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(old), sql.Identifier(new)
    )


def _first(exc: BaseException | None) -> str:
    text = str(exc or "").strip()
    return text.splitlines()[0] if text else type(exc).__name__
