"""`drill heartbeat`: one tiny row per interval in production, so recovered data tells its time.

A restored database whose newest heartbeat is at 02:14:00 holds production as of 02:14,
whatever the backup file's name or mtime claims. The point-in-time drill checks its
boundary with these rows (every beat committed at or before the target present, none after)
and every database drill measures its recovery point from them.

**This is the only write the product ever makes to production**, and only while a user runs
this command: it creates the table ``drill_heartbeat`` if missing (one row per beat: the
run's id, a sequence number, the time, the interval; about 100 bytes) and deletes its own
rows older than the retention.

    >>> run_heartbeat("host=db dbname=app user=drill", interval=60, count=3)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from drills.config import redact_text
from drills.config.errors import ConfigError, DrillError

log = logging.getLogger(__name__)

TABLE = "drill_heartbeat"
CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    run_id uuid NOT NULL,
    seq bigint NOT NULL,
    beat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    interval_s double precision NOT NULL,
    host text NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, seq)
)
"""
INDEX = f"CREATE INDEX IF NOT EXISTS {TABLE}_beat_at ON {TABLE} (beat_at)"
INSERT = f"""
INSERT INTO {TABLE} (run_id, seq, interval_s, host) VALUES (%s, %s, %s, %s)
ON CONFLICT (run_id, seq) DO NOTHING RETURNING beat_at
"""
PRUNE = f"DELETE FROM {TABLE} WHERE beat_at < clock_timestamp() - make_interval(secs => %s)"
STATEMENT_TIMEOUT_MS = 5000
CONNECT_TIMEOUT_S = 5
PRUNE_EVERY_S = 3600.0


@dataclass
class HeartbeatResult:
    """What a heartbeat run wrote."""

    run_id: str
    beats: list[datetime] = field(default_factory=list)
    missed: int = 0
    pruned: int = 0


def run_heartbeat(
    dsn: str,
    *,
    interval: float = 60.0,
    count: int | None = None,
    duration: float | None = None,
    keep: float = 7 * 86400.0,
    stop: threading.Event | None = None,
    on_beat: Callable[[int, datetime], None] | None = None,
) -> HeartbeatResult:
    """Write a beat every `interval` seconds until `count` beats, `duration` or `stop`.

    Beats are scheduled on a fixed grid (no drift); a beat that cannot be written (the
    server restarts, a statement times out) is logged and retried on the next tick with the
    same sequence number, so the numbers of committed beats stay gap-free within a run.
    The first connection must succeed: a wrong DSN fails at once.
    """
    if interval <= 0:
        raise ConfigError(f"heartbeat interval must be longer than zero, got {interval}")
    result = HeartbeatResult(run_id=str(uuid.uuid4()))
    stop = stop or threading.Event()
    host = socket.gethostname()
    conn: psycopg.Connection | None = _connect(dsn)
    try:
        _prepare(conn)
        result.pruned += _prune(conn, keep)
        last_prune = time.monotonic()
        seq, started = 1, time.monotonic()
        deadline = None if duration is None else started + duration
        tick = 0
        while count is None or len(result.beats) < count:
            if deadline is not None and time.monotonic() > deadline:
                break
            try:
                if conn is None:
                    conn = _connect(dsn)
                row = conn.execute(INSERT, (result.run_id, seq, interval, host)).fetchone()
                if row is not None:
                    result.beats.append(row[0])
                    if on_beat is not None:
                        on_beat(seq, row[0])
                seq += 1  # an already committed beat (a retried commit) moves on too
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    result.pruned += _prune(conn, keep)
                    last_prune = time.monotonic()
            except (psycopg.Error, DrillError) as exc:
                result.missed += 1
                log.warning("heartbeat %d not written: %s", seq, _one_line(exc))
                conn = _close(conn)
            tick += 1
            pause = started + tick * interval - time.monotonic()
            if pause < 0:  # fell behind (a slow server): skip to the next slot on the grid
                tick += int(-pause // interval) + 1
                pause = started + tick * interval - time.monotonic()
            if (count is None or len(result.beats) < count) and stop.wait(max(0.0, pause)):
                break
    finally:
        _close(conn)
    return result


def _connect(dsn: str) -> psycopg.Connection:
    try:
        return psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="drill-heartbeat",
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        )
    except psycopg.Error as exc:
        raise DrillError(f"heartbeat: cannot connect: {_one_line(exc)}") from None


def _prepare(conn: psycopg.Connection) -> None:
    try:
        for _attempt in range(2):
            try:
                conn.execute(CREATE)
                conn.execute(INDEX)
                return
            except psycopg.errors.UniqueViolation:
                continue  # another heartbeat created it at the same moment
    except psycopg.Error as exc:
        raise DrillError(f"heartbeat: cannot create table {TABLE}: {_one_line(exc)}") from None


def _prune(conn: psycopg.Connection, keep: float) -> int:
    try:
        return conn.execute(PRUNE, (keep,)).rowcount or 0
    except psycopg.Error as exc:
        log.warning("heartbeat: old rows not pruned: %s", _one_line(exc))
        return 0


def _close(conn: psycopg.Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()).removeprefix("connection failed: ")
    return redact_text(text)
