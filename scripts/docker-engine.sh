#!/usr/bin/env bash
# Make a Docker engine answer. Idempotent: if `docker info` works, do nothing.
# Otherwise, on Debian as root: install Debian's docker.io and start dockerd in the
# background (log: $DRILL_DOCKERD_LOG, default /var/log/recovery-drills-dockerd.log), then wait
# until it answers (bounded). Prints the pid file of a dockerd it started, so CI can stop it.
set -euo pipefail

LOG="${DRILL_DOCKERD_LOG:-/var/log/recovery-drills-dockerd.log}"
PIDFILE="${DRILL_DOCKERD_PIDFILE:-/run/recovery-drills-dockerd.pid}"
WAIT_S="${DRILL_DOCKERD_WAIT_S:-60}"

if docker info >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "docker-engine: no Docker engine answers and this is not root." >&2
    echo "  Start one yourself (e.g. 'sudo $0', or 'sudo systemctl start docker')," >&2
    echo "  or point DOCKER_HOST at a running engine." >&2
    exit 3
fi
if [ ! -r /etc/debian_version ]; then
    echo "docker-engine: no Docker engine answers and this is not Debian;" >&2
    echo "  install and start Docker with your system's packages, then run this again." >&2
    exit 3
fi

if ! command -v dockerd >/dev/null 2>&1; then
    echo "docker-engine: installing Debian's docker.io" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
fi

echo "docker-engine: starting dockerd (log: $LOG)" >&2
mkdir -p "$(dirname "$LOG")" "$(dirname "$PIDFILE")"
nohup dockerd >>"$LOG" 2>&1 &
echo $! >"$PIDFILE"

for _ in $(seq 1 "$WAIT_S"); do
    if docker info >/dev/null 2>&1; then
        echo "docker-engine: up ($(docker version --format '{{.Server.Version}}'))" >&2
        exit 0
    fi
    sleep 1
done
echo "docker-engine: dockerd did not answer within ${WAIT_S} s; last lines of $LOG:" >&2
tail -n 20 "$LOG" >&2
exit 3
