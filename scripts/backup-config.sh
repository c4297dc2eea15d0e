#!/usr/bin/env bash
# Cron wrapper: the encrypted archive of the config files, with its manifest.
# Extra arguments go to `drill backup config` (e.g. --config /etc/drill/drill.toml); see scripts/backup.sh.
exec "$(dirname "$0")/backup.sh" config "$@"
