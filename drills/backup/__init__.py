"""The producers behind `drill backup database|files|config`: small, boring, cron-ready.

Each writes a backup plus its manifest under a final name only when every step succeeded,
keeps a local copy (mode 600) when `[backup] local_dir` is set, and uploads it to the
storage. Around that work `drills.backup.run` keeps the data safe: the storage checked
first, one writer per series (a lock in the storage), leftovers of unfinished runs cleaned,
every stored object verified, doubtful backups marked suspect, and pruning only when asked,
only of this producer's own backups, never below `keep_min` good ones.

Example::

    from drills.backup import backup_database, destination
    from drills.config import load_config

    config = load_config("drill.toml")
    result = backup_database(destination(config, "database"), config.database.name)
    print(result.key, result.manifest.sha256)

It may import `drills.restore` (a database's object inventory), `drills.runtime`,
`drills.storage`, `drills.record` and `drills.config`; `drills.checks`, `drills.pitr`,
`drills.recovery` and the face import it, never the engines below it.
"""

from drills.backup.common import BackupResult, Destination, destination
from drills.backup.config_archive import backup_config
from drills.backup.database import backup_database
from drills.backup.files import backup_files

__all__ = [
    "BackupResult",
    "Destination",
    "backup_config",
    "backup_database",
    "backup_files",
    "destination",
]
