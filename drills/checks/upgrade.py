"""Upgrade rehearsal: the drilled dump restored into each newer PostgreSQL major as well.

A dump that restores into the major it came from may not restore into the next one (removed
settings, extensions and functions; changed catalogs). `[database] rehearse_majors = [17]`
restores the same backup, after the drill's verdict (its RTO clock stopped), into a
throwaway server of each listed major newer than the dump's, runs the same database checks,
times each step, and records what differs from the version-matched restore (drill.json's
``rehearsal``):

- errors: the restore's own failure (psql's or pg_restore's error), named;
- checks that passed on the dump's major and fail on the newer one;
- objects that did not restore (the version-matched restore's inventory, less the newer's);
- warnings and errors the newer server logged that the matched one did not.

It is informative (notes) unless `[database] rehearsal_gates = true`: then a rehearsal that
differs by an error, a failed check or a missing object fails the drill. The version-matched
restore stays the gate in every case.

    >>> rehearse_upgrades(record, storage, backup, 15, settings, start, ...)  # doctest: +SKIP
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drills.checks.conclusion import DrillFailed
from drills.checks.database import CheckLimits, DatabaseProfile, check_database, connect_restored
from drills.config.errors import DrillError
from drills.config.schema import DatabaseSettings
from drills.record import DrillRecord
from drills.restore import inventory, restore_database
from drills.restore.common import Secrets
from drills.runtime.postgres import PostgresContainer
from drills.storage import Storage
from drills.storage.catalog import Backup

# Warnings and errors of statements; FATAL lines are connections refused while it started.
_LOGGED = re.compile(r"\b(?P<severity>WARNING|ERROR):\s+(?P<message>.*)$")
STEPS = ("provision", "restore", "validate")
"""The timed steps of a rehearsal (None: not reached)."""
LOG_LINES = 5000
"""How much of a server's log is read for its warnings and errors."""


@dataclass
class Rehearsal:
    """One newer major's restore of the drilled dump, and what differs from the matched one."""

    major: int
    server_version: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    failed_checks: list[dict[str, Any]] = field(default_factory=list)
    missing_objects: list[str] = field(default_factory=list)
    new_log_messages: list[str] = field(default_factory=list)
    checks: int = 0

    @property
    def differs(self) -> bool:
        """Whether it failed where the version-matched restore did not (warnings aside)."""
        return bool(self.error or self.failed_checks or self.missing_objects)

    def summary(self) -> str:
        """What differs, in one line."""
        parts = []
        if self.error:
            parts.append(f"the restore failed: {self.error}")
        if self.failed_checks:
            names = ", ".join(f"{c['name']} ({c['detail']})" for c in self.failed_checks)
            parts.append(f"checks failed: {names}")
        if self.missing_objects:
            parts.append(f"objects not restored: {', '.join(self.missing_objects[:12])}")
        if self.new_log_messages:
            parts.append(f"server messages: {' | '.join(self.new_log_messages[:5])}")
        return "; ".join(parts) or f"no difference ({self.checks} checks passed)"

    def as_dict(self) -> dict[str, Any]:
        """The rehearsal as drill.json shows it."""
        return {
            "major": self.major,
            "server_version": self.server_version,
            "seconds": {
                step: round(self.seconds[step], 3) if step in self.seconds else None
                for step in STEPS
            },
            "passed": not self.differs,
            "error": self.error,
            "failed_checks": self.failed_checks,
            "missing_objects": self.missing_objects,
            "new_log_messages": self.new_log_messages,
            "checks": self.checks,
            "summary": self.summary(),
        }


