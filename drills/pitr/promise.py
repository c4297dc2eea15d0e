"""The promised window: from where recovery is promised up to the newest archived commit,
with the holes in it placed in time.

`continuity` says by names which segments are missing; the measured window
(`drills.pitr.plan.Window`) says which times each base backup reaches. `prove` puts them
together: each hole gets the newest commit before it and the time recovery is possible again
after it (the end of a newer base backup, if any), and the promise its start and end. A
pitr drill fails on any hole inside the promise, whatever target it recovers to.

    >>> promise = prove(window, found, storage, accept_before=None)  # doctest: +SKIP
    >>> promise.ok, promise.describe()
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from drills.pitr.continuity import Continuity, Hole, continuity
from drills.pitr.plan import Survey, Window, iso
from drills.storage import Storage
from drills.storage.walfile import lsn_segno, parse_segment


@dataclass(frozen=True)
class Gap:
    """A hole placed in time: nothing can be recovered from `since` until `until`."""

    hole: Hole
    since: datetime | None
    """The newest commit before the hole (recovery reaches just before it)."""
    until: datetime | None
    """The end of the first base backup after the hole; None: not recoverable after it."""

    def describe(self, prefix: str) -> str:
        """The hole and the time it costs, for people."""
        since = f"just before {iso(self.since)}" if self.since else "the anchor base backup's end"
        until = f"until {iso(self.until)}" if self.until else "on (no base backup after it)"
        return (
            f"{self.hole.describe(prefix)} (later ones are archived): nothing can be recovered "
            f"from {since} {until}"
        )


@dataclass
class Promise:
    """The window the archive promises, proved continuous or not."""

    continuity: Continuity
    window: Window
    start: datetime | None
    """Where the promise starts: the anchor's end, or `accept_gaps_before` after it."""
    gaps: list[Gap]
    accept_before: datetime | None = None

    @property
    def end(self) -> datetime | None:
        """The newest recoverable point's bound (exclusive)."""
        return self.window.latest

    @property
    def ok(self) -> bool:
        """Whether every point of the promise can be recovered to."""
        return self.continuity.ok

    def describe(self) -> str:
        """One sentence: continuous, or each hole with its time, and the pieces left."""
        found = self.continuity
        if found.ok:
            return f"{found.describe()}; promised window {self._span()}"
        prefix = found.prefix
        causes = [g.describe(prefix) for g in self.gaps if not g.hole.accepted]
        causes += found.orphans
        if found.newest is None:
            causes.append(found.describe())
        text = (
            f"the WAL is not continuous from {found.anchor.key} to the newest segment "
            f"{prefix}{found.newest or '?'}: " + "; ".join(causes)
        )
        text += f"; recoverable pieces: {self.window.describe()}"
        after = [g.until for g in self.gaps if not g.hole.accepted and g.until]
        if after and not found.orphans:
            accept = iso(max(after))
            text += (
                f'; if that is older than you promise, accept_gaps_before = "{accept}" accepts it'
            )

        return text

    def _span(self) -> str:
        start = iso(self.start) if self.start else "?"
        end = iso(self.end) if self.end else "?"
        accepted = [g for g in self.gaps if g.hole.accepted]
        note = f" ({len(accepted)} older holes accepted)" if accepted else ""
        return f"{start} .. {end} (exclusive){note}"

    def as_dict(self) -> dict[str, Any]:
        """The promise as drill.json shows it."""
        return {
            "continuous": self.ok,
            "anchor": self.continuity.anchor.key,
            "timelines": self.continuity.timelines,
            "newest_segment": self.continuity.newest,
            "promised": [
                iso(self.start) if self.start else None,
                iso(self.end) if self.end else None,
            ],
            "accept_gaps_before": iso(self.accept_before) if self.accept_before else None,
            "holes": [
                {
                    "first": g.hole.first,
                    "last": g.hole.last,
                    "segments": g.hole.count,
                    "since": iso(g.since) if g.since else None,
                    "until": iso(g.until) if g.until else None,
                    "accepted": g.hole.accepted,
                }
                for g in self.gaps
            ],
            "orphans": self.continuity.orphans,
        }


def prove(
    window: Window, found: Survey, storage: Storage, accept_before: datetime | None = None
) -> Promise:
    """The promise of `found`'s archive with its holes placed in `window`'s times."""
    checked = continuity(found.bases, found.archive, storage, accept_before)
    seg = checked.anchor.segment_size
    gaps = []
    for hole in checked.holes:
        first = parse_segment(hole.first, seg)[1]
        last = parse_segment(hole.last, seg)[1]
        reaching = [r.end for r in window.stretches if r.plan.first_missing == hole.first and r.end]
        after = [r.start for r in window.usable if lsn_segno(r.base.start_lsn, seg) > last]
        since = max(reaching) if reaching and first > 0 else None
        gaps.append(Gap(hole, since, min(after) if after else None))
    start = checked.anchor.ended_at
    if accept_before is not None and accept_before > start:
        start = accept_before
    return Promise(checked, window, start, gaps, accept_before)
