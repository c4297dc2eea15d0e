#!/usr/bin/env bash
# Set up everything a drill or the tests need, idempotently and quickly when already done:
# Debian packages (as root), the Python environment in .venv, a Docker engine, the images.
# Usage: scripts/setup.sh [--shim [DIR]]
#   --shim [DIR]  also put a `drill` command on PATH, in DIR (default /usr/local/bin), for
#                 cron, systemd and people (scripts/install-shim.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

shim=""
if [ "${1:-}" = "--shim" ]; then
    shim="${2:-/usr/local/bin}"
fi

PYTHON="${PYTHON:-python3}"
# iproute2: the tests start a second Docker engine on its own bridge (`ip link`).
DEBIAN_PACKAGES=(docker.io docker-compose debootstrap rsync gnupg zstd postgresql-client chromium
                 logrotate iproute2)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
# the tests make the runbook's S3 mirror with its own command, `aws s3 sync`
command -v aws >/dev/null || missing+=(awscli)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: missing Debian packages: ${missing[*]} (install them as root)" >&2
        exit 3
    fi
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing the Python environment" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi
if [ -n "$shim" ]; then
    scripts/install-shim.sh "$shim"
fi

# `docker compose`, which the system drill brings restored compose stacks up with: Debian's
# docker-compose package (the plugin itself on newer Debian; bookworm's is v1, the
# `docker-compose` command, which a small plugin of ours hands over to).
if ! docker compose version >/dev/null 2>&1 && command -v docker-compose >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        plugins=/usr/local/lib/docker/cli-plugins
    else
        plugins="$HOME/.docker/cli-plugins"
    fi
    install -D -m 0755 scripts/docker-compose-plugin "$plugins/docker-compose"
fi

scripts/docker-engine.sh
.venv/bin/drill images ${DRILL_SETUP_MAJORS:---major 15}
