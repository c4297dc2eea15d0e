"""Whether the archived WAL is continuous over the whole window the archive promises.

A drill that recovers to one point proves that point. The promise is wider: any time from
the oldest base backup's end (or `[pitr] accept_gaps_before`) up to the newest archived
WAL. `continuity` checks it by names alone: from the start segment of the *anchor* base
backup (the newest one that ended at or before `accept_gaps_before`, else the oldest), along
the timeline path to the newest timeline that descends from it, every segment up to the
newest archived one must be there. A missing run of segments is a `Hole`; WAL on a timeline
whose history file is not archived is an orphan (recovery cannot follow it). Holes before the
anchor's start are reported as accepted.

    >>> found = continuity(bases, archive, storage, accept_before=None)  # doctest: +SKIP
    >>> found.ok, found.describe()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from drills.pitr.catalog import BaseBackup, WalArchive, timeline_for
from drills.storage import Storage
from drills.storage.walfile import (
    TimelineStretch,
    lsn_segno,
    parse_segment,
    segment_name,
    timeline_of,
)


@dataclass(frozen=True)
class Hole:
    """Segments missing from the archive while later ones on the same path are archived."""

    first: str
    last: str
    count: int
    before: str | None
    """The last segment archived before the hole (None: the anchor's own start is missing)."""
    after: str
    """The first segment archived after it."""
    accepted: bool = False
    """Before the anchor base backup's start: outside the promise."""

    def describe(self, prefix: str) -> str:
        """'wal/X.gz is missing' or 'wal/X.gz .. wal/Y.gz are missing (3 segments)'."""
        if self.count == 1:
            return f"{prefix}{self.first} is missing"
        return f"{prefix}{self.first} .. {prefix}{self.last} are missing ({self.count} segments)"


@dataclass
class Continuity:
    """The archive's continuity from the anchor base backup to its newest segment."""

    anchor: BaseBackup
    target_timeline: int
    path: tuple[TimelineStretch, ...]
    first: str
    newest: str | None
    holes: list[Hole] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    prefix: str = "wal/"

    @property
    def failing(self) -> list[Hole]:
        """The holes inside the promise."""
        return [h for h in self.holes if not h.accepted]

    @property
    def ok(self) -> bool:
        """Whether the WAL is continuous over the promise, on every timeline it needs."""
        return self.newest is not None and not self.failing and not self.orphans

    @property
    def timelines(self) -> list[int]:
        """The timelines the promise runs along, oldest first."""
        return [stretch.tli for stretch in self.path]

    def describe(self) -> str:
        """The continuity for people: what is continuous, or every hole and orphan."""
        tlis = ", ".join(str(t) for t in self.timelines)
        span = f"from {self.anchor.key} ({self.prefix}{self.first}) to "
        if self.newest is None:
            return span + "its end: not one segment of it is archived"
        plural = "s" if len(self.path) > 1 else ""
        span += f"the newest segment {self.prefix}{self.newest}, timeline{plural} {tlis}"
        causes = [h.describe(self.prefix) + " (later ones are archived)" for h in self.failing]
        causes += self.orphans
        if not causes:
            return f"continuous {span}"
        return f"not continuous {span}: " + "; ".join(causes)


def continuity(
    bases: list[BaseBackup],
    archive: WalArchive,
    storage: Storage,
    accept_before: datetime | None = None,
) -> Continuity:
    """Check the archive from the anchor base backup to its newest segment (`bases` oldest
    end first, as `list_base_backups` gives them)."""
    anchor = anchor_base(bases, accept_before)
    seg = anchor.segment_size
    target, path = timeline_for(anchor, archive, storage)
    oldest = min(lsn_segno(b.start_lsn, seg) for b in bases)
    start = lsn_segno(anchor.start_lsn, seg)

    def on_path(number: int) -> str:
        return segment_name(timeline_of(path, number, seg), number, seg)

    present = [
        number
        for tli, number in (parse_segment(n, seg) for n in archive.segments | archive.partials)
        if number >= oldest and tli == timeline_of(path, number, seg)
    ]
    found = Continuity(anchor, target, tuple(path), on_path(start), None, prefix=archive.prefix)
    if not present or max(present) < start:
        return found
    newest = max(present)
    found.newest = on_path(newest)
    archived = archive.segments
    before: int | None = None
    number = min(min(present), start)
    while number <= newest:
        if on_path(number) in archived or (
            number == newest and on_path(number) in archive.partials
        ):
            before = number
            number += 1
            continue
        gap = number
        while on_path(number) not in archived and number < newest:
            number += 1
        found.holes.append(
            Hole(
                on_path(gap),
                on_path(number - 1),
                number - gap,
                on_path(before) if before is not None else None,
                on_path(number),
                accepted=number - 1 < start,
            )
        )
    found.orphans = _orphans(archive, path, start, seg)
    return found


def anchor_base(bases: list[BaseBackup], accept_before: datetime | None) -> BaseBackup:
    """The base backup the promise starts from: the newest that ended at or before
    `accept_before`, else the oldest."""
    if accept_before is not None:
        older = [b for b in bases if b.ended_at <= accept_before]
        if older:
            return older[-1]
    return bases[0]


def _orphans(archive: WalArchive, path: list[TimelineStretch], start: int, seg: int) -> list[str]:
    """Timelines newer than the path's with archived segments but no history file."""
    newest = path[-1].tli
    by_tli: dict[int, list[int]] = {}
    for name in archive.segments:
        tli, number = parse_segment(name, seg)
        if tli > newest and number >= start and tli not in archive.histories:
            by_tli.setdefault(tli, []).append(number)
    return [
        f"timeline {tli} has archived WAL ({archive.prefix}{segment_name(tli, min(n), seg)} .. "
        f"{segment_name(tli, max(n), seg)}) but no {tli:08X}.history: recovery cannot follow it"
        for tli, n in sorted(by_tli.items())
    ]