def rehearse_upgrades(
    record: DrillRecord,
    storage: Storage,
    backup: Backup,
    source_major: int,
    settings: DatabaseSettings,
    start: Callable[[int], PostgresContainer],
    *,
    matched: PostgresContainer,
    profile: DatabaseProfile,
    limits: CheckLimits,
    secrets: Secrets,
    timeout: float,
) -> list[Rehearsal]:
    """Rehearse the restore of `backup` into every major of `settings.rehearse_majors` newer
    than `source_major`; record them, and fail the drill if they differ and gate."""
    plan = _Plan(storage, backup, settings, start, matched, profile, limits, secrets, timeout)
    done = []
    for major in settings.rehearse_majors:
        if major <= source_major:
            record.notes.append(
                f"upgrade rehearsal into {major} skipped: not newer than the dump's {source_major}"
            )
            continue
        done.append(_rehearse(plan, major))
    if not done:
        return done
    record.extra["rehearsal"] = {
        "source_major": source_major,
        "gates": settings.rehearsal_gates,
        "majors": [r.as_dict() for r in done],
    }
    for rehearsal in done:
        record.notes.append(
            f"upgrade rehearsal {source_major} -> {rehearsal.major}: {rehearsal.summary()}"
            + ("" if settings.rehearsal_gates or not rehearsal.differs else " (informative)")
        )
    if settings.rehearsal_gates:
        for rehearsal in done:
            record.check(
                f"upgrade rehearsal into PostgreSQL {rehearsal.major}",
                not rehearsal.differs,
                rehearsal.summary(),
            )
        failed = [r for r in done if r.differs]
        if failed:
            first = f"upgrade rehearsal into PostgreSQL {failed[0].major}: {failed[0].summary()}"
            raise _failed(first, len(failed))
    return done


def _failed(first: str, count: int) -> DrillFailed:
    more = f" (and {count - 1} more majors)" if count > 1 else ""
    failed = DrillFailed(f"check failed: {first}{more}")
    failed.first_cause = f"check failed: {first}"
    return failed


@dataclass(frozen=True)
class _Plan:
    """What every rehearsal of one drill shares."""

    storage: Storage
    backup: Backup
    settings: DatabaseSettings
    start: Callable[[int], PostgresContainer]
    matched: PostgresContainer
    profile: DatabaseProfile
    limits: CheckLimits
    secrets: Secrets
    timeout: float


def _rehearse(plan: _Plan, major: int) -> Rehearsal:
    found = Rehearsal(major)
    began = time.monotonic()
    try:
        target = plan.start(major)
        found.server_version = target.server_version()
    except DrillError as exc:
        found.error = f"no PostgreSQL {major} to rehearse on: {exc}"
        return found
    found.seconds["provision"] = time.monotonic() - began
    if not found.server_version.startswith(f"{major}."):
        # [runtime] postgres_image forces one image for every major: nothing to rehearse.
        found.error = f"the restore target runs {found.server_version}, not {major}"
        return found
    began = time.monotonic()
    try:
        result = restore_database(
            plan.storage,
            plan.backup,
            target,
            plan.settings.name,
            timeout=plan.timeout,
            secrets=plan.secrets,
        )
    except DrillError as exc:
        found.seconds["restore"] = time.monotonic() - began
        found.error = str(exc).split("; its last output:")[0]
        found.new_log_messages = _new_messages(plan.matched, target)
        return found
    found.seconds["restore"] = time.monotonic() - began
    began = time.monotonic()
    scratch = DrillRecord("database")
    with connect_restored(target, plan.settings.name) as conn:
        upgraded = check_database(
            conn,
            scratch,
            plan.backup.manifest,
            plan.settings.checks,
            facts=result.facts,
            limits=plan.limits,
            target=target,
        )
    found.seconds["validate"] = time.monotonic() - began
    found.checks = len(scratch.checks)
    found.failed_checks = [c.as_dict() for c in scratch.failed_checks]
    gone = inventory.missing(plan.profile.inventory, upgraded.inventory)
    found.missing_objects = [f"{kind} {name}" for kind, name in gone]
    found.new_log_messages = _new_messages(plan.matched, target)
    return found


def _new_messages(matched: PostgresContainer, upgraded: PostgresContainer) -> list[str]:
    """The warnings and errors the newer server logged that the matched one did not."""
    before = set(_messages(matched))
    return [m for m in dict.fromkeys(_messages(upgraded)) if m not in before]


def _messages(container: PostgresContainer) -> list[str]:
    found = []
    for line in container.logs_tail(LOG_LINES).splitlines():
        match = _LOGGED.search(line)
        if match:
            found.append(f"{match['severity']}: {match['message'].strip()}")
    return found
