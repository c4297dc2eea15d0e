"""What changed between an uploads snapshot and the one before it, and what looks encrypted.

Files are compared by path: added, removed, changed (sha256 from the old manifest, else size)
and renamed (`x.jpg` -> `x.jpg.locked`, or `x.jpg` -> `x.locked` in the same folder). For the
changed and renamed ones the old snapshot's first bytes are read (one ranged read each, in a
random order seeded by the new snapshot's key, so that a rerun reads the same ones): `BATCH` of
them, and up to `MAX_HEADS` when the first batch flags any; the new first bytes were sniffed as
the restore streamed them.

A changed file **looks encrypted** when:

- its old bytes carried a known type's header (PNG, JPEG, PDF, GIF, ZIP/Office...) and its new
  ones carry none and read like noise: the header was lost;
- its old bytes were plainly not noise (text, markup, CSV: under `filetype.LOW` bits per byte)
  and its new ones read like noise (`filetype.HIGH` or more). Never for a compressed type: a
  JPEG re-saved is noise before and after, so JPEG, PNG, ZIP... are judged by header only;
- it was renamed to a new extension that several renamed files share, absent before, and its
  new bytes carry no header (the rename alone is no harm: a file still a PNG is a PNG).

Files removed while several header-less files of classes absent before were added (renamed
to random names, `a8f3.encrypted`) count as **replaced** by them, as many as were added.

Example::

    changes = compare(storage, "files/20250114_020000/", before, restored, seed=backup.key)
    print(changes.encrypted, "of", changes.candidates, "changed files look encrypted")
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from drills.config.errors import DrillError
from drills.restore import filetype
from drills.restore.fetch import read_head
from drills.restore.files import FilesRestore
from drills.restore.filetype import Head
from drills.storage import Storage

MAX_HEADS = 256
"""Old heads read from the snapshot before, at most (a seeded random sample beyond)."""
BATCH = 64
"""Old heads read at a time; a first batch with nothing that looks encrypted is enough."""
READERS = 8
"""Ranged reads in flight at once."""
MASS_RENAME = 3
"""Renamed files sharing one new extension that make a mass rename."""


@dataclass(frozen=True)
class FileBefore:
    """One file of the snapshot before: its size and, from a manifest, its sha256."""

    size: int
    sha256: str | None = None


@dataclass(frozen=True)
class Flag:
    """A changed file that looks encrypted, and why."""

    old: str
    new: str
    why: str
    """"header" (lost its type's header), "noise" (turned to noise), "renamed"."""
    detail: str

    @property
    def klass(self) -> str:
        """The class it had: its old extension."""
        return filetype.extension(self.old) or "(no extension)"

    @property
    def renamed_to(self) -> str | None:
        """Its new extension, when it was renamed."""
        return filetype.extension(self.new) if self.new != self.old else None


@dataclass
class Changes:
    """A snapshot against the one before it, file by file."""

    against: str
    by: str
    """How content changes were seen: "sha256" (the old manifest) or "size" (its listing)."""
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    union: int = 0
    judged: int = 0
    """Changed and renamed files whose old first bytes were read and judged."""
    unreadable: int = 0
    flags: list[Flag] = field(default_factory=list)
    replaced: int = 0
    """Removed files whose place header-less files of new classes took."""
    strangers: Counter = field(default_factory=Counter)
    """Those header-less files of new classes, by extension."""
    seconds: float = 0.0

    @property
    def candidates(self) -> int:
        """Files whose content or name changed: the ones that could be encrypted in place."""
        return len(self.changed) + len(self.renamed)

    @property
    def encrypted(self) -> int:
        """Files that look encrypted: the changed ones (counted, or estimated from the judged
        sample) and the replaced ones."""
        flagged = round(len(self.flags) * self.candidates / self.judged) if self.judged else 0
        return flagged + self.replaced

    def as_dict(self) -> dict[str, Any]:
        """The comparison as the drill's profile keeps it (counts, never names)."""
        touched = len(self.added) + len(self.removed) + self.candidates
        return {
            "against": self.against,
            "by": self.by,
            "added": len(self.added),
            "removed": len(self.removed),
            "changed": len(self.changed),
            "renamed": len(self.renamed),
            "share_changed": round(touched / self.union, 4) if self.union else 0.0,
            "look_encrypted": self.encrypted,
            "replaced": self.replaced,
            "share_encrypted": round(self.encrypted / (self.candidates + self.replaced), 4)
            if self.candidates + self.replaced
            else 0.0,
            "heads_read": self.judged,
            "heads_unreadable": self.unreadable,
            "seconds": round(self.seconds, 3),
        }


def compare(
    storage: Storage,
    root: str,
    before: Mapping[str, FileBefore],
    restored: FilesRestore,
    *,
    seed: str,
) -> Changes:
    """`restored` against the snapshot stored under `root` (its files in `before`)."""
    started = time.monotonic()
    by = "sha256" if before and all(f.sha256 for f in before.values()) else "size"
    changes = Changes(against=root, by=by)
    now = restored.streamed
    added = sorted(set(now) - set(before))
    removed = sorted(set(before) - set(now))
    for path in sorted(set(now) & set(before)):
        old, new = before[path], now[path]
        if old.size != new.size or (old.sha256 and old.sha256.lower() != new.sha256):
            changes.changed.append(path)
    changes.renamed = _renames(added, removed)
    came, gone = {n for _, n in changes.renamed}, {o for o, _ in changes.renamed}
    changes.added = [p for p in added if p not in came]
    changes.removed = [p for p in removed if p not in gone]
    changes.union = len(set(now) | set(before)) - len(changes.renamed)
    classes_before = {filetype.extension(p) for p in before}
    for path in changes.added:
        head = restored.heads.get(path)
        if filetype.extension(path) not in classes_before and head is not None and head.bare:
            changes.strangers[filetype.extension(path)] += 1
    if changes.strangers.total() >= MASS_RENAME:
        changes.replaced = min(changes.strangers.total(), len(changes.removed))

    _judge(storage, root, before, restored, changes, seed, classes_before)
    changes.seconds = time.monotonic() - started
    return changes


def _judge(
    storage: Storage,
    root: str,
    before: Mapping[str, FileBefore],
    restored: FilesRestore,
    changes: Changes,
    seed: str,
    classes_before: set[str],
) -> None:
    """Read the old first bytes of changed and renamed files in a seeded random order, a batch
    at a time, and flag those that look encrypted. A first batch with nothing flagged ends it:
    nothing in `BATCH` random changed files means under 5% of them (95% confidence), far from
    any threshold, so a healthy snapshot costs one batch of reads."""
    pairs = [(p, p) for p in changes.changed] + changes.renamed
    random.Random(seed).shuffle(pairs)
    mass = _mass_renames(changes.renamed, classes_before)
    for start in range(0, min(len(pairs), MAX_HEADS), BATCH):
        batch = pairs[start : min(start + BATCH, MAX_HEADS)]
        old_heads = _read_heads(storage, root, [old for old, _ in batch], before)
        for old, new in batch:
            if old not in old_heads:
                changes.unreadable += 1
                continue
            changes.judged += 1
            flag = looks_encrypted(old, old_heads[old], new, restored.heads.get(new), mass)
            if flag is not None:
                changes.flags.append(flag)
        if not changes.flags and changes.judged >= BATCH:
            return


def looks_encrypted(
    old: str, before: Head, new: str, now: Head | None, mass: set[str] = frozenset()
) -> Flag | None:
    """Why the file `old` (first bytes `before`), now `new` (`now`), looks encrypted; None
    when it does not. `mass`: new extensions that many files were renamed to."""
    if now is None:
        return None
    if before.kind is not None and now.bare:
        return Flag(old, new, "header", f"lost their {filetype.describe(before.kind)} header")
    quiet = before.entropy is not None and before.entropy < filetype.LOW
    if quiet and not filetype.by_header(old, before) and now.noise:
        rose = f"{before.entropy:.1f} -> {now.entropy:.1f} bits per byte"
        return Flag(old, new, "noise", f"turned to noise (e.g. {rose})")
    if new != old and filetype.extension(new) in mass and now.bare:
        return Flag(old, new, "renamed", "renamed and carry no header")
    return None


def _renames(added: list[str], removed: list[str]) -> list[tuple[str, str]]:
    """(old, new) pairs: a suffix added (`x.jpg` -> `x.jpg.locked`), else the suffix replaced
    (`x.jpg` -> `x.locked`, when one removed file of that folder has that stem)."""
    gone = set(removed)
    by_stem: dict[str, list[str]] = defaultdict(list)
    for path in removed:
        by_stem[_stem(path)].append(path)
    pairs = []
    for new in added:
        old = _stem(new)
        if old not in gone:
            same = [p for p in by_stem.get(old, []) if p in gone]
            old = same[0] if len(same) == 1 else None
        if old is not None:
            gone.discard(old)
            pairs.append((old, new))
    return pairs


def _stem(path: str) -> str:
    pure = PurePosixPath(path)
    return str(pure.with_suffix("")) if pure.suffix else path


def _mass_renames(renamed: list[tuple[str, str]], classes_before: set[str]) -> set[str]:
    counts = Counter(filetype.extension(new) for _, new in renamed)
    return {ext for ext, n in counts.items() if n >= MASS_RENAME and ext not in classes_before}


def _read_heads(
    storage: Storage, root: str, paths: list[str], before: Mapping[str, FileBefore]
) -> dict[str, Head]:
    """The old first bytes of each path, sniffed; unreadable ones are left out."""

    def one(path: str) -> tuple[str, Head | None]:
        if before[path].size == 0:
            return path, filetype.sniff(b"")  # a ranged read of nothing is an error on S3
        try:
            return path, filetype.sniff(read_head(storage, root + path, filetype.SAMPLE))
        except DrillError:
            return path, None  # archived or deleted since: judged on the others

    if not paths:
        return {}
    with ThreadPoolExecutor(min(READERS, len(paths)), thread_name_prefix="head") as pool:
        return {path: head for path, head in pool.map(one, paths) if head is not None}
