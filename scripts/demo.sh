#!/usr/bin/env bash
# The main job: set up, then drill the embedded default estate end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/drill demo "$@"
