"""Restore engines, one per kind of backup, and what a dump says about itself.

- `database`: `restore_database`, the entry point for a database backup of any format;
- `plain` (SQL scripts through psql), `archive` (custom and directory formats through
  pg_restore), `common` (their result, errors, roles and process plumbing), `fetch` (getting
  the bytes to where a tool reads them, checked on the way);
- `dumpscan` (what a plain dump declares, read as it streams), `dumpinfo` (a dump's major
  version), `inventory` (a database's objects, in one vocabulary for dumps, manifests and
  restores);
- `files` and `config`: uploads snapshots and config archives; `filetype`: what a file's
  first bytes say it is.

The same code serves drills and real recoveries. It may import `drills.runtime`,
`drills.storage`, `drills.record` and `drills.config`; `drills.checks`, `drills.pitr`,
`drills.backup`, `drills.recovery` and the face may import it. It never imports them.
"""

from drills.restore.common import RestoreError, RestoreResult, jobs
from drills.restore.database import analyze_database, restore_database

__all__ = ["RestoreError", "RestoreResult", "analyze_database", "jobs", "restore_database"]
