"""Whether a new backup is believable enough to count as good.

A dump of the wrong database, of a wiped one, or of one whose tables were truncated completes
with exit 0 and looks like a backup. It is still written (it is what the source held), but
its manifest marks it suspect with the causes found here, the producer exits 1 naming them,
and it never lets pruning run.

    >>> database_causes([], 389, None)
    ['no tables: the database is empty (the wrong database, or a wiped one?)']
"""

from __future__ import annotations

from collections.abc import Sequence

from drills.backup.common import human_size
from drills.backup.series import Stored
from drills.storage.manifest import TableCount

SHRINK = 10
"""A backup under 1/SHRINK of the previous one's size is suspect."""


def database_causes(tables: Sequence[TableCount], size: int, previous: Stored | None) -> list[str]:
    """The doubts about a database dump: no tables, no rows, or a collapsed size."""
    causes = []
    if not tables:
        causes.append("no tables: the database is empty (the wrong database, or a wiped one?)")
    elif sum(t.rows for t in tables) == 0:
        causes.append(f"no rows in any of its {len(tables)} tables (truncated, or wiped?)")
    causes += size_causes(size, previous)
    return causes


def size_causes(size: int, previous: Stored | None) -> list[str]:
    """A backup under a tenth of the previous good one's size."""
    if previous is None or previous.size == 0 or size * SHRINK >= previous.size:
        return []
    return [
        f"{human_size(size)}, under a tenth of the previous backup {previous.key} "
        f"({human_size(previous.size)})"
    ]
