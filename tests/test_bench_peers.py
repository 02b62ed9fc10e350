"""The peers benchmark's equal-work path (bench/peers.py: decode the bytes a peer hands back,
pad a batch) gives exactly the batch tensor our loader's collate builds from the same clips.
Runs without the peers installed."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import soundfile
import torch

from llaso_data.stream.loader import _pad_chunks
from llaso_data.stream.windows import WaveformConfig, chunk_waveform, decode_clip

PEERS = Path(__file__).resolve().parents[1] / "bench" / "peers.py"


def _peers():
    spec = importlib.util.spec_from_file_location("bench_peers", PEERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clip(seconds: float, rate: int, channels: int, fmt: str, subtype: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    wave = (0.3 * rng.standard_normal((int(seconds * rate), channels))).clip(-1, 1).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def test_peers_pad_equals_our_collate():
    peers = _peers()
    pcm = [_clip(4.2, 16000, 1, "WAV", "PCM_16", 0), _clip(5.0, 16000, 1, "FLAC", "PCM_16", 1)]
    mixed = pcm + [_clip(3.1, 44100, 2, "FLAC", "PCM_16", 2), _clip(2.5, 24000, 1, "MP3", "MPEG_LAYER_III", 3)]
    for clips, dtype in ((pcm, torch.int16), (mixed, torch.float32)):
        waves = [peers.decode(c) for c in clips]
        ours = [w for c in clips for w in chunk_waveform(decode_clip(c), WaveformConfig())]
        theirs = peers.pad([str(i) for i in range(len(clips))], waves)
        expected = _pad_chunks(ours, max(len(w) for w in ours))
        assert theirs["audio"].dtype == expected.dtype == dtype
        assert torch.equal(theirs["audio"], expected)
        assert theirs["lengths"].tolist() == [len(w) for w in ours]
