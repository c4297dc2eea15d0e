"""`drill restore config`: decrypt and extract a config archive into a directory, mode 600.

The drills' engine (`drills.restore.config.restore_config`) fetches the archive (sha256
against its manifest), decrypts it with the passphrase from `[config] passphrase_env` and
extracts it into a private temporary directory; the drills' checks (`check_config`: required
files, .env files parse, members equal the manifest) must pass. Only then is anything written
to the target directory: each file created with mode 600 (directories 700) under its archived
path (``srv/app/.env.production``, as it lived at ``/srv/app/.env.production``). A file that
exists there already is never replaced unless `--overwrite` is given; without it, the command
stops before writing anything and names the files in the way. Values are never printed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from drills.config import Config
from drills.config.errors import ConfigError, DrillError
from drills.record import DrillRecord
from drills.recovery.common import choose, describe_backup, size
from drills.restore.config import RestoredConfig, check_config, restore_config
from drills.storage import Storage, catalog
from drills.storage.catalog import Backup

CHUNK = 1 << 20
SHOWN = 10

Say = Callable[[str], None]


class ConfigRecoveryFailed(DrillError):
    """The archive did not restore or failed its checks; nothing was written."""


@dataclass
class ConfigPlan:
    """Everything decided before anything changes."""

    backup: Backup
    why: str
    target: Path
    overwrite: bool

    def lines(self, now: datetime) -> list[str]:
        """The plan for people."""
        where = "exists" if self.target.exists() else "is created, mode 700"
        policy = "replaced (--overwrite)" if self.overwrite else "never replaced (no --overwrite)"
        return [
            f"  archive:    {describe_backup(self.backup, now)}",
            f"              chosen: {self.why}",
            f"  target:     {self.target} ({where}); files mode 600; existing files {policy}",
        ]


@dataclass
class ConfigOutcome:
    """What a finished config recovery wrote (names and sizes, never values)."""

    plan: ConfigPlan
    written: dict[str, int] = field(default_factory=dict)
    replaced: list[str] = field(default_factory=list)
    checks: int = 0


def plan_config(
    config: Config, storage: Storage, to: str, *, key: str | None, overwrite: bool
) -> ConfigPlan:
    """Choose the archive and where it goes; change nothing."""
    backups = catalog.list_backups(storage, "config", config.storage.prefixes.config)
    backup, why = choose(backups, "config", key=key)
    backup.manifest  # noqa: B018 - a bad manifest stops the plan
    target = Path(to).absolute()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--to {target}: exists and is not a directory")
    return ConfigPlan(backup, why, target, overwrite)


def run_config(plan: ConfigPlan, config: Config, storage: Storage, *, say: Say) -> ConfigOutcome:
    """Restore, check, then write the files; raise with the cause, writing nothing on failure."""
    settings = config.config
    passphrase_env = settings.passphrase_env if settings else None
    required = settings.required if settings else ()
    say(f"fetching and extracting {plan.backup.key} into a private temporary directory")
    with restore_config(
        storage, plan.backup, passphrase_env=passphrase_env, timeout=config.targets.rto.config
    ) as restored:
        record = DrillRecord("recovery")
        check_config(record, plan.backup, restored, required)
        if record.failed_checks:
            causes = "; ".join(f"{c.name}: {c.detail}" for c in record.failed_checks)
            raise ConfigRecoveryFailed(
                f"{plan.backup.key} failed its checks: {causes}; nothing was written"
            )
        say(f"verified: {len(record.checks)} checks passed; writing into {plan.target}")
        in_the_way = _existing(plan.target, restored)
        if in_the_way and not plan.overwrite:
            raise ConfigError(
                f"{plan.target}: {len(in_the_way)} of the archive's files exist there already "
                f"({_names(in_the_way)}); nothing was written. Pass --overwrite to replace "
                "them, or choose a new directory"
            )
        outcome = ConfigOutcome(plan, replaced=in_the_way, checks=len(record.checks))
        _write(plan.target, restored, outcome)
    return outcome


def summary(outcome: ConfigOutcome) -> list[str]:
    """What the user reads at the end: each file, where it lived, never a value."""
    plan = outcome.plan
    lines = [
        f"restored {len(outcome.written)} files from {plan.backup.key} into {plan.target} "
        f"(mode 600; {outcome.checks} checks passed)"
    ]
    for name, count in sorted(outcome.written.items()):
        lines.append(f"  {name} ({size(count)}), archived from /{name}")
    if outcome.replaced:
        lines.append(f"replaced existing files: {_names(outcome.replaced)}")
    lines.append("copy each file to where it lived once you have compared it with what is there")
    return lines


def _existing(target: Path, restored: RestoredConfig) -> list[str]:
    return sorted(
        name for name in restored.members if os.path.lexists(target / PurePosixPath(name))
    )


def _write(target: Path, restored: RestoredConfig, outcome: ConfigOutcome) -> None:
    """Each member through a temporary file in its directory, then linked (no overwrite) or
    renamed (overwrite) into place: a reader never sees half a file."""
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in sorted(restored.members):
            final = target.joinpath(*PurePosixPath(name).parts)
            final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=".drill-", dir=final.parent)  # mode 600
            try:
                with os.fdopen(fd, "wb") as out, restored.path(name).open("rb") as source:
                    while block := source.read(CHUNK):
                        out.write(block)
                os.chmod(temp, 0o600)
                if outcome.plan.overwrite:
                    os.replace(temp, final)
                else:
                    os.link(temp, final)  # fails if the name was taken meanwhile
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            outcome.written[name] = restored.members[name].size
    except OSError as exc:
        raise ConfigRecoveryFailed(
            f"{exc.filename or target}: cannot write: {exc.strerror}; written so far: "
            f"{_names(sorted(outcome.written)) or 'nothing'}"
        ) from None


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
