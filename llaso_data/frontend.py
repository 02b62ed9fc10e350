"""The Whisper front end's geometry and the PCM conventions both halves of the pipeline
share: conversion writes 16 kHz clips, the loader cuts them into 30 s windows, the model
turns a window into 1,500 encoder frames (50 per second).

Units: samples at :data:`SAMPLE_RATE` Hz, seconds, encoder frames.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
"""Hz: the rate every clip is resampled to (Whisper's log-mel input)."""
CHUNK_SECONDS = 30.0
"""Seconds per encoder window (Whisper pads or cuts to 30 s)."""
CHUNK_SAMPLES = int(CHUNK_SECONDS * SAMPLE_RATE)
"""Samples per encoder window: 480,000."""
FRAMES_PER_SECOND = 50
"""Encoder output frames per second of audio (one per 320 samples)."""
FRAMES_PER_CHUNK = int(CHUNK_SECONDS * FRAMES_PER_SECOND)
"""Encoder output frames per 30 s window: 1,500."""
PCM16_SCALE = 1.0 / 32768
"""int16 -> float32 in [-1, 1): libsndfile's normalisation, a power of 2 (exact)."""


def downmix(samples: np.ndarray) -> np.ndarray:
    """``(frames, channels)`` int16 or float32 samples -> ``(frames,)`` float32 in [-1, 1],
    the mean over channels. int16 input gives exactly what libsndfile's float32 decode of
    the same clip gives (``x / 32768``, summed, divided by the channel count).

    Summed column by column: ``samples.mean(axis=1)`` reduces along the short inner axis
    and costs ~10x more (8 ms for 8 s of 44.1 kHz stereo)."""
    channels = samples.shape[1]
    if samples.dtype == np.int16:
        total = samples[:, 0].astype(np.int32)
        for channel in range(1, channels):
            total += samples[:, channel]
        mono = total.astype(np.float32)
        mono *= np.float32(PCM16_SCALE)
    else:
        mono = samples[:, 0].astype(np.float32)
        for channel in range(1, channels):
            mono += samples[:, channel]
    if channels > 1:
        mono /= np.float32(channels)
    return mono
