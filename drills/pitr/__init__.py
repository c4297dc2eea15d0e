"""Point-in-time recovery: a base backup and archived WAL, replayed to a time T.

- `plan`: what can be recovered (the survey of base backups and WAL, the window, the point
  chosen for a target time);
- `continuity` and `promise`: whether the WAL is continuous over the whole window the
  archive promises, and its holes placed in time;
- `catalog`: base backups and WAL segments in storage; `container`: the recovery container;
  `recovery`: restoring a base backup and replaying WAL into it.

It may import `drills.restore`, `drills.backup`, `drills.runtime`, `drills.storage`,
`drills.record` and `drills.config`; only `drills.recovery` and the face import it.
"""

from drills.pitr.plan import (
    Recoverable,
    RecoveryError,
    Survey,
    Window,
    choose_target,
    database_name,
    describe_base,
    iso,
    measure_window,
    passed_over,
    recoverable_at,
    since,
    survey,
    timeline_note,
)
from drills.pitr.promise import Promise, prove

__all__ = [
    "Promise",
    "Recoverable",
    "RecoveryError",
    "Survey",
    "Window",
    "choose_target",
    "database_name",
    "describe_base",
    "iso",
    "measure_window",
    "passed_over",
    "prove",
    "recoverable_at",
    "since",
    "survey",
    "timeline_note",
]
