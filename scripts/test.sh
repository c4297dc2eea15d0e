#!/usr/bin/env bash
# The test command: set up, lint, check formatting and the import contract, run every test
# (Docker tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache
exec .venv/bin/pytest "$@"
