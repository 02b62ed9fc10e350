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

import soxr

from llaso_data.stream.loader import pad_chunks
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


def _soundfile_batch(clips: list[bytes], dtype: torch.dtype) -> torch.Tensor:
    """The batch built from libsndfile's decode alone: int16 samples, or float32 (int16 /
    32768; other clips channel-averaged and resampled with soxr HQ), zero-padded."""
    waves = []
    for data in clips:
        info = soundfile.info(io.BytesIO(data))
        if (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"):
            pcm = soundfile.read(io.BytesIO(data), dtype="int16")[0]
            waves.append(pcm if dtype == torch.int16 else pcm.astype(np.float32) / np.float32(32768))
        else:
            audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
            waves.append(soxr.resample(audio.mean(axis=1), rate, 16000, quality="HQ").astype(np.float32))
    batch = np.zeros((len(waves), max(len(w) for w in waves)), dtype=np.int16 if dtype == torch.int16 else np.float32)
    for row, wave in enumerate(waves):
        batch[row, :len(wave)] = wave
    return torch.from_numpy(batch)


def test_peers_pad_equals_our_collate():
    peers = _peers()
    pcm = [_clip(4.2, 16000, 1, "WAV", "PCM_16", 0), _clip(5.0, 16000, 1, "FLAC", "PCM_16", 1)]
    mixed = pcm + [_clip(3.1, 44100, 2, "FLAC", "PCM_16", 2), _clip(2.5, 24000, 1, "MP3", "MPEG_LAYER_III", 3)]
    for clips, dtype in ((pcm, torch.int16), (mixed, torch.float32)):
        waves = [peers.decode(c) for c in clips]
        ours = [w for c in clips for w in chunk_waveform(decode_clip(c), WaveformConfig())]
        theirs = peers.pad([str(i) for i in range(len(clips))], waves)
        expected = pad_chunks(ours, max(len(w) for w in ours))
        assert theirs["audio"].dtype == expected.dtype == dtype
        assert torch.equal(theirs["audio"], expected)
        assert torch.equal(theirs["audio"], _soundfile_batch(clips, dtype))
        assert theirs["lengths"].tolist() == [len(w) for w in ours]
