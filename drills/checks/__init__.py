"""What proves a restore: the rungs of the ladder a drill climbs, each with its evidence.

- `database`: completeness, fidelity (every declared object, the manifest's counts, amcheck)
  and the profile of a restored database;
- `plausibility` (and `plausibility_files`, `plausibility_config`, `snapshot_changes`): what
  was restored against the last passing drill and the backup before it;
- `service`: the application's answers over HTTP; `recovery_point`: the recovered point
  from the data; `projection`: the RTO projected to production size;
- `conclusion`: the steps a scenario is told in (locate, describe, conclude the verdict).
- `posture`: how the storage itself protects the backups (a bucket's settings, a local
  store's modes and owner), each check with its evidence and fix.

It may import `drills.restore`, `drills.backup` (the heartbeat's table), `drills.runtime`,
`drills.storage`, `drills.record` and `drills.config`; only `drills.recovery` and the face
(scenarios through their fixtures) import it.
"""

from drills.checks.database import (
    CheckLimits,
    DatabaseProfile,
    check_database,
    connect_restored,
    count_for_app,
)

__all__ = [
    "CheckLimits",
    "DatabaseProfile",
    "check_database",
    "connect_restored",
    "count_for_app",
]
