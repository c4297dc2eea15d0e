"""`drill restore database`: restore a backup into a real server, verified, then swapped in.

The runbook it carries out, each step stopping the recovery with a named cause before
anything is replaced:

1. plan: choose the backup (a key, the latest at or before a time, or the latest), reach the
   server, look at the database to be replaced (size, owner), check the free space for the
   safety dump; show all of it (never the password);
2. confirm: the database's name typed at the terminal (`--yes` for scripts);
3. safety dump of the current database to a local file (`drills.recovery.safety`);
4. restore into a new database ``<db>_restore_<ts>`` with the drills' engine
   (`drills.restore.restore_database`), tools of the backup's major;
5. verify it with the drills' checks (tables, data, `[database] checks`, the manifest's row
   counts) and read its recovered point (the newest `drill heartbeat` row);
6. swap: `[database] pre_restore` commands, the old database's sessions ended, then in one
   transaction ``<db>`` -> ``<db>_before_<ts>`` and the new one -> ``<db>``; `post_restore`.

A failure in 3-6 drops the new database and leaves the original as it was; the old database is
kept until the user drops it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from drills.checks import check_database, connect_restored
from drills.checks.recovery_point import check_heartbeat_boundary, newest_heartbeat
from drills.config import Config
from drills.config.errors import ConfigError, DrillError
from drills.record import DrillRecord
from drills.recovery import point_in_time, swap
from drills.recovery.common import (
    Workspace,
    choose,
    describe_backup,
    iso,
    need_space,
    precise,
    run_hooks,
    size,
    stamp,
)
from drills.recovery.point_in_time import PointInTimeSource
from drills.recovery.safety import SafetyDump, dump_path, take_safety_dump
from drills.recovery.target import Server, ToolsTarget
from drills.restore import dumpinfo, restore_database
from drills.restore.common import Secrets
from drills.storage import Storage, catalog
from drills.storage.catalog import Backup

Say = Callable[[str], None]


class RecoveryFailed(DrillError):
    """The restore, its verification or the swap failed; the original was not replaced."""


@dataclass
class DatabasePlan:
    """Everything decided before anything changes; `lines()` shows it to the user."""

    backup: Backup | None
    """The dump to restore; None when `point_in_time` is the source."""
    why: str
    major: int
    major_source: str
    server: Server
    existing: swap.Existing | None
    new_name: str
    kept_name: str
    stamp: str
    safety_dir: Path | None
    free: int | None = None
    checks: tuple[str, ...] = ()
    secrets: Secrets | None = None
    """How to open an encrypted dump ([database] passphrase_env, gpg_home)."""
    pre_restore: tuple[str, ...] = ()
    post_restore: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    point_in_time: PointInTimeSource | None = None

    @property
    def database(self) -> str:
        """The database being replaced."""
        return self.server.database

    @property
    def safety_path(self) -> Path | None:
        """Where the safety dump will be written; None when none is taken."""
        if self.safety_dir is None or self.existing is None:
            return None
        return dump_path(self.safety_dir, self.database, self.stamp)

    def lines(self, now: datetime) -> list[str]:
        """The plan for people, never the password."""
        server = self.server
        db = self.database
        if self.point_in_time is not None:
            out = self.point_in_time.lines()
        else:
            out = [
                f"  backup:     {describe_backup(self.backup, now)}",
                f"              chosen: {self.why}; PostgreSQL {self.major} ({self.major_source})",
            ]
        out.append(
            f"  target:     PostgreSQL {server.version} at {server.where} as {server.user}, "
            f"database {db}"
        )
        if self.existing is None:
            out.append(f"  replaces:   nothing: {db} does not exist yet; it is created")
        else:
            e = self.existing
            out.append(
                f"  replaces:   database {db} ({size(e.bytes)}, owner {e.owner}, "
                f"{e.sessions} open sessions now), kept as {self.kept_name}"
            )
        out.append(
            f"  restore:    into a new database {self.new_name}, verified, then renamed to {db}"
        )
        path = self.safety_path
        if path is not None:
            out.append(f"  safety:     dump of {db} first, to {path} ({size(self.free)} free)")
        elif self.existing is not None:
            out.append("  safety:     NO safety dump (--no-safety-dump)")
        if self.pre_restore or self.post_restore:
            out.append(
                f"  commands:   before the swap: {'; '.join(self.pre_restore) or 'none'}; "
                f"after it: {'; '.join(self.post_restore) or 'none'}"
            )
        out += [f"  note:       {note}" for note in self.notes]
        return out


@dataclass
class DatabaseOutcome:
    """What a finished recovery did."""

    plan: DatabasePlan
    safety: SafetyDump | None
    method: str
    restore_s: float
    checks: int
    recovered_point: datetime | None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def plan_database(
    config: Config,
    storage: Storage,
    dsn: str,
    *,
    key: str | None,
    at: datetime | None,
    safety_dir: Path | None,
    now: datetime,
    workspace: Workspace,
) -> DatabasePlan:
    """Reach the server, choose the source, size up what is replaced; change nothing.

    With `at`, the point-in-time engine is the source when it reaches `at` (its recovery
    container is started here, to measure the recoverable window); else the latest dump at
    or before `at`, and the plan says why.
    """
    settings = config.database
    name = settings.name if settings else None
    server = Server.probe(dsn, default_db=name)
    ts = stamp(now)
    plan = DatabasePlan(
        backup=None,
        why="",
        major=server.major,
        major_source="",
        server=server,
        existing=swap.existing(server, server.database),
        new_name=swap.name(server.database, f"_restore_{ts}"),
        kept_name=swap.name(server.database, f"_before_{ts}"),
        stamp=ts,
        safety_dir=safety_dir,
        checks=settings.checks if settings else (),
        secrets=Secrets(settings.passphrase_env, settings.gpg_home) if settings else None,
    )
    if "password" in conninfo_to_dict(dsn):
        plan.notes.append(
            "the DSN given carries a password, which `ps` shows to every user of this host; "
            "prefer PGPASSWORD or ~/.pgpass"
        )
    for taken in (plan.new_name, plan.kept_name):
        if swap.existing(server, taken) is not None:
            raise ConfigError(f"database {taken} exists already on {server.where}; try again")
    _choose_source(plan, config, storage, key, at, workspace)
    if settings and server.database == settings.name:
        plan.pre_restore, plan.post_restore = settings.pre_restore, settings.post_restore
    elif settings and (settings.pre_restore or settings.post_restore):
        plan.notes.append(
            f"[database] pre_restore and post_restore are not run: they belong to "
            f"{settings.name}, and this restore goes to {server.database}"
        )
    if plan.major > server.major:
        plan.notes.append(
            f"the backup is from PostgreSQL {plan.major}, the server runs {server.major}: the "
            "restore may fail on newer syntax"
        )
    if plan.safety_path is not None and plan.existing is not None:
        plan.free = need_space(
            plan.safety_path.parent,
            plan.existing.bytes,
            f"the safety dump of {server.database} (its size on the server)",
            "free some, choose another --safety-dump-dir, or skip it with --no-safety-dump",
        )
    return plan


def _choose_source(
    plan: DatabasePlan,
    config: Config,
    storage: Storage,
    key: str | None,
    at: datetime | None,
    workspace: Workspace,
) -> None:
    """The point in time when it reaches `at`, else a dump; the plan says which and why."""
    settings = config.database
    why_not = ""
    if at is not None:
        source, why_not = point_in_time.locate(config, storage, workspace, at)
        if source is not None:
            plan.point_in_time, plan.why = source, "point in time (base backup + WAL)"
            plan.major, plan.major_source = source.major, "the base backup's"
            return
    name = settings.name if settings else None
    try:
        backups = catalog.list_backups(
            storage,
            "database",
            config.storage.prefixes.database,
            name_timezone=config.storage.name_timezone,
        )
        if name:
            backups = [b for b in backups if b.database in (None, name)] or backups
        backup, why = choose(backups, "database", key=key, at=at)
    except DrillError as exc:
        if not why_not:
            raise
        raise type(exc)(f"{exc}; and no point-in-time recovery either: {why_not}") from None
    backup.manifest  # noqa: B018 - a bad manifest stops the plan, before anything is touched
    if why_not:
        why = f"{why} (point in time not used: {why_not})"
    major, source = dumpinfo.backup_major(storage, backup, plan.secrets)
    if settings and settings.major:
        major, source = settings.major, "[database] major"
    if major is None:
        major, source = plan.server.major, f"unreadable ({source}), so the server's"
    plan.backup, plan.why, plan.major, plan.major_source = backup, why, major, source


def run_database(
    plan: DatabasePlan, config: Config, storage: Storage, *, say: Say, workspace: Workspace
) -> DatabaseOutcome:
    """Carry out a confirmed plan: safety dump, restore, verify, swap. Raise with the cause;
    on any failure before the swap the new database is dropped and the original untouched."""
    settings = config.database
    bound = (settings.restore_timeout if settings else None) or config.targets.rto.database
    step = config.runtime.step_timeout
    server = plan.server
    client, session = workspace.client, workspace.session
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        if plan.point_in_time is not None:
            stack.callback(plan.point_in_time.stop)
        started = time.monotonic()
        say(f"starting the PostgreSQL {server.major} client tools (a labelled container)")
        tools = stack.enter_context(ToolsTarget.start(client, session, server, major=server.major))
        restore_tools = tools
        if plan.major != server.major:
            say(f"starting the PostgreSQL {plan.major} client tools for the backup")
            restore_tools = stack.enter_context(
                ToolsTarget.start(client, session, server, major=plan.major)
            )
        timings["provision"] = time.monotonic() - started
        safety = None
        if plan.safety_path is not None:
            say(f"safety dump of {plan.database} to {plan.safety_path}")
            safety = take_safety_dump(
                tools, plan.database, plan.safety_dir, plan.stamp, timeout=step
            )
            timings["safety_dump"] = safety.seconds
            say(f"safety dump written: {size(safety.bytes)}, sha256 {safety.sha256[:16]}")
        outcome = _restore_verify_swap(plan, storage, restore_tools, bound, step, say)
    outcome.safety = safety
    outcome.timings = {**timings, **outcome.timings}
    return outcome


def _restore(
    plan: DatabasePlan, storage: Storage, tools: ToolsTarget, bound: float, say: Say
) -> tuple[str, float, dict[str, float], list[str], object]:
    """Fill the new database from the plan's source: (method, seconds, timings, notes, what
    the dump declared or None)."""
    new = plan.new_name
    if plan.point_in_time is not None:
        timings = point_in_time.recover_into(
            plan.point_in_time, storage, tools, new, timeout=bound, say=say
        )
        seconds = sum(timings.values())
        method = "point in time: base backup + WAL, then pg_dump | pg_restore"
        return method, seconds, timings, [], None
    say(f"restoring {plan.backup.key} into the new database {new}")
    result = restore_database(storage, plan.backup, tools, new, timeout=bound, secrets=plan.secrets)
    if result.roles_created:
        say(f"created the roles the dump refers to (NOLOGIN): {', '.join(result.roles_created)}")
    timings = {"restore": result.seconds}
    return result.method, result.seconds, timings, list(result.notes), result.facts


def _restore_verify_swap(
    plan: DatabasePlan, storage: Storage, tools: ToolsTarget, bound: float, step: float, say: Say
) -> DatabaseOutcome:
    server, new = plan.server, plan.new_name
    ran_pre = False
    try:
        method, seconds, timings, notes, facts = _restore(plan, storage, tools, bound, say)
        say(f"restored in {seconds:.1f} s ({method}); verifying {new}")
        started = time.monotonic()
        record = DrillRecord("recovery")
        manifest = plan.backup.manifest if plan.backup else None
        with connect_restored(tools, new) as conn:
            check_database(conn, record, manifest, plan.checks, amcheck=False, facts=facts)
            if plan.point_in_time is not None:
                check_heartbeat_boundary(conn, record, plan.point_in_time.target)
            beat = newest_heartbeat(conn)
        timings["validate"] = time.monotonic() - started
        if record.failed_checks:
            causes = "; ".join(f"{c.name}: {c.detail}" for c in record.failed_checks)
            raise RecoveryFailed(f"the restored database {new} failed verification: {causes}")
        say(f"verified: {len(record.checks)} checks passed")
        if plan.backup is not None:
            notes += [n for n in record.notes if "manifest" in n]
        started = time.monotonic()
        note = swap.give_owner(server, new, plan.existing.owner if plan.existing else None)
        notes += [note] if note else []
        if plan.pre_restore:
            ran_pre = True
            run_hooks(plan.pre_restore, "pre_restore", step, say)
        db, kept = plan.database, plan.kept_name
        say(f"swapping: {db} -> {kept}, {new} -> {db}" if plan.existing else f"{new} -> {db}")
        swap.swap(server, db, new, kept if plan.existing else None)
        timings["swap"] = time.monotonic() - started
    except BaseException as exc:
        swap.drop_quietly(server, new)
        if ran_pre and plan.post_restore:
            with contextlib.suppress(DrillError):
                run_hooks(plan.post_restore, "post_restore", step, say)
        if isinstance(exc, DrillError | psycopg.Error):
            cause = str(exc) if isinstance(exc, DrillError) else _first_line(exc)
            raise RecoveryFailed(
                f"{cause}; nothing was replaced: {plan.database} is as it was, and the new "
                f"database {new} was dropped"
            ) from None
        raise
    if plan.post_restore:
        try:
            run_hooks(plan.post_restore, "post_restore", step, say)
        except DrillError as exc:
            raise DrillError(
                f"{plan.database} was restored and swapped in, but {exc}; the previous "
                f"database is kept as {plan.kept_name}"
            ) from None
    return DatabaseOutcome(
        plan=plan,
        safety=None,
        method=method,
        restore_s=seconds,
        checks=len(record.checks),
        recovered_point=beat.beat_at if beat else None,
        notes=notes,
        timings=timings,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def summary(outcome: DatabaseOutcome) -> list[str]:
    """What the user reads at the end: what is where now, and what to do next."""
    plan = outcome.plan
    db = plan.database
    if plan.point_in_time is not None:
        pit = plan.point_in_time
        source = f"{pit.chosen.base.key} + WAL to {iso(pit.target)}"
        point_of_backup = f"the target {precise(pit.target)}"
    else:
        source = plan.backup.key
        point_of_backup = f"the backup was taken {iso(plan.backup.taken_at)}"
    lines = [
        f"restored {db} on {plan.server.where} from {source} "
        f"({outcome.method}, {outcome.restore_s:.1f} s; {outcome.checks} checks passed)"
    ]
    if outcome.recovered_point is not None:
        lines.append(
            f"recovered point: newest drill_heartbeat row {precise(outcome.recovered_point)} "
            f"({point_of_backup})"
        )
    else:
        lines.append(f"recovered point: no drill_heartbeat rows; {point_of_backup}")
    if plan.existing is not None:
        lines.append(
            f"the previous database is kept as {plan.kept_name}; drop it when you are sure: "
            f'DROP DATABASE "{plan.kept_name}";'
        )
    if outcome.safety is not None:
        s = outcome.safety
        lines.append(
            f"safety dump: {s.path} ({size(s.bytes)}, sha256 {s.sha256[:16]}); restore it with "
            f"`drill restore database --to <DSN> --storage-url {s.directory.as_uri()} "
            f"--backup {s.key}`"
        )
    times = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in outcome.timings.items())
    lines.append(f"times: {times}")
    lines += [f"note: {note}" for note in outcome.notes]
    return lines
