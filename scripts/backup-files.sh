#!/usr/bin/env bash
# Cron wrapper: a hard-linked snapshot of the uploads directory, with its manifest.
# Extra arguments go to `drill backup files` (e.g. --source /srv/app/uploads); see scripts/backup.sh.
exec "$(dirname "$0")/backup.sh" files "$@"
