#!/usr/bin/env bash
# Create .venv and install llaso-stream with its test tools, CPU torch only
# (fresh machine: ~2 min, ~1.8 GB). Idempotent: a second run only checks the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_CONSTRAINT="$PWD/constraints.txt"   # pins torch to the CPU wheel, see constraints.txt
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# A missing console script means the package metadata is older than pyproject.toml.
if ! .venv/bin/python -c "import llaso_data, llaso_synth, ray, webdataset, deepspeed, accelerate, jiwer, pyflac, isal, pytest" >/dev/null 2>&1 \
    || [ ! -x .venv/bin/llaso-eval ]; then
  # pip warns once per optional local package index it cannot find: drop that noise only.
  .venv/bin/pip install --quiet -e ".[test]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
fi
# A CUDA wheel that slipped in costs gigabytes and hides a bad pin: refuse it.
if .venv/bin/pip list 2>/dev/null | grep -Ei '^(nvidia-|triton )'; then
  echo "setup: CUDA packages were installed; check constraints.txt" >&2
  exit 1
fi
