#!/usr/bin/env bash
# Cron wrapper: ship the WAL archive_command copied, exactly once (point-in-time recovery).
# Extra arguments go to `drill backup wal` (e.g. --remove-shipped); see scripts/backup.sh.
exec "$(dirname "$0")/backup.sh" wal "$@"
