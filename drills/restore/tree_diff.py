"""A restored tree against the snapshot it came from, fact by fact, every difference named.

`compare` looks at every entry the snapshot records (files, links, directories) and every
fact it records of each (content, kind, link target, mode, owner, modification time to the
nanosecond, hard links); a fact the snapshot does not record (an object listing has no
modes) is not compared. Overrides say what a recovery was asked to change on purpose (`[files]
owner` and `mode`).

Example::

    differences = compare(expected, restored, owner=(1000, 1000))
    differences.missing     # ['docs/a.pdf', 'photos/empty/']
    differences.attributes  # ['keys/id_rsa: mode 644, recorded 600']
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from drills.storage.snapshot import DIR, FILE, LINK, ROOT, Entry, Snapshot, order_key

KINDS = {FILE: "a file", LINK: "a link", DIR: "a directory"}


@dataclass
class Differences:
    """What differs between a snapshot and its restored tree, in words per entry."""

    missing: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    hardlinks: list[str] = field(default_factory=list)


def dir_mode(mode: int) -> int:
    """A directory's mode for a file mode: x wherever r is (640 -> 750)."""
    return mode | ((mode & 0o444) >> 2)


def compare(
    want: Snapshot,
    got: Snapshot,
    *,
    owner: tuple[int, int] | None = None,
    mode: int | None = None,
    skipped: Collection[str] = (),
) -> Differences:
    """`got` (a restored tree, read in place) against `want`; entries in `skipped` were left
    out on purpose and are neither missing nor compared."""
    found = Differences()
    for path in sorted(want.entries, key=order_key):
        if path in skipped:
            continue
        entry, there = want.entries[path], got.entries.get(path)
        if there is None:
            found.missing.append(_shown(entry))
            continue
        if there.kind != entry.kind:
            now, was = KINDS[there.kind], KINDS[entry.kind]
            found.altered.append(f"{entry.shown} ({now}, recorded {was})")
            continue
        if entry.kind == FILE:
            if entry.sha256 is not None and there.sha256 != entry.sha256:
                found.altered.append(f"{path} (checksum differs)")
            elif entry.size != there.size:
                found.altered.append(f"{path} (size {there.size}, recorded {entry.size})")
        elif entry.kind == LINK and there.target != entry.target:
            found.altered.append(f"{path} (a link to {there.target!r}, recorded {entry.target!r})")
        found.attributes += _attributes(entry, there, owner, mode)
        if entry.kind == FILE and entry.hardlink is not None and entry.hardlink not in skipped:
            first = got.entries.get(entry.hardlink)
            if first is None or first.inode != there.inode:
                found.hardlinks.append(f"{path} (not the same file as {entry.hardlink})")
    parents = _parents([*want.entries, *skipped]) | {ROOT}
    found.extra = [
        got.entries[path].shown
        for path in sorted(got.entries, key=order_key)
        if path not in want.entries and path not in skipped and path not in parents
    ]
    return found


def _attributes(
    entry: Entry, there: Entry, owner: tuple[int, int] | None, mode: int | None
) -> list[str]:
    said = []
    want_mode = entry.mode
    if mode is not None and entry.kind != LINK:
        want_mode = dir_mode(mode) if entry.kind == DIR else mode
    if entry.kind != LINK and want_mode is not None and there.mode != want_mode:
        said.append(f"mode {there.mode:o}, recorded {want_mode:o}")
    uid, gid = owner if owner is not None else (entry.uid, entry.gid)
    if uid is not None and (there.uid, there.gid) != (uid, gid):
        said.append(f"owner {there.uid}:{there.gid}, recorded {uid}:{gid}")
    if entry.mtime_ns is not None and there.mtime_ns != entry.mtime_ns:
        said.append(f"modified {_time(there.mtime_ns)}, recorded {_time(entry.mtime_ns)}")
    return [f"{entry.shown}: {', '.join(said)}"] if said else []


def _parents(paths: Collection[str]) -> set[str]:
    """Every directory above `paths`: restored parents a snapshot need not list (an object
    listing lists none, not even the root)."""
    found = set()
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            found.add("/".join(parts[:i]))
    return found


def _shown(entry: Entry) -> str:
    return entry.shown if entry.kind == FILE else f"{entry.shown} ({KINDS[entry.kind][2:]})"


def _time(ns: int | None) -> str:
    if ns is None:
        return "?"
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{seconds}.{rest:09d}"
