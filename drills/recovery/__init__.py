"""Real recoveries: restore a database, uploads or config files into the user's own estate.

The drills prove that backups restore into throwaway containers; these modules do the same
restores for real, with the same engines (`drills.restore`, `drills.restore.files`,
`drills.restore.config`) and the same checks, plus what a real recovery needs around them: a
plan shown before anything happens, a typed confirmation, a safety copy of what is replaced,
a restore beside the original and a swap only once the restored copy is verified.

- `target`: a real Postgres server as the restore engine's target (tools in a container).
- `safety`: the safety dump of the database about to be replaced.
- `database`, `files`, `config`: plan, then run, one recovery each.
- `runbook`: the estate's recovery runbook as Markdown.

It may import every part below it (checks, pitr, backup, restore, runtime, storage, record,
config); only the face (`drills.commands`, the recovery drill's scenario) imports it.
"""
