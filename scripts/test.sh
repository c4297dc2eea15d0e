#!/usr/bin/env bash
# The test command: set up, lint, check formatting, run every test (Docker tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest "$@"
