"""What the server says of its own archiving (`pg_stat_archiver`), and a stalled shipper.

`drill backup wal` ships what `archive_command` left in a directory. When that directory is
not where the server archives (a typo, a second mount, a compression the shipper did not
read), the shipper finds nothing to ship and would exit 0 every minute while nothing reaches
the storage. The server knows better: `last_archived_wal` names the newest file it archived
and when. `stall_causes` turns that into the shipper's error.

    >>> state = archiver_state("host=db user=replicator dbname=postgres")  # doctest: +SKIP
    >>> stall_causes(state, known=lambda name: name in shipped, listed_s_ago=0.4, where=d)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from drills.config import redact_text
from drills.config.clock import human
from drills.config.errors import DrillError

CONNECT_TIMEOUT = 10
# What the server archived this long before the directory was listed must be in it: the
# time archive_command takes between pg_stat_archiver's stamp and the file's rename.
SLACK_S = 2.0

_QUERY = """
SELECT current_setting('archive_mode'),
       last_archived_wal,
       extract(epoch FROM clock_timestamp() - last_archived_time)::float8,
       last_failed_wal,
       extract(epoch FROM clock_timestamp() - last_failed_time)::float8,
       failed_count,
       pg_is_in_recovery()
  FROM pg_stat_archiver
"""


@dataclass(frozen=True)
class ArchiverState:
    """pg_stat_archiver as the server reports it, ages measured by the server's clock."""

    archive_mode: str
    last_archived: str | None
    archived_age_s: float | None
    last_failed: str | None
    failed_age_s: float | None
    failed_count: int
    in_recovery: bool = False


def archiver_state(dsn: str) -> ArchiverState:
    """Ask the server how its archiving goes; DrillError naming the cause when it cannot."""
    try:
        with psycopg.connect(
            dsn, connect_timeout=CONNECT_TIMEOUT, application_name="drill-backup-wal"
        ) as conn:
            row = conn.execute(_QUERY).fetchone()
    except psycopg.Error as exc:
        cause = redact_text(" ".join(str(exc).split()))
        raise DrillError(f"cannot ask the server about its archiving: {cause}") from None
    mode, archived, archived_age, failed, failed_age, count, recovering = row
    return ArchiverState(
        str(mode), archived, archived_age, failed, failed_age, int(count or 0), bool(recovering)
    )


def stall_causes(
    state: ArchiverState, *, known: Callable[[str], bool], listed_s_ago: float, where: str
) -> list[str]:
    """Why WAL the server archived is not reaching the storage; empty when it is.

    `known(name)` says whether a file PostgreSQL archived under `name` (``%f``) was found in
    the directory or the storage; `listed_s_ago` is how long ago the directory was listed.
    """
    if state.in_recovery:
        return []  # a standby archives nothing unless archive_mode = always
    if state.archive_mode == "off":
        return [f"the server has archive_mode = off: it archives nothing into {where}"]
    causes = []
    age = state.archived_age_s
    last = state.last_archived
    if last and age is not None and age > listed_s_ago + SLACK_S and not known(last):
        causes.append(
            f"the server archived {last} {human(age)} ago (pg_stat_archiver), but it is "
            f"neither in {where} nor stored: archive_command writes somewhere else, or under a "
            "name this shipper does not read (see docs/pitr.md)"
        )
    failed_age = state.failed_age_s
    if state.last_failed and failed_age is not None and (age is None or failed_age < age):
        causes.append(
            f"archive_command is failing: {state.last_failed} failed {human(failed_age)} ago "
            f"and nothing was archived since ({state.failed_count} failures counted by "
            "pg_stat_archiver; the server's log says why)"
        )
    return causes
