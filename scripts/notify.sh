#!/usr/bin/env bash
# Tell someone that a recovery-drills unit failed: drill-notify@.service runs it from
# OnFailure=, and anything else may (`notify.sh drill-backup@database.service`).
# Writes the failure on stderr (the journal) and to syslog, then mails it, with the unit's
# last journal lines when systemd runs, to DRILL_NOTIFY_MAILTO through sendmail or mail.
# A stand-in until the notification feature: a later `drill notify` command replaces it.
# Exit 1 when a mail was asked for but could not be sent.
set -uo pipefail
unit="${1:?usage: notify.sh UNIT}"
host="$(hostname 2>/dev/null || echo unknown-host)"
subject="recovery-drills: $unit failed on $host"
PATH="$PATH:/usr/sbin:/sbin"

body() {
    echo "$subject at $(date -u +%Y-%m-%dT%H:%M:%SZ)."
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        echo
        systemctl status --no-pager --full --lines=40 "$unit" 2>&1
    fi
}

echo "notify: $subject" >&2
if command -v logger >/dev/null; then
    logger -t drill-notify -p user.err "$subject" 2>/dev/null || true
fi
to="${DRILL_NOTIFY_MAILTO:-}"
if [ -z "$to" ]; then
    echo "notify: DRILL_NOTIFY_MAILTO is not set: no mail sent" >&2
    exit 0
fi
if command -v sendmail >/dev/null; then
    { printf 'To: %s\nSubject: %s\n\n' "$to" "$subject"; body; } | sendmail -t -i
elif command -v mail >/dev/null; then
    body | mail -s "$subject" "$to"
else
    echo "notify: neither sendmail nor mail is installed: no mail sent to $to" >&2
    exit 1
fi
status=$?
if [ "$status" -ne 0 ]; then
    echo "notify: the mail to $to was not sent (exit $status)" >&2
    exit 1
fi
echo "notify: mailed $to" >&2
