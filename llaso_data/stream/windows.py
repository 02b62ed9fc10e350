"""Decode clip bytes to what the trainer's GPU feature extractor wants: mono 16 kHz
waveforms, cut into 30 s windows (at most ``max_chunks`` per clip, as LLaSO does).
No log-mel here: that runs on the training device.

A waveform is either **int16 PCM** (a clip stored as 16-bit PCM, 16 kHz, mono: WAV or FLAC,
including every ``flac16k`` clip; its samples as stored, half the bytes of float32 and no
conversion in the worker) or **float32** in [-1, 1] (anything else: resampled, downmixed,
float, 24-bit or compressed sources). :func:`to_float32` maps int16 to float32 exactly as
soundfile's float32 decode does (``x / 32768``, exact in float32), so the two forms carry the
same waveform.
"""

from __future__ import annotations

import io
import math
import struct
import sys
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

from llaso_data.frontend import CHUNK_SECONDS, FRAMES_PER_SECOND, PCM16_SCALE, SAMPLE_RATE, downmix


@dataclass(frozen=True)
class WaveformConfig:
    """``chunk_seconds`` window length; ``max_chunks`` windows kept per clip (LLaSO: 20);
    ``frames_per_second`` encoder output frames per second (Whisper: 50) and ``stack`` the
    projector's frame stacking: a chunk of n samples becomes
    ``ceil(ceil(n / (SAMPLE_RATE / frames_per_second)) / stack)`` audio tokens."""

    chunk_seconds: float = CHUNK_SECONDS
    max_chunks: int = 20
    frames_per_second: int = FRAMES_PER_SECOND
    stack: int = 1

    @property
    def chunk_samples(self) -> int:
        return int(self.chunk_seconds * SAMPLE_RATE)

    def tokens(self, samples: int) -> int:
        frames = math.ceil(samples / (SAMPLE_RATE / self.frames_per_second))
        return math.ceil(frames / self.stack)


WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_EXTENSIBLE = 0xFFFE


def decode_clip(data: bytes | memoryview) -> np.ndarray:
    """Clip bytes (wav/flac/mp3/...) -> (n,) mono 16 kHz waveform: int16 for a 16-bit PCM,
    16 kHz, mono clip (its samples, no conversion), else float32.

    A plain 16 kHz mono 16-bit PCM WAV (:func:`pcm16_wav_samples`) is read without libsndfile:
    its samples are a (read-only) view of ``data``."""
    samples = pcm16_wav_samples(data)
    if samples is not None:
        return samples
    with soundfile.SoundFile(io.BytesIO(data)) as clip:
        if (clip.samplerate, clip.channels, clip.subtype) == (SAMPLE_RATE, 1, "PCM_16"):
            return clip.read(dtype="int16")
    # soundfile.read, not clip.read: it seeks to the start first, which changes an mp3
    # decode in the last bit; this keeps the float32 path what soundfile.read gives.
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = downmix(audio)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def pcm16_wav_samples(data: bytes | memoryview) -> np.ndarray | None:
    """The (n,) int16 samples of a little-endian RIFF/WAVE clip whose ``fmt `` chunk says PCM
    (or WAVE_FORMAT_EXTENSIBLE with the PCM sub-format), 16 kHz, mono, 16 bits, as a view of
    ``data``; ``None`` for anything else, and for a ``data`` chunk that is empty, odd-sized
    or declares more bytes than follow it (those go through libsndfile, which decides what
    such a file holds). The samples are exactly what ``soundfile.read(dtype="int16")`` gives.
    Chunks other than ``fmt `` and ``data`` (``LIST``, ``fact``, ...) are skipped."""
    if sys.byteorder != "little" or len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    position, pcm = 12, False
    while position + 8 <= len(data):
        name, size = data[position:position + 4], struct.unpack_from("<I", data, position + 4)[0]
        body = position + 8
        if name == b"fmt ":
            if size < 16 or body + size > len(data):
                return None
            tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == WAVE_FORMAT_EXTENSIBLE and size >= 40:
                tag = struct.unpack_from("<H", data, body + 24)[0]  # the sub-format GUID's first field
            pcm = (tag, channels, rate, align, bits) == (WAVE_FORMAT_PCM, 1, SAMPLE_RATE, 2, 16)
            if not pcm:
                return None
        elif name == b"data":
            if not pcm or size == 0 or size % 2 or body + size > len(data):
                return None
            return np.frombuffer(data, dtype=np.int16, count=size // 2, offset=body)
        position = body + size + (size & 1)  # chunks are padded to an even length
    return None


def to_float32(waveform: np.ndarray) -> np.ndarray:
    """An int16 PCM or float32 waveform (any shape) as float32 in [-1, 1]; exact."""
    if waveform.dtype == np.int16:
        return waveform.astype(np.float32) * np.float32(PCM16_SCALE)
    return waveform.astype(np.float32, copy=False)


def chunk_waveform(waveform: np.ndarray, config: WaveformConfig) -> list[np.ndarray]:
    """(n,) -> list of (<= chunk_samples,) windows (views), at most ``max_chunks`` (the rest
    is cut)."""
    size = config.chunk_samples
    count = min(max(1, math.ceil(len(waveform) / size)), config.max_chunks)
    return [waveform[i * size:(i + 1) * size] for i in range(count)]
