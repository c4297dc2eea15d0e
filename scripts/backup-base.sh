#!/usr/bin/env bash
# Cron wrapper: a pg_basebackup for point-in-time recovery, with its manifest.
# Extra arguments go to `drill backup base` (e.g. --fast-checkpoint); see scripts/backup.sh.
exec "$(dirname "$0")/backup.sh" base "$@"
