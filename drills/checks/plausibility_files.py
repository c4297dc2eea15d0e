"""Plausibility of an uploads snapshot: not emptied, not mass-encrypted, against what came before.

Ransomware leaves every upload in place, each one encrypted (often renamed, `x.jpg` ->
`x.jpg.locked`); a failed mount leaves the uploads directory empty. Either way the next snapshot
restores cleanly. So the files drill profiles what it restored (file count, bytes, and per class
of file, its extension: count, bytes, and what the files' first bytes say) and compares it with
two baselines, as the database drill does (`drills.checks.plausibility`):

- the snapshot before it in storage (its manifest, else its listing), file by file: what
  changed, and which changed files look encrypted (`drills.checks.snapshot_changes`);
- the last passing drill (`<report-dir>/history.jsonl`), class by class: a class whose files
  carried their type's header, or were plainly not noise (text), and now do not, counts those
  files; header-less files of new classes (`.locked`, `.jpg.locked`) count as many as the old
  classes lost. This catches an encryption spread over several snapshots, each under the
  threshold against the one before.

It fails when more than `max_encrypted` of the uploads look encrypted, or when the file count or
the total bytes dropped by more than `max_shrink`. New files, new types, grown classes and
re-saved images (changed, still carrying their header) are fine.

Example::

    baselines, notes = files_baselines(history, "drishti", backup, previous, storage)
    profile = files_profile(restored, storage, baselines, seed=backup.key)
    findings = judge_files(profile, backup, baselines, FilesLimits())
    record_plausibility(record, baselines, findings, accept=None)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from drills.checks import snapshot_changes
from drills.checks.plausibility import (
    Baseline,
    Finding,
    _shrunk,
    _size,
    history_baseline,
    last_passing,
    previous_baseline,
)
from drills.checks.snapshot_changes import Changes, FileBefore, Flag
from drills.config.errors import DrillError
from drills.config.schema import FilesSettings
from drills.restore import filetype
from drills.restore.files import FilesRestore
from drills.restore.filetype import Head
from drills.storage import Storage, snapshot
from drills.storage.catalog import Backup

TYPED = 0.5
"""A class "carries its header" when at least this share of its files did (what it lost since
is counted against what it had, so an encryption already half accepted still counts)."""
QUIET = 0.5
"""A class is "not noise" when at most this share of its measured files read like noise."""
SHOWN = 5


@dataclass(frozen=True)
class FilesLimits:
    """When a snapshot is implausible; each is a drill.toml key of `[files]`."""

    max_shrink: float = 0.5
    """File count, or total bytes, may drop by at most this share."""
    max_encrypted: float = 0.3
    """At most this share of the uploads may change in one snapshot and look encrypted."""

    @classmethod
    def of(cls, settings: FilesSettings) -> FilesLimits:
        """The thresholds of `[files]` (percent in drill.toml)."""
        return cls(settings.max_shrink / 100, settings.max_encrypted / 100)


@dataclass
class ClassStats:
    """One class of files (an extension) of a snapshot."""

    files: int = 0
    bytes: int = 0
    typed: int = 0
    """Files whose first bytes carry the header their name promises (a .png that is a PNG)."""
    bare: int = 0
    """Files whose first bytes carry no known header and are not plainly quiet."""
    measured: int = 0
    """Files without a known header, long enough to measure their entropy."""
    noise: int = 0
    """Of those, the files whose first bytes read like noise."""

    def add(self, path: str, size: int, head: Head | None) -> None:
        """Count one file of the class."""
        self.files += 1
        self.bytes += size
        if head is not None:
            self.typed += head.kind is not None and head.kind == filetype.promised_kind(path)
            self.bare += head.bare
            self.measured += head.entropy is not None
            self.noise += head.noise


@dataclass
class FilesBaseline(Baseline):
    """A files baseline: the snapshot before (file by file) or the last passing drill (class by
    class)."""

    files: int = 0
    total_bytes: int = 0
    classes: dict[str, ClassStats] = field(default_factory=dict)
    headers_known: bool = False
    """Whether `classes` knows what the files' first bytes said (a drill's profile does)."""
    key: str = ""
    listing: dict[str, FileBefore] | None = None
    """The snapshot before, file by file (None for the last passing drill)."""

    def as_dict(self) -> dict[str, Any]:
        """The baseline as drill.json keeps it (its summary, never its file names)."""
        return {
            "source": self.source,
            "kind": self.kind,
            "taken_at": self.taken_at.isoformat() if self.taken_at else None,
            "files": self.files,
            "bytes": self.total_bytes,
            "extensions": {ext: stats.files for ext, stats in sorted(self.classes.items())},
            "compared": self.facts,
        }


@dataclass
class FilesProfile:
    """What the files drill restored: counts per class, and the changes since the snapshot
    before."""

    files: int
    bytes: int
    classes: dict[str, ClassStats]
    heads: dict[str, Head] = field(repr=False)
    changes: Changes | None = None

    def as_dict(self) -> dict[str, Any]:
        """The profile for drill.json and the history (counts, never file names)."""
        return {
            "files": self.files,
            "bytes": self.bytes,
            "extensions": {ext: asdict(stats) for ext, stats in sorted(self.classes.items())},
            "changes": self.changes.as_dict() if self.changes else None,
        }


def files_baselines(
    history: Iterable[Mapping[str, Any]],
    estate: str,
    backup: Backup,
    previous: Backup | None,
    storage: Storage,
) -> tuple[list[FilesBaseline], list[str]]:
    """The files drill's baselines, the last passing drill first, and notes on what could not
    serve as one."""
    found, notes = [], []
    entry = last_passing(history, estate, "files")
    generic = history_baseline(entry, backup)
    if entry is not None and generic is not None:
        found.append(_from_history(generic, entry["profile"]))
    if previous is not None:
        try:
            found.append(_from_previous(previous, storage))
        except DrillError as exc:
            notes.append(f"the snapshot before it could not serve as a baseline: {exc}")
    return [b for b in found if b is not None], notes


def files_profile(
    restored: FilesRestore, storage: Storage, baselines: list[FilesBaseline], *, seed: str
) -> FilesProfile:
    """The profile of a restored snapshot, with its changes since the snapshot before (the
    baseline with a listing) when there is one."""
    streamed, heads = restored.streamed, restored.heads
    profile = FilesProfile(
        files=len(streamed),
        bytes=sum(state.size for state in streamed.values()),
        classes=_classes((path, state.size, heads.get(path)) for path, state in streamed.items()),
        heads=dict(heads),
    )
    for base in baselines:
        if base.listing is not None:
            profile.changes = snapshot_changes.compare(
                storage, base.key, base.listing, restored, seed=seed
            )
    return profile


def judge_files(
    profile: FilesProfile, backup: Backup, baselines: list[FilesBaseline], limits: FilesLimits
) -> list[Finding]:
    """Every implausible change of the restored snapshot against each baseline."""
    where = f"in {backup.key} (taken {backup.taken_at:%Y-%m-%d %H:%M}Z)"
    findings = []
    for base in baselines:
        causes = _shrink(profile, base, limits, where)
        if base.listing is not None and profile.changes is not None:
            causes += _encrypted_since(profile.changes, base, limits, where)
        elif base.headers_known:
            causes += _encrypted_by_class(profile, base, limits, where)
        findings += [Finding(base.source, cause) for cause in causes]
    return findings


# -- baselines ----------------------------------------------------------------------------------


def _from_history(generic: Baseline, profile: Mapping[str, Any]) -> FilesBaseline | None:
    classes = profile.get("extensions")
    if not isinstance(profile.get("files"), int) or not isinstance(classes, dict):
        return None  # a profile of another shape (an older harness): no baseline
    base = _adopt(generic)
    base.files, base.total_bytes = int(profile["files"]), int(profile.get("bytes") or 0)
    for ext, stats in classes.items():
        if isinstance(stats, dict):
            known = {k: int(v) for k, v in stats.items() if k in ClassStats.__annotations__}
            base.classes[str(ext)] = ClassStats(**known)
    base.headers_known = True
    base.facts = ["file count", "bytes", "files per extension", "file headers per extension"]
    return base


def _from_previous(previous: Backup, storage: Storage) -> FilesBaseline:
    generic = previous_baseline(previous)
    assert generic is not None  # None only without a previous backup
    base = _adopt(generic)
    base.key = previous.key
    try:
        manifest = previous.manifest
    except DrillError:
        manifest = None  # that backup's own finding; its listing still serves
    if manifest is not None and manifest.files:
        base.listing = {e.path: FileBefore(e.size, e.sha256) for e in manifest.files}
        compared = "sha256 per file (manifest)"
    else:
        stored = snapshot.stored_snapshot(storage, previous.key)
        base.listing = {p: FileBefore(e.size) for p, e in stored.files.items()}
        compared = "size per file (listing, no manifest)"
    base.files = len(base.listing)
    base.total_bytes = sum(f.size for f in base.listing.values())
    base.classes = _classes((path, f.size, None) for path, f in base.listing.items())
    base.facts = ["file count", "bytes", "files per extension", compared]
    return base


def _adopt(generic: Baseline) -> FilesBaseline:
    return FilesBaseline(source=generic.source, kind=generic.kind, taken_at=generic.taken_at)


def _classes(files: Iterable[tuple[str, int, Head | None]]) -> dict[str, ClassStats]:
    classes: dict[str, ClassStats] = defaultdict(ClassStats)
    for path, size, head in files:
        classes[filetype.extension(path)].add(path, size, head)
    return dict(classes)


# -- causes -------------------------------------------------------------------------------------


def _shrink(profile: FilesProfile, base: FilesBaseline, limits: FilesLimits, where: str):
    causes = []
    if base.files and _shrunk(base.files, profile.files, limits.max_shrink):
        causes.append(
            f"the file count dropped from {base.files} to {profile.files} {where} (more than "
            f"{limits.max_shrink:.0%}; an emptied or unmounted uploads directory?): "
            + _losses(base.classes, profile.classes, lambda s: s.files, str)
        )
    if base.total_bytes and _shrunk(base.total_bytes, profile.bytes, limits.max_shrink):
        causes.append(
            f"the uploads' bytes dropped from {_size(base.total_bytes)} to "
            f"{_size(profile.bytes)} {where} (more than {limits.max_shrink:.0%}): "
            + _losses(base.classes, profile.classes, lambda s: s.bytes, _size)
        )
    return causes


def _losses(
    before: Mapping[str, ClassStats],
    now: Mapping[str, ClassStats],
    measure: Callable[[ClassStats], int],
    show: Callable[[int], str],
) -> str:
    """The classes that lost most, in words: `.jpg 20 -> 0, .pdf 8 -> 1`."""
    losses = []
    for ext, stats in before.items():
        was, left = measure(stats), measure(now[ext]) if ext in now else 0
        if was > left:
            losses.append((was - left, ext or "(no extension)", was, left))
    losses.sort(reverse=True)
    shown = ", ".join(f"{ext} {show(was)} -> {show(left)}" for _, ext, was, left in losses[:SHOWN])
    return shown + (f" and {len(losses) - SHOWN} more classes" if len(losses) > SHOWN else "")


def _encrypted_since(
    changes: Changes, base: FilesBaseline, limits: FilesLimits, where: str
) -> list[str]:
    count = changes.encrypted
    if not base.files or count <= base.files * limits.max_encrypted:
        return []
    groups: dict[tuple[str, str, str | None], list[Flag]] = defaultdict(list)
    for flag in changes.flags:
        groups[(flag.klass, flag.why, flag.renamed_to)].append(flag)
    parts = [_group(*key, len(flags), flags[0].detail) for key, flags in groups.items()]
    if changes.replaced:
        parts.append(
            f"{changes.replaced} removed files replaced by header-less files of new classes "
            f"({_classes_of(changes.strangers)})"
        )
    sampled = (
        f", estimated from {changes.judged} of {changes.candidates} changed files"
        if changes.judged < changes.candidates
        else ""
    )
    examples = ", ".join(flag.new for flag in changes.flags[:SHOWN])
    return [
        f"uploads look encrypted: {count} of the {base.files} files before changed {where} "
        f"and look encrypted ({count / base.files:.0%}, more than {limits.max_encrypted:.0%}"
        f"{sampled}): " + "; ".join(parts) + (f"; e.g. {examples}" if examples else "")
    ]


def _group(klass: str, why: str, renamed_to: str | None, count: int, detail: str) -> str:
    """One class's flagged files in words: `.jpg: 20 lost their JPEG header`."""
    if why == "renamed":
        return f"{klass}: {count} renamed to *{renamed_to} and carry no header"
    return f"{klass}: {count} {detail}" + (f" (renamed to *{renamed_to})" if renamed_to else "")


