"""What the recovery commands share: the confirmation prompt, names, sizes, choosing a backup."""

from __future__ import annotations

import select
import shutil
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import docker

from drills.config.clock import StepTimeout, human
from drills.config.errors import ConfigError, DrillError, EnvironmentProblem
from drills.runtime import engine
from drills.runtime.labels import RunSession, sweep
from drills.storage import catalog
from drills.storage.catalog import Backup

PROMPT_TIMEOUT = 600.0
SHOWN = 5


class RecoveryDeclined(DrillError):
    """The person at the terminal did not confirm; nothing was changed."""


def stamp(now: datetime) -> str:
    """The ``YYYYMMDD_HHMMSS`` (UTC) that names a recovery's new and kept copies."""
    return now.astimezone(UTC).strftime("%Y%m%d_%H%M%S")


def iso(when: datetime) -> str:
    """UTC ISO 8601 to the second, with a Z."""
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def precise(when: datetime) -> str:
    """UTC ISO 8601 to the microsecond, with a Z (heartbeats and targets are that close)."""
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def size(count: int | None) -> str:
    """'512 B', '3.4 MB' for people."""
    if count is None:
        return "size unknown"
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with a UTC offset (Z or +02:00); a time without one is refused."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--at {text!r}: not an ISO-8601 time such as 2025-01-15T02:00:00Z"
        ) from None
    if when.tzinfo is None:
        raise ConfigError(
            f"--at {text!r}: needs a UTC offset (Z or +02:00); a bare time is ambiguous"
        )
    return when.astimezone(UTC)


def choose(
    backups: Sequence[Backup], kind: str, *, key: str | None, at: datetime | None = None
) -> tuple[Backup, str]:
    """The backup to restore and why it was chosen: the key given, the latest at or before
    `at` (never a newer one), else the latest. An unknown key is a usage error."""
    if key is not None:
        wanted = key.strip()
        for backup in backups:
            if backup.key in (wanted, wanted.rstrip("/") + "/") or backup.key.endswith(
                "/" + wanted.lstrip("/")
            ):
                return backup, "named with its key"
        newest = ", ".join(b.key for b in sorted(backups, key=lambda b: b.taken_at)[-SHOWN:])
        raise ConfigError(
            f"no {kind} backup with the key {wanted!r}; the newest are: {newest or 'none'}"
        )
    if at is not None:
        return catalog.latest_at_or_before(backups, at), f"the latest at or before {iso(at)}"
    return catalog.latest(backups), "the latest"


def describe_backup(backup: Backup, now: datetime) -> str:
    """'key (format, compression, 3.4 MB), taken T (manifest), 3h 02m ago'."""
    manifest = backup.manifest
    count = manifest.bytes if manifest and manifest.bytes is not None else backup.size
    what = [backup.format]
    if backup.compression not in ("none", ""):
        what.append(backup.compression)
    if backup.encrypted:
        what.append("encrypted")
    what.append(size(count))
    age = human(max(0.0, (now - backup.taken_at).total_seconds()))
    return (
        f"{backup.key} ({', '.join(what)}), taken {iso(backup.taken_at)} "
        f"({backup.time_source}), {age} ago"
    )


def free_bytes(path: Path) -> tuple[Path, int]:
    """Free space where `path` is (or would be created): the nearest existing ancestor's."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free


def need_space(path: Path, needed: int, what: str, advice: str) -> int:
    """Raise EnvironmentProblem unless `needed` bytes are free where `path` is; return free."""
    where, free = free_bytes(path)
    if free < needed:
        raise EnvironmentProblem(
            f"{path}: not enough free space for {what}: {size(free)} free on {where}, "
            f"{size(needed)} needed; {advice}; nothing was changed"
        )
    return free


def confirm(
    expected: str,
    *,
    yes: bool,
    what: str,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    timeout: float = PROMPT_TIMEOUT,
) -> None:
    """Ask for `expected` to be typed; `yes` skips the question. A non-terminal stdin without
    `yes` is refused (a script must say --yes), as is a wrong answer or none in `timeout`."""
    if yes:
        return
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    if not stdin.isatty():
        raise ConfigError(
            f"stdin is not a terminal, so nobody can confirm that {what}; pass --yes to "
            "proceed without the question (scripts); nothing was changed"
        )
    out.write(f"Type {expected!r} to confirm that {what} (anything else stops): ")
    out.flush()
    ready, _, _ = select.select([stdin], [], [], timeout)
    if not ready:
        out.write("\n")
        raise RecoveryDeclined(f"no answer within {human(timeout)}; nothing was changed")
    answer = stdin.readline().strip()
    if answer != expected:
        raise RecoveryDeclined(
            f"the confirmation typed ({answer!r}) is not {expected!r}; nothing was changed"
        )


def run_hooks(commands: Sequence[str], when: str, timeout: float, say) -> None:
    """Run configured shell commands in order; the first failure raises, naming it."""
    for command in commands:
        say(f"{when}: running `{command}`")
        try:
            result = subprocess.run(
                ["sh", "-c", command],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StepTimeout(
                f"{when} command `{command}` did not finish within its bound of {human(timeout)}"
            ) from None
        if result.returncode != 0:
            lines = [ln for ln in (result.stderr + result.stdout).splitlines() if ln.strip()]
            detail = " | ".join(lines[-3:]) or "no output"
            raise DrillError(
                f"{when} command `{command}` failed (exit {result.returncode}): {detail}"
            )


class Workspace:
    """The Docker engine and this recovery's run labels, opened on first use: what a recovery
    starts (tools, helpers, a recovery container) is labelled, and removed by `close()` or,
    after a kill, by the next run's sweep."""

    def __init__(self) -> None:
        self._client: docker.DockerClient | None = None
        self._session: RunSession | None = None

    @property
    def client(self) -> docker.DockerClient:
        """The engine's client (exit 3 with advice when there is none)."""
        if self._client is None:
            self._client = engine.connect()
        return self._client

    @property
    def session(self) -> RunSession:
        """This recovery's run: leftovers of dead runs are swept when it begins."""
        if self._session is None:
            client = self.client
            self._session = RunSession.begin()
            sweep(client, keep=self._session.run_id)
        return self._session

    def close(self) -> None:
        """Remove everything this recovery started (best effort)."""
        if self._session is not None:
            self._session.end(self._client)
            self._session = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
