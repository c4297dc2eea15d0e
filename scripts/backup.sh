#!/usr/bin/env bash
# Cron wrapper of `drill backup KIND` (database, files or config); the backup-<kind>.sh
# scripts call it. See scripts/crontab.example and scripts/drill-backup@.service. Environment:
#   DRILL_CONFIG    drill.toml to use (default /etc/drill/drill.toml)
#   DRILL_ENV_FILE  a root-only file of VAR=value lines to load first: PGPASSWORD, AWS_*,
#                   the config archive's passphrase (never put secrets in the crontab)
#   DRILL           the drill command (default: drill on PATH)
# Usage: backup.sh KIND [extra arguments for `drill backup KIND`].
# Every output line is prefixed with a UTC timestamp; the exit code is drill's.
set -euo pipefail
kind="${1:?usage: backup.sh database|files|config [drill backup options]}"
shift
config="${DRILL_CONFIG:-/etc/drill/drill.toml}"
drill="${DRILL:-drill}"

log() { printf '%s backup-%s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$kind" "$*"; }

if [ -n "${DRILL_ENV_FILE:-}" ]; then
    set -a
    # shellcheck disable=SC1090
    . "$DRILL_ENV_FILE"
    set +a
fi
if command -v flock >/dev/null; then
    # a run still going when the next one starts (a slow upload) must not be doubled
    exec 9>"${XDG_RUNTIME_DIR:-/tmp}/drill-backup-$kind.lock"
    flock -n 9 || { log "another backup-$kind is still running; this run skipped"; exit 1; }
fi

log "start (config $config)"
status=0
"$drill" backup "$kind" --config "$config" "$@" 2>&1 | while IFS= read -r line; do log "$line"; done \
    || status=$?
if [ "$status" -eq 0 ]; then log "done"; else log "FAILED (exit $status)"; fi
exit "$status"