def _encrypted_by_class(
    profile: FilesProfile, base: FilesBaseline, limits: FilesLimits, where: str
) -> list[str]:
    parts, count = [], 0
    for ext, before in sorted(base.classes.items()):
        now = profile.classes.get(ext)
        if now is None or not before.files:
            continue
        kind = filetype.promised_kind("x" + ext) if ext else None
        if kind is not None and before.typed >= TYPED * before.files:
            lost = _excess(before.bare, before.files, now.bare, now.files)
            said = (
                f"{now.typed} of {now.files} carry a {filetype.describe(kind)} header "
                f"(before: {before.typed} of {before.files})"
            )
        elif kind is None and before.measured and before.noise <= QUIET * before.measured:
            lost = _excess(before.noise, before.measured, now.noise, now.measured)
            said = (
                f"{now.noise} of {now.measured} read like noise "
                f"(before: {before.noise} of {before.measured})"
            )
        else:
            continue  # a class of noise by nature, or without headers before: nothing to lose
        if lost:
            count += lost
            parts.append(f"{ext or '(no extension)'}: {said}")
    strangers, lost = _strangers(profile, base)
    if strangers.total() >= snapshot_changes.MASS_RENAME and lost:
        count += min(strangers.total(), lost)
        parts.append(
            f"{strangers.total()} header-less files of new classes ({_classes_of(strangers)}) "
            f"where the old classes lost {lost} files"
        )
    if not base.files or count <= base.files * limits.max_encrypted:
        return []
    return [
        f"uploads look encrypted: {count} of the {base.files} files before lost their header "
        f"or turned to noise {where} ({count / base.files:.0%}, more than "
        f"{limits.max_encrypted:.0%}): " + "; ".join(parts)
    ]


def _excess(had: int, of: int, has: int, of_now: int) -> int:
    """Files over the share the baseline had (`had` of `of`), among `of_now` (`has` of them)."""
    return max(0, has - round(had / of * of_now)) if of else has


def _strangers(profile: FilesProfile, base: FilesBaseline) -> tuple[Counter, int]:
    """Header-less files of classes absent from the baseline (`.locked`, `.jpg.locked`), by
    class, and how many files the baseline's classes lost."""
    strangers: Counter = Counter()
    for path, head in profile.heads.items():
        if filetype.extension(path) not in base.classes and head.bare:
            strangers[filetype.extension(path)] += 1
    lost = sum(
        max(0, before.files - (profile.classes[ext].files if ext in profile.classes else 0))
        for ext, before in base.classes.items()
    )
    return strangers, lost


def _classes_of(counts: Counter) -> str:
    return ", ".join(f"{ext or '(no extension)'} {n}" for ext, n in counts.most_common(SHOWN))
