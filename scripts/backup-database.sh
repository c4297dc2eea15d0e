#!/usr/bin/env bash
# Cron wrapper: a pg_dump of the database, with its manifest.
# Extra arguments go to `drill backup database` (e.g. --format custom); see scripts/backup.sh.
exec "$(dirname "$0")/backup.sh" database "$@"
