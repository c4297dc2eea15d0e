#!/usr/bin/env bash
# Put a `drill` command on PATH for cron, systemd and people: a shim in DIR (default
# /usr/local/bin, which cron's and systemd's PATH hold) that runs this checkout's
# .venv/bin/drill. Idempotent; never replaces a `drill` it did not write.
# Usage: scripts/install-shim.sh [DIR]   (scripts/setup.sh --shim [DIR] calls it)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-/usr/local/bin}"
target="$root/.venv/bin/drill"
marker="# recovery-drills shim"
if [ ! -x "$target" ]; then
    echo "install-shim: $target is missing: run scripts/setup.sh first" >&2
    exit 3
fi
if [ -e "$dir/drill" ] && ! grep -q "^$marker" "$dir/drill" 2>/dev/null; then
    echo "install-shim: $dir/drill exists and is not our shim; left as it is" >&2
    exit 1
fi
mkdir -p "$dir"
tmp="$(mktemp "$dir/.drill.XXXXXX")"
printf '#!/bin/sh\n%s of %s\nexec "%s" "$@"\n' "$marker" "$root" "$target" >"$tmp"
chmod 755 "$tmp"
mv -f "$tmp" "$dir/drill"
echo "install-shim: $dir/drill runs $target" >&2
