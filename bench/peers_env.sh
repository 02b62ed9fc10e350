#!/usr/bin/env bash
# Create bench/.peers-venv: the peers of bench/peers.py (WebDataset, Lhotse, MosaicML
# Streaming, litdata) with the project's CPU torch, in their own environment (no system
# site-packages), never in the project's. Idempotent: does nothing when it is complete.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.peers-venv"
python="${PYTHON:-python3.11}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import webdataset, lhotse, litdata, soundfile, soxr, psutil, importlib.util as u; assert u.find_spec('streaming') and not u.find_spec('torchvision')" 2>/dev/null; then
    exit 0
fi
"$python" -m venv "$venv"
export PIP_CONSTRAINT="$here/peers-constraints.txt"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q torch==2.13.0 soundfile soxr pyarrow psutil \
    webdataset lhotse mosaicml-streaming litdata
# mosaicml-streaming and litdata pull torchvision, whose registry wheels link the CUDA torch
# and cannot load next to the CPU one; neither needs it for bytes columns (bench/peers.py
# stubs streaming.vision, the only module that imports it at import time).
"$venv/bin/pip" uninstall -q -y torchvision
if "$venv/bin/pip" list 2>/dev/null | grep -Eiq '^(nvidia-|triton )'; then
    echo "a CUDA package got into $venv" >&2; exit 1
fi
