#!/usr/bin/env bash
# Install what the tests need into .venv (fresh machine: ~2 min) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
