"""Plausibility of a config archive: no file the estate had is gone from the newest archive.

A config file dropped from the producer's list, or deleted on the server, leaves an archive
that restores cleanly and misses what a recovery needs. The config drill profiles the restored
archive's file list (names only, never a value) and compares it with two baselines, as the
database drill does (`drills.checks.plausibility`): the last passing drill (`<report-dir>/
history.jsonl`) and the archive before it in storage (its manifest's members, else its own
listing, read by opening it). A file either had and the newest archive lacks fails the drill,
unless `[config] allow_vanished` names it. Files are matched by their path below the directory
all of a baseline's files share, so that config moved as a whole (to a new host directory)
is not taken for config lost.

Example::

    baselines, notes = config_baselines(history, "drishti", backup, previous, list_names)
    findings = judge_config(config_profile(restored), backup, baselines, allow_vanished=())
    record_plausibility(record, baselines, findings, accept=None)
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from drills.checks.plausibility import (
    Baseline,
    Finding,
    history_baseline,
    last_passing,
    previous_baseline,
)
from drills.config.errors import DrillError
from drills.restore import filetype
from drills.restore.config import RestoredConfig
from drills.storage.catalog import Backup

SHOWN = 10


@dataclass
class ConfigBaseline(Baseline):
    """A config baseline: the file names an earlier archive held."""

    names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The baseline as drill.json keeps it."""
        return {
            "source": self.source,
            "kind": self.kind,
            "taken_at": self.taken_at.isoformat() if self.taken_at else None,
            "files": len(self.names),
            "compared": self.facts,
        }


def config_profile(restored: RestoredConfig) -> dict[str, Any]:
    """The profile of a restored archive: its file and link names (never a value)."""
    return {"files": restored.names}


def config_baselines(
    history: Iterable[Mapping[str, Any]],
    estate: str,
    backup: Backup,
    previous: Backup | None,
    list_names: Callable[[Backup], list[str]],
) -> tuple[list[ConfigBaseline], list[str]]:
    """The config drill's baselines, the last passing drill first, and notes on what could not
    serve as one. `list_names` opens an archive that has no manifest and lists its files."""
    found, notes = [], []
    entry = last_passing(history, estate, "config")
    generic = history_baseline(entry, backup)
    names = (entry or {}).get("profile", {}).get("files")
    if generic is not None and isinstance(names, list):
        found.append(_adopt(generic, [str(n) for n in names], "file list of the restored archive"))
    if previous is not None:
        generic = previous_baseline(previous)
        assert generic is not None  # None only without a previous backup
        try:
            manifest = previous.manifest
            if manifest is not None and manifest.members:
                names = [_normal(m.path) for m in (*manifest.members, *manifest.links)]
                found.append(_adopt(generic, names, "file list (manifest)"))
            else:
                found.append(_adopt(generic, list_names(previous), "file list (opened)"))
        except DrillError as exc:
            notes.append(f"the archive before it could not serve as a baseline: {exc}")
    return found, notes


def judge_config(
    profile: Mapping[str, Any],
    backup: Backup,
    baselines: list[ConfigBaseline],
    *,
    allow_vanished: tuple[str, ...],
) -> list[Finding]:
    """A finding per baseline whose files are not all in the restored archive."""
    now = set(profile["files"])
    findings = []
    for base in baselines:
        # Below the directory the baseline's files share: an estate whose config moved as a
        # whole (a new host directory, the demo's temporary one) still has every file.
        shared = _shared_directory(base.names)
        gone = [
            name
            for name in base.names
            if not _present(name[len(shared) :], now)
            and not any(_named(pattern, name) for pattern in allow_vanished)
        ]
        if gone:
            shown = ", ".join(f"{n} ({_class(n)})" for n in gone[:SHOWN])
            more = f" and {len(gone) - SHOWN} more" if len(gone) > SHOWN else ""
            findings.append(
                Finding(
                    base.source,
                    f"config files gone from {backup.key} (taken "
                    f"{backup.taken_at:%Y-%m-%d %H:%M}Z): {shown}{more}; {len(base.names)} "
                    f"files before, {len(now)} now (if on purpose, list them in [config] "
                    "allow_vanished)",
                )
            )
    return findings


def _adopt(generic: Baseline, names: list[str], compared: str) -> ConfigBaseline:
    return ConfigBaseline(
        source=generic.source,
        kind=generic.kind,
        taken_at=generic.taken_at,
        facts=[compared],
        names=sorted(set(names)),
    )


def _normal(path: str) -> str:
    """A member's name as the restore writes it (`./srv/app/.env` -> `srv/app/.env`)."""
    return "/".join(PurePosixPath(path.lstrip("/")).parts)


def _shared_directory(names: list[str]) -> str:
    """The directory every name lies in (`srv/app/`), "" when they share none."""
    common = posixpath.commonpath([posixpath.dirname(n) for n in names]) if names else ""
    return common + "/" if common else ""


def _present(tail: str, names: set[str]) -> bool:
    return tail in names or any(name.endswith("/" + tail) for name in names)


def _class(name: str) -> str:
    return filetype.extension(name) or "no extension"


def _named(pattern: str, name: str) -> bool:
    wanted = pattern.strip("/")
    return name == wanted or name.endswith("/" + wanted)
