"""Decode clip bytes to what the trainer's GPU feature extractor wants: float32 mono
16 kHz waveforms, cut into 30 s windows (at most ``max_chunks`` per clip, as LLaSO does).
No log-mel here: that runs on the training device."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class WaveformConfig:
    """``chunk_seconds`` window length; ``max_chunks`` windows kept per clip (LLaSO: 20);
    ``frames_per_second`` encoder output frames per second (Whisper: 50) and ``stack`` the
    projector's frame stacking: a chunk of n samples becomes
    ``ceil(ceil(n / (16000 / frames_per_second)) / stack)`` audio tokens."""

    chunk_seconds: float = 30.0
    max_chunks: int = 20
    frames_per_second: int = 50
    stack: int = 1

    @property
    def chunk_samples(self) -> int:
        return int(self.chunk_seconds * SAMPLE_RATE)

    def tokens(self, samples: int) -> int:
        frames = math.ceil(samples / (SAMPLE_RATE / self.frames_per_second))
        return math.ceil(frames / self.stack)


def decode_clip(data: bytes) -> np.ndarray:
    """Clip bytes (wav/flac/mp3/...) -> (n,) float32 mono at 16 kHz."""
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def chunk_waveform(waveform: np.ndarray, config: WaveformConfig) -> list[np.ndarray]:
    """(n,) -> list of (<= chunk_samples,) windows, at most ``max_chunks`` (the rest is cut)."""
    size = config.chunk_samples
    count = min(max(1, math.ceil(len(waveform) / size)), config.max_chunks)
    return [waveform[i * size:(i + 1) * size] for i in range(count)]
