#!/usr/bin/env bash
# The main job end to end on the embedded default: synthesise a small LLaSO-layout corpus,
# convert it to stratified WebDataset shards with a local Ray (loopback only), verify the
# shards, print their statistics, train the tiny CPU preset on them (both stages,
# 2 processes, DeepSpeed ZeRO-3), then answer the corpus's LLaSO-Eval split with the trained
# model (2 ZeRO-3 ranks), score it, and set each classification task's accuracy against the
# best answer that ignores the audio. Output: runs/demo/ and shards/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
run() { echo "+ $*" >&2; "$@"; }
rm -rf runs/demo/corpus shards/demo
run .venv/bin/llaso-shard synth runs/demo/corpus --seed 0 --samples-per-task 32 --faults
run .venv/bin/llaso-shard scan runs/demo/corpus --audio-root runs/demo/corpus --show-rejects 3
run .venv/bin/llaso-shard convert runs/demo/corpus shards/demo --samples-per-shard 16
run .venv/bin/llaso-shard verify shards/demo
run .venv/bin/llaso-shard stats shards/demo --chart shards/demo/stats.png

# Train the tiny CPU preset on the shards, 2 processes under torchrun and DeepSpeed ZeRO-3:
# stage 1 (projector only) on every task, then stage 2 from its projector on four
# classification tasks whose label sets a tone's pitch (the class index sets the fundamental),
# mixed in equal shares: enough for the tiny random model to learn to answer from the audio.
export DS_ACCELERATOR=cpu
export OMP_NUM_THREADS=1   # one thread per rank on 2 cores (torchrun's default, stated so it need not warn)
rm -rf runs/demo/align runs/demo/instruct runs/demo/predictions runs/demo/report
run .venv/bin/torchrun --nproc_per_node 2 -m llaso_train --config llaso_train/configs/tiny_align.yaml \
    output_dir=runs/demo/align data.shards=shards/demo max_steps=12 save_every=0
run .venv/bin/torchrun --nproc_per_node 2 -m llaso_train --config llaso_train/configs/tiny_instruct.yaml \
    output_dir=runs/demo/instruct data.shards=shards/demo max_steps=100 save_every=50 log_every=10 \
    init_projector=runs/demo/align/export/projector.safetensors \
    data.mixing=explicit 'data.weights={SGC: 1, SSD: 1, EIE: 1, ISC: 1}'
.venv/bin/python - <<'PY'
import json
rows = [json.loads(line) for line in open("runs/demo/instruct/metrics.jsonl")]
first, last = rows[:3], rows[-3:]
mean = lambda part: sum(r["loss"] for r in part) / len(part)
print(f"instruct loss: {mean(first):.3f} (steps {first[0]['step']}-{first[-1]['step']}) -> {mean(last):.3f} "
      f"(steps {last[0]['step']}-{last[-1]['step']}); "
      f"data wait {rows[-1]['data_wait_fraction']:.1%}")
PY

# Evaluate: greedy answers for the test split on 2 ZeRO-3 ranks, then per-task scores and a report.
run .venv/bin/torchrun --nproc_per_node 2 -m llaso_eval generate --model runs/demo/instruct/export \
    --shards shards/demo --out runs/demo/predictions --max-new-tokens 32
run .venv/bin/llaso-eval score runs/demo/predictions
run .venv/bin/llaso-eval report runs/demo/predictions --out runs/demo/report

# Does the model listen? Each classification task's accuracy next to the best answer that
# ignores the audio: the most frequent test label of each file, given to every record of it.
.venv/bin/python - <<'PY'
import json
from collections import Counter
from llaso_eval.metrics import normalize_label
run = json.load(open("runs/demo/report/scores.json"))["runs"]["predictions"]
weights = json.load(open("runs/demo/instruct/config.json"))["data"]["weights"] or {}
print("listening: accuracy vs the best audio-blind answer (the most frequent label of each test file)")
print(f"{'task':6} {'accuracy':>8} {'audio-blind':>11} {'n':>4}")
for name, task in run["summary"]["tasks"].items():
    if task["metric"] != "accuracy":
        continue
    correct = blind = n = 0
    for stem in map(run["stems"].get, task["stems"]):
        records = json.load(open(f"{run['source']}/{stem['file']}"))
        labels = Counter(normalize_label(r["conversations"][-1]["value"]) for r in records)
        correct, blind, n = correct + round(stem["value"] * stem["n"]), blind + labels.most_common(1)[0][1], n + stem["n"]
    notes = ["trained in stage 2"] * bool(weights.get(name)) + ["above the audio-blind answer"] * (correct > blind)
    print(f"{name:6} {correct / n:8.3f} {blind / n:11.3f} {n:4}  {', '.join(notes)}".rstrip())
PY
