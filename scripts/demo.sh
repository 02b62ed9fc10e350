#!/usr/bin/env bash
# The main job end to end on the embedded default: synthesise a small LLaSO-layout corpus,
# convert it to stratified WebDataset shards with a local Ray (loopback only), verify the
# shards, print their statistics, train the tiny CPU preset on them (both stages,
# 2 processes, DeepSpeed ZeRO-3), then answer the corpus's LLaSO-Eval split with the trained
# model (2 ZeRO-3 ranks) and score it. Output: runs/demo/ and shards/demo.
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

# Train the tiny CPU preset on the shards: stage 1 (projector only), then stage 2 from its
# projector, 2 processes under torchrun and DeepSpeed ZeRO-3.
export DS_ACCELERATOR=cpu
export OMP_NUM_THREADS=1   # one thread per rank on 2 cores (torchrun's default, stated so it need not warn)
rm -rf runs/demo/align runs/demo/instruct runs/demo/predictions runs/demo/report
run .venv/bin/torchrun --nproc_per_node 2 -m llaso_train --config llaso_train/configs/tiny_align.yaml \
    output_dir=runs/demo/align data.shards=shards/demo max_steps=12 save_every=0
run .venv/bin/torchrun --nproc_per_node 2 -m llaso_train --config llaso_train/configs/tiny_instruct.yaml \
    output_dir=runs/demo/instruct data.shards=shards/demo max_steps=36 save_every=12 \
    init_projector=runs/demo/align/export/projector.safetensors
.venv/bin/python - <<'PY'
import json
rows = [json.loads(line) for line in open("runs/demo/instruct/metrics.jsonl")]
first, last = rows[:4], rows[-4:]
mean = lambda part: sum(r["loss"] for r in part) / len(part)
print(f"instruct loss: {mean(first):.3f} (steps 1-4) -> {mean(last):.3f} (last 4 steps); "
      f"data wait {rows[-1]['data_wait_fraction']:.1%}")
PY

# Evaluate: greedy answers for the test split on 2 ZeRO-3 ranks, then per-task scores and a report.
run .venv/bin/torchrun --nproc_per_node 2 -m llaso_eval generate --model runs/demo/instruct/export \
    --shards shards/demo --out runs/demo/predictions --max-new-tokens 32
run .venv/bin/llaso-eval score runs/demo/predictions
run .venv/bin/llaso-eval report runs/demo/predictions --out runs/demo/report
