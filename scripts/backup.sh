#!/usr/bin/env bash
# Cron and systemd wrapper of `drill backup KIND` (database, files, config, wal, base); the
# backup-<kind>.sh scripts call it. See scripts/crontab.example and scripts/drill-backup@.service.
# Environment:
#   DRILL_CONFIG    drill.toml to use (default /etc/drill/drill.toml)
#   DRILL_ENV_FILE  a root-only file of VAR=value lines to load first: PGPASSWORD, AWS_*,
#                   the config archive's passphrase (never put secrets in the crontab)
#   DRILL_LOG       a log file. Set (as the crontab does): every line is appended there, and
#                   only a failed run prints anything, on stderr, so cron mails failures
#                   and nothing else. Unset (systemd, by hand): every line goes to stdout.
#   DRILL           the drill command (default: this checkout's .venv/bin/drill, else the
#                   `drill` on PATH, e.g. the shim `scripts/setup.sh --shim` installs)
# Usage: backup.sh KIND [extra arguments for `drill backup KIND`].
# Every line is prefixed with a UTC timestamp; the exit code is drill's (127: no drill).
set -euo pipefail
kind="${1:?usage: backup.sh database|files|config|wal|base [drill backup options]}"
shift
here="$(cd "$(dirname "$0")" && pwd)"
config="${DRILL_CONFIG:-/etc/drill/drill.toml}"

if [ -n "${DRILL:-}" ]; then
    drill="$DRILL"
elif [ -x "$here/../.venv/bin/drill" ]; then
    # cron's and systemd's PATH never hold the virtual environment: use it by its path
    drill="$here/../.venv/bin/drill"
elif command -v drill >/dev/null; then
    drill="$(command -v drill)"
else
    echo "backup-$kind: no drill command: run scripts/setup.sh (--shim), or set DRILL" >&2
    exit 127
fi

if [ -n "${DRILL_ENV_FILE:-}" ]; then
    set -a
    # shellcheck disable=SC1090
    . "$DRILL_ENV_FILE"
    set +a
fi

stamp() {
    while IFS= read -r line; do
        printf '%s backup-%s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$kind" "$line"
    done
}

run() {
    echo "start (config $config)"
    if command -v flock >/dev/null; then
        # a run still going when the next one starts (a slow upload) must not be doubled
        exec 9>"${XDG_RUNTIME_DIR:-/tmp}/drill-backup-$kind.lock"
        if ! flock -n 9; then
            echo "another backup-$kind is still running on this host; this run skipped"
            return 1
        fi
    fi
    local status=0
    "$drill" backup "$kind" --config "$config" "$@" 2>&1 || status=$?
    if [ "$status" -eq 0 ]; then echo "done"; else echo "FAILED (exit $status)"; fi
    return "$status"
}

if [ -z "${DRILL_LOG:-}" ]; then
    status=0
    run "$@" | stamp || status=$?
    exit "$status"
fi

out="$(mktemp "${TMPDIR:-/tmp}/drill-backup-$kind.XXXXXX")"
trap 'rm -f "$out"' EXIT
set +e
run "$@" | stamp | tee -a "$DRILL_LOG" >"$out"
codes=("${PIPESTATUS[@]}")
set -e
status="${codes[0]}"
if [ "${codes[2]}" -ne 0 ]; then
    echo "backup-$kind: cannot append to $DRILL_LOG (DRILL_LOG)" >&2
    [ "$status" -ne 0 ] || status=1
fi
if [ "$status" -ne 0 ]; then
    cat "$out" >&2
elif [ -t 1 ]; then
    cat "$out"
fi
exit "$status"
