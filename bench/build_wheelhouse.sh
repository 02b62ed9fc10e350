#!/usr/bin/env bash
# Build what bench/gpu_check.py needs on a bare GPU host (no package registry; Python 3.12,
# torch with CUDA and an older transformers, no deepspeed/soundfile/soxr/hjson/accelerate):
#   gpu_bundle/wheels/  the missing packages at this project's versions, for CPython $PY_VERSION
#                       on manylinux x86_64 (deepspeed is a source package: its wheel is built
#                       here, without prebuilt ops), plus the pinned transformers;
#   gpu_bundle/shards/  demo shards (synthetic corpus, train + test splits).
# Usage: bench/build_wheelhouse.sh [OUT=gpu_bundle]   (PY_VERSION=3.12 by default)
# Needs the project's .venv and a package registry; the bundle must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_bundle}"
PY_VERSION="${PY_VERSION:-3.12}"
PY=.venv/bin/python
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
rm -rf "$OUT" && mkdir -p "$OUT/wheels"
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

# deepspeed: a source distribution; its wheel is pure Python when no op is prebuilt.
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation "deepspeed==$(version deepspeed)" -w "$OUT/wheels"

# Everything else the host lacks, at the versions this venv runs, as binary wheels for the host.
PACKAGES=(hjson msgpack ninja py-cpuinfo pydantic pydantic-core annotated-types typing-inspection
          typing-extensions einops psutil packaging soundfile soxr cffi pycparser accelerate
          transformers huggingface-hub tokenizers safetensors pyyaml hf-xet)
PINNED=()
for package in "${PACKAGES[@]}"; do
  if v=$(version "$package" 2>/dev/null); then PINNED+=("$package==$v"); fi
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version "$PY_VERSION" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$OUT/wheels" "${PINNED[@]}"

# Demo shards: the synthetic corpus converted as the demo does (train and test splits).
rm -rf "$OUT/corpus"
PYTHONPATH="$PWD" "$PY" -m llaso_data.cli synth "$OUT/corpus" --seed 0 >/dev/null
PYTHONPATH="$PWD" "$PY" -m llaso_data.cli convert "$OUT/corpus" "$OUT/shards" --samples-per-shard 16 >/dev/null
rm -rf "$OUT/corpus"

SIZE=$(du -sm "$OUT" | cut -f1)
echo "$OUT: $(ls "$OUT/wheels" | wc -l) wheels, shards $(du -sh "$OUT/shards" | cut -f1), total ${SIZE} MiB"
if [ "$SIZE" -ge 64 ]; then echo "bundle is ${SIZE} MiB, over the 64 MiB that travels with the tree" >&2; exit 1; fi
