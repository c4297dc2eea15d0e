"""`drill restore database --at TIME` from a base backup and archived WAL.

The point-in-time engine of the pitr drill (`drills.pitr`, `drills.pitr.recovery`) recovers
the cluster to TIME in a labelled throwaway container: the latest base backup that ended at
or before TIME (never a newer one), its WAL replayed up to TIME, then promoted. The database
is then copied into the recovery's new database on the target server (`pg_dump` in that
container piped into `pg_restore` in the tools container, both of the base backup's major),
and goes through the same verification and swap as a dump.

When it cannot be used (no `[pitr]`, no base backup or WAL, TIME outside the recoverable
window) `locate` says why, and the recovery takes the latest dump at or before TIME instead.

    >>> source, why_not = locate(config, storage, workspace, at)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from drills import pitr
from drills.config import Config
from drills.config.clock import StepTimeout, human
from drills.config.errors import DrillError
from drills.pitr.container import RecoveryContainer
from drills.pitr.recovery import Recovery
from drills.recovery.common import Workspace, iso
from drills.recovery.target import ToolsTarget
from drills.runtime import images
from drills.storage import Storage


class PointInTimeFailed(DrillError):
    """Recovery to the time, or the copy of the recovered database, failed."""


@dataclass
class PointInTimeSource:
    """A base backup and its WAL that reach the time, in a recovery container ready to go."""

    found: pitr.Survey
    window: pitr.Window
    chosen: pitr.Recoverable
    target: datetime
    database: str
    """The database to take from the recovered cluster."""
    container: RecoveryContainer

    @property
    def major(self) -> int:
        """The base backup's PostgreSQL major."""
        return self.chosen.base.major

    def lines(self) -> list[str]:
        """The source for people."""
        base = self.chosen.base
        return [
            f"  backup:     {base.key} (base backup, ended {iso(base.ended_at)}) + archived WAL"
            f" replayed to {pitr.iso(self.target)}, database {self.database}",
            f"              chosen: point in time (base backup + WAL); recoverable window "
            f"{self.window.describe()}",
        ]

    def stop(self) -> None:
        """Remove the recovery container."""
        self.container.stop()


def locate(
    config: Config, storage: Storage, workspace: Workspace, at: datetime
) -> tuple[PointInTimeSource | None, str]:
    """The point-in-time source that reaches `at`, or None and why it cannot be used."""
    if config.pitr is None:
        return None, "no [pitr] section: point-in-time recovery is not set up"
    prefixes = config.storage.prefixes
    try:
        found = pitr.survey(storage, prefixes.base, prefixes.wal)
    except DrillError as exc:
        return None, str(exc)
    database = pitr.database_name(config)
    client = workspace.client
    image = config.runtime.postgres_image or images.ensure_postgres_image(
        client, found.newest.major
    )
    container = RecoveryContainer(
        image, workspace.session, user=found.newest.superuser, dbname=database
    ).start_waiting()
    try:
        window = pitr.measure_window(found, storage, container)
        chosen = pitr.recoverable_at(window, at)
    except DrillError as exc:
        container.stop()
        return None, str(exc)
    except BaseException:
        container.stop()
        raise
    return PointInTimeSource(found, window, chosen, at, database, container), ""


def recover_into(
    source: PointInTimeSource,
    storage: Storage,
    tools: ToolsTarget,
    new_name: str,
    *,
    timeout: float,
    say,
) -> dict[str, float]:
    """Recover the cluster to the time, then copy the database into `new_name` on the
    target server; return the phase times. Raise with the cause."""
    started = time.monotonic()
    with Recovery(
        storage, source.found.archive, source.chosen, source.container, source.target,
        timeout=timeout,
    ) as recovery:  # fmt: skip
        say(f"point in time: restoring {source.chosen.base.key} into a recovery container")
        recovery.restore_base()
        recovery.verify()
        say(f"point in time: replaying WAL to {pitr.iso(source.target)}")
        recovery.replay()
    recovered = time.monotonic() - started
    say(f"point in time: recovered in {recovered:.1f} s; copying {source.database} to {new_name}")
    left = max(1.0, timeout - recovered)
    with tools.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(new_name)))
    copied = time.monotonic()
    _copy(source, tools, new_name, left)
    return {"recover": recovered, "copy": time.monotonic() - copied}


def _copy(source: PointInTimeSource, tools: ToolsTarget, new_name: str, timeout: float) -> None:
    """pg_dump in the recovery container | pg_restore in the tools container, pipefail."""
    superuser = source.chosen.base.superuser
    dump_argv = source.container.sh_argv(
        'exec pg_dump --format=custom -U "$1" -d "$2"', superuser, source.database, user="postgres"
    )
    restore_argv = tools.exec_argv(
        ["pg_restore", "--exit-on-error", "-d", new_name], interactive=True
    )
    with tempfile.TemporaryFile() as dump_err, tempfile.TemporaryFile() as restore_err:
        dump = subprocess.Popen(
            dump_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=dump_err
        )
        restore = subprocess.Popen(
            restore_argv, stdin=dump.stdout, stdout=subprocess.DEVNULL, stderr=restore_err
        )
        dump.stdout.close()  # pg_restore holds the pipe now
        deadline = time.monotonic() + timeout
        try:
            codes = [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in (dump, restore)]
        except subprocess.TimeoutExpired:
            for proc in (dump, restore):
                with contextlib.suppress(OSError):
                    proc.kill()
            raise StepTimeout(
                f"the copy of the recovered {source.database} did not finish within "
                f"{human(timeout)}"
            ) from None
        for code, err, tool in (
            (codes[0], dump_err, "pg_dump"),
            (codes[1], restore_err, "pg_restore"),
        ):
            if code != 0:
                err.seek(0)
                lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln]
                raise PointInTimeFailed(
                    f"copying the recovered {source.database}: {tool} failed (exit {code}): "
                    f"{' | '.join(lines[-3:]) or 'no message'}"
                )
