"""`drill restore config`: decrypt and extract a config archive into a directory, as archived.

The drills' engine (`drills.restore.config.restore_config`) fetches the archive (sha256
against its manifest), decrypts it with the passphrase from `[config] passphrase_env` and
extracts it into a private temporary directory; the drills' checks (`check_config`: configured
paths and required files, .env files parse, members equal the manifest) must pass. Only then
is anything written to the target directory (created mode 700), under each member's archived
path (``srv/app/.env.production``, as it lived at ``/srv/app/.env.production``): files with
their archived mode and time (and owner, when run as root), symlinks as symlinks (a symlinked
nginx site stays a link, never followed), archived directories with their mode and time. The
writes go through directory handles that never follow a link, so a link already in the target
directory cannot send a file elsewhere. A file that exists there already is never replaced
unless `--overwrite` is given; without it, the command stops before writing anything and
names the files in the way. Values are never printed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
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
from drills.storage.snapshot import LINK, Entry

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
        owners = "owners, " if os.geteuid() == 0 else ""
        return [
            f"  archive:    {describe_backup(self.backup, now)}",
            f"              chosen: {self.why}",
            f"  target:     {self.target} ({where}); files and links with their archived "
            f"modes, {owners}times; existing files {policy}",
        ]


@dataclass
class ConfigOutcome:
    """What a finished config recovery wrote (names and sizes, never values)."""

    plan: ConfigPlan
    written: dict[str, int] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
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
    paths = settings.paths if settings else ()
    optional = settings.optional if settings else ()
    say(f"fetching and extracting {plan.backup.key} into a private temporary directory")
    with restore_config(
        storage, plan.backup, passphrase_env=passphrase_env, timeout=config.targets.rto.config
    ) as restored:
        record = DrillRecord("recovery")
        check_config(record, plan.backup, restored, required, paths=paths, optional=optional)
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
    links = len(outcome.links)
    lines = [
        f"restored {len(outcome.written)} files and {links} links from {plan.backup.key} into "
        f"{plan.target} (archived modes and times; {outcome.checks} checks passed)"
    ]
    for name, count in sorted(outcome.written.items()):
        lines.append(f"  {name} ({size(count)}), archived from /{name}")
    for name, target in sorted(outcome.links.items()):
        lines.append(f"  {name} -> {target} (a link), archived from /{name}")
    if outcome.replaced:
        lines.append(f"replaced existing files: {_names(outcome.replaced)}")
    lines.append("copy each file to where it lived once you have compared it with what is there")
    return lines


def _existing(target: Path, restored: RestoredConfig) -> list[str]:
    return sorted(name for name in restored.names if os.path.lexists(target / PurePosixPath(name)))


def _write(target: Path, restored: RestoredConfig, outcome: ConfigOutcome) -> None:
    """Each member through a temporary file in its directory, then linked (no overwrite) or
    renamed (overwrite) into place: a reader never sees half a file. Directories are given
    their archived mode and time last, deepest first (writing into one resets its time)."""
    owners = os.geteuid() == 0
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in restored.names:
            with _Directory(target, PurePosixPath(name).parts[:-1]) as where:
                base = PurePosixPath(name).name
                if name in restored.links:
                    link = restored.links[name]
                    where.place(base, lambda temp, d, t=link.target: os.symlink(t, temp, dir_fd=d),
                                outcome.plan.overwrite)  # fmt: skip
                    where.stamp(base, link, owners)
                    outcome.links[name] = link.target or ""
                    continue
                member = restored.members[name]
                where.place(base, lambda temp, d, n=name: _copy_into(restored.path(n), temp, d),
                            outcome.plan.overwrite)  # fmt: skip
                where.stamp(base, member, owners)
                outcome.written[name] = member.size
        for name in sorted(restored.directories, key=lambda n: -n.count("/")):
            parts = PurePosixPath(name).parts
            with _Directory(target, parts) as _, _Directory(target, parts[:-1]) as where:
                where.stamp(parts[-1], restored.directories[name], owners)
    except OSError as exc:
        raise ConfigRecoveryFailed(
            f"{exc.filename or target}: cannot write: {exc.strerror}; written so far: "
            f"{_names(sorted(outcome.written)) or 'nothing'}"
        ) from None


def _copy_into(source: Path, temp: str, directory: int) -> None:
    fd = os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=directory
    )
    with os.fdopen(fd, "wb") as out, source.open("rb") as stream:
        while block := stream.read(CHUNK):
            out.write(block)


class _Directory:
    """A directory below the target, opened one component at a time without following a
    link (made mode 700 where missing): what is written in it stays in it."""

    def __init__(self, target: Path, parts: tuple[str, ...]) -> None:
        self.target, self.parts = target, parts
        self.fd = -1

    def __enter__(self) -> _Directory:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        self.fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY)  # the one chosen
        for part in self.parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=self.fd)
            if stat.S_ISLNK(os.stat(part, dir_fd=self.fd, follow_symlinks=False).st_mode):
                where = str(self.target.joinpath(*self.parts))
                raise OSError(errno.ELOOP, "a link in the target directory; not followed", where)
            inner = os.open(part, flags, dir_fd=self.fd)
            os.close(self.fd)
            self.fd = inner
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)

    def place(self, name: str, make, overwrite: bool) -> None:
        """Make `name` under a temporary name with `make(temp, fd)`, then move it in."""
        temp = f".drill-{uuid.uuid4().hex[:12]}"
        try:
            make(temp, self.fd)
            if overwrite:
                os.replace(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            else:  # fails if the name was taken meanwhile
                os.link(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=self.fd)

    def stamp(self, name: str, facts, owners: bool) -> None:
        """Give `name` its archived owner (as root), mode and time, never through a link."""
        if owners and facts.uid is not None:
            os.chown(name, facts.uid, facts.gid or 0, dir_fd=self.fd, follow_symlinks=False)
        is_link = isinstance(facts, Entry) and facts.kind == LINK
        if facts.mode is not None and not is_link:
            os.chmod(name, facts.mode, dir_fd=self.fd)
        if facts.mtime_ns is not None:
            ns = facts.mtime_ns
            os.utime(name, ns=(ns, ns), dir_fd=self.fd, follow_symlinks=False)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
