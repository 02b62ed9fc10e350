"""Clip decoding for the stream: the WAV fast path gives exactly libsndfile's samples, and
every clip it does not take goes through libsndfile."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile

from llaso_data.stream.windows import decode_clip, pcm16_wav_samples


def _wav(rate=16000, channels=1, subtype="PCM_16", fmt="WAV", seconds=0.5, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    audio = rng.uniform(-0.9, 0.9, (int(rate * seconds), channels))
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, subtype=subtype, format=fmt)
    return buffer.getvalue()


def _chunk(name: bytes, body: bytes) -> bytes:
    return name + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def _riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _pcm16_fmt(rate=16000, channels=1) -> bytes:
    return _chunk(b"fmt ", struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16))


def _reference(data: bytes) -> np.ndarray:
    return soundfile.read(io.BytesIO(data), dtype="int16")[0]


def test_plain_and_extensible_pcm16_wav_are_read_in_place_with_libsndfiles_samples():
    samples = np.arange(-4000, 4000, 7, dtype=np.int16)
    crafted = _riff(_pcm16_fmt(), _chunk(b"LIST", b"INFOISFT\x05\0\0\0odd!!\0"), _chunk(b"data", samples.tobytes()))
    for data in (_wav(), _wav(fmt="WAVEX"), crafted):
        fast = pcm16_wav_samples(data)
        assert fast is not None and fast.dtype == np.int16 and not fast.flags.writeable  # a view of the bytes
        np.testing.assert_array_equal(fast, _reference(data))
        assert decode_clip(data) is not None and np.array_equal(decode_clip(data), fast)
    np.testing.assert_array_equal(pcm16_wav_samples(crafted), samples)


@pytest.mark.parametrize("data", [
    _wav(rate=8000), _wav(channels=2), _wav(subtype="PCM_24"), _wav(subtype="FLOAT"), _wav(fmt="FLAC"),
    _riff(_pcm16_fmt(), _chunk(b"data", b"\1\2\3")),                      # odd-sized data
    _riff(_pcm16_fmt())[:-2] + b"data" + struct.pack("<I", 4000) + b"\0" * 100,  # declares more than follows
    _riff(_chunk(b"data", b"\0" * 64), _pcm16_fmt()),                     # data before fmt
    b"RIFX" + _wav()[4:],                                                  # big-endian RIFF
], ids=["8khz", "stereo", "pcm24", "float", "flac", "odd-data", "short-data", "data-first", "rifx"])
def test_clips_the_fast_path_declines_go_through_libsndfile(data):
    assert pcm16_wav_samples(data) is None
    try:
        info = soundfile.info(io.BytesIO(data))
    except (RuntimeError, soundfile.LibsndfileError):
        with pytest.raises((RuntimeError, soundfile.LibsndfileError)):
            decode_clip(data)
        return
    decoded = decode_clip(data)
    assert decoded.flags.writeable and decoded.ndim == 1  # decoded by libsndfile, not a view
    if (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"):
        np.testing.assert_array_equal(decoded, _reference(data))
    else:
        assert decoded.dtype == np.float32
