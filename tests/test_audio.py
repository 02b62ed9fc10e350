"""Clip checks and re-encoding for shards, on real encoded audio bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from llaso_data.convert.transcode import AudioError, encode_clip


def _write(path, seconds=2.0, rate=16000, channels=1, subtype="PCM_16", fmt="WAV"):
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    audio = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    soundfile.write(path, audio, rate, subtype=subtype, format=fmt)
    return path


def test_truncated_wav_is_rejected_not_shortened(tmp_path):
    path = _write(tmp_path / "clip.wav")
    data = path.read_bytes()
    assert encode_clip(path, "passthrough").seconds == pytest.approx(2.0)
    path.write_bytes(data[: len(data) // 2])
    for mode in ("passthrough", "flac16k"):
        with pytest.raises(AudioError, match="truncated") as caught:
            encode_clip(path, mode)
        assert caught.value.reason == "audio_undecodable"


@pytest.mark.parametrize("rate,channels,subtype", [(16000, 1, "PCM_16"), (44100, 2, "PCM_16"), (16000, 1, "FLOAT")])
def test_flac16k_is_mono_16khz_with_the_same_duration(tmp_path, rate, channels, subtype):
    path = _write(tmp_path / "clip.wav", seconds=1.5, rate=rate, channels=channels, subtype=subtype)
    clip = encode_clip(path, "flac16k")
    audio, out_rate = soundfile.read(io.BytesIO(clip.data))
    assert clip.extension == "flac" and out_rate == 16000 and audio.ndim == 1
    assert len(audio) / 16000 == pytest.approx(1.5, abs=1e-3) == clip.seconds
    reference, _ = soundfile.read(path, always_2d=True)
    if rate == 16000:  # no resampling: the samples survive up to 16-bit quantisation
        assert np.abs(audio - reference.mean(axis=1)).max() < 2 / 32768


def test_empty_and_garbage_audio_get_their_reasons(tmp_path):
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0), 16000)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    reasons = {}
    for path in (empty, garbage, tmp_path / "missing.wav"):
        with pytest.raises(AudioError) as caught:
            encode_clip(path, "passthrough")
        reasons[path.name] = caught.value.reason
    assert reasons == {"empty.wav": "audio_empty", "garbage.wav": "audio_undecodable", "missing.wav": "audio_missing"}


@pytest.mark.parametrize("rate,channels,subtype", [
    (16000, 1, "PCM_U8"), (16000, 1, "PCM_16"), (22050, 2, "PCM_24"), (44100, 2, "PCM_32"),
    (8000, 6, "PCM_16"), (16000, 1, "FLOAT"), (16000, 1, "ULAW")])
def test_passthrough_duration_is_libsndfiles_for_every_wav_kind(tmp_path, rate, channels, subtype):
    path = _write(tmp_path / "clip.wav", seconds=1.2345, rate=rate, channels=channels, subtype=subtype)
    clip = encode_clip(path, "passthrough")
    assert clip.data == path.read_bytes() and clip.extension == "wav"
    assert clip.seconds == soundfile.info(path).frames / rate


def test_wav_with_a_bad_header_is_rejected(tmp_path):
    path = _write(tmp_path / "clip.wav")
    data = bytearray(path.read_bytes())
    data[22:24] = (0).to_bytes(2, "little")  # zero channels
    path.write_bytes(bytes(data))
    with pytest.raises(AudioError) as caught:
        encode_clip(path, "passthrough")
    assert caught.value.reason == "audio_undecodable"


def test_flac16k_keeps_a_16khz_mono_flac_and_rejects_a_broken_one(tmp_path):
    path = _write(tmp_path / "clip.flac", seconds=3.0, fmt="FLAC")
    data = path.read_bytes()
    clip = encode_clip(path, "flac16k")
    assert clip.data == data and clip.extension == "flac" and clip.seconds == 3.0
    stereo = encode_clip(_write(tmp_path / "stereo.flac", seconds=3.0, channels=2, fmt="FLAC"), "flac16k")
    assert soundfile.info(io.BytesIO(stereo.data)).channels == 1  # anything else is re-encoded
    for broken in (data[: len(data) * 2 // 3], data[:2000] + bytes(50) + data[2050:]):
        path.write_bytes(broken)
        with pytest.raises(AudioError) as caught:
            encode_clip(path, "flac16k")
        assert caught.value.reason == "audio_undecodable"
