#!/usr/bin/env bash
# The main job end to end on the embedded default: synthesise a small LLaSO-layout corpus,
# convert it to stratified WebDataset shards with a local Ray (loopback only), verify the
# shards and print their statistics. Output: runs/demo/corpus and shards/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
run() { echo "+ $*" >&2; "$@"; }
rm -rf runs/demo/corpus shards/demo
run .venv/bin/llaso-shard synth runs/demo/corpus --seed 0 --faults
run .venv/bin/llaso-shard scan runs/demo/corpus --audio-root runs/demo/corpus --show-rejects 3
run .venv/bin/llaso-shard convert runs/demo/corpus shards/demo --samples-per-shard 16
run .venv/bin/llaso-shard verify shards/demo
run .venv/bin/llaso-shard stats shards/demo --chart shards/demo/stats.png
