"""WhisperLogMel (on-device log-mel) against transformers.WhisperFeatureExtractor."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from transformers import WhisperFeatureExtractor

from llaso_train.features import WhisperLogMel

CLIPS = Path(__file__).parent / "fixtures" / "llasm_examples"
RATE = 16000
N_SAMPLES = 30 * RATE


def _synthetic(seconds: float) -> np.ndarray:
    """Amplitude-modulated tone plus noise, longer than a Whisper chunk so truncation is exercised."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.3 * np.sin(2 * np.pi * 440.0 * t) * np.sin(2 * np.pi * 0.5 * t)
    return (tone + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Three real Chinese clips (24 kHz mp3 -> 16 kHz) and a 31 s synthetic clip, both whole and cut to 30 s."""
    out = []
    for i in range(3):
        audio, rate = sf.read(CLIPS / f"{i}.mp3", dtype="float32")
        assert audio.ndim == 1
        out.append(np.ascontiguousarray(soxr.resample(audio, rate, RATE), dtype=np.float32))
    long = _synthetic(31.0)
    out.append(long[:N_SAMPLES])  # over 30 s, cut to exactly 30 s
    out.append(long)  # over 30 s: both sides truncate
    return out


def _batch(clips: list[np.ndarray], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(c) for c in clips])
    waves = torch.full((len(clips), int(lengths.max())), fill, dtype=torch.float32)
    for i, c in enumerate(clips):
        waves[i, : len(c)] = torch.from_numpy(c)
    return waves, lengths


@pytest.mark.parametrize("n_mels", [128, 80])
def test_matches_whisper_feature_extractor(clips, n_mels):
    ref = WhisperFeatureExtractor(feature_size=n_mels)(
        clips, sampling_rate=RATE, return_tensors="np", padding="max_length"
    )["input_features"]
    waves, lengths = _batch(clips)
    out = WhisperLogMel(n_mels)(waves, lengths)
    assert out.shape == (len(clips), n_mels, 3000) == ref.shape
    assert out.dtype == torch.float32
    # Measured on CPU (torch 2.13, transformers 5.23): max abs difference 0.0 for both 128 and 80 mels.
    diff = np.abs(out.numpy() - ref).max()
    assert diff < 1e-3, diff
    # Per-chunk dynamic-range clamp: each chunk's floor is its own max - 8 (scaled by /4).
    per_chunk = out.amax(dim=(1, 2)) - out.amin(dim=(1, 2))
    assert torch.all(per_chunk <= 2.0 + 1e-6)


def test_garbage_beyond_lengths_is_ignored(clips):
    waves, lengths = _batch(clips[:3])
    module = WhisperLogMel(128)
    clean = module(waves, lengths)
    garbage = torch.randn_like(waves) * 5.0
    keep = torch.arange(waves.shape[1])[None, :] < lengths[:, None]
    dirty = torch.where(keep, waves, garbage)
    dirty[0, lengths[0]] = float("nan")
    dirty[2, lengths[2]] = float("inf")
    assert lengths[0] < waves.shape[1] and lengths[2] < waves.shape[1]
    assert torch.equal(module(dirty, lengths), clean)
    # Without lengths, the garbage is audio and changes the features.
    assert not torch.allclose(module(torch.where(keep, waves, garbage), None), clean)


def test_no_lengths_short_batch_and_dtypes(clips):
    module = WhisperLogMel(80)
    clip = clips[0]
    ref = WhisperFeatureExtractor(feature_size=80)([clip], sampling_rate=RATE, return_tensors="np")["input_features"]
    waves = torch.from_numpy(clip)[None].requires_grad_(True)
    out = module(waves)  # no lengths: the whole (short) row is audio, zero-padded to 30 s
    assert not out.requires_grad
    assert np.abs(out.detach().numpy() - ref).max() < 1e-3
    # An autocast context does not reach the float32 computation (the mel matmul would be bf16).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(module(waves), out)
        out_bf16 = module(waves.detach().to(torch.bfloat16))
    # bf16 input is computed (and returned) in float32; only the input rounding differs.
    assert out_bf16.dtype == torch.float32
    assert out_bf16.isfinite().all()
    assert (out_bf16 - out).abs().mean() < 0.01


def test_buffers_not_persistent():
    module = WhisperLogMel(128)
    assert module.state_dict() == {}
    assert list(module.parameters()) == []
    names = dict(module.named_buffers())
    assert names["mel_filters"].shape == (128, 201)
    assert names["window"].shape == (400,)
    assert torch.equal(names["window"], torch.hann_window(400))
    waves = torch.randn(2, 16000) * 0.1
    ref = module(waves)
    # A whole-model dtype cast reaches the buffers; forward restores exact float32 ones.
    module.to(torch.bfloat16)
    assert module.mel_filters.dtype == torch.bfloat16
    out = module(waves)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    assert module.mel_filters.dtype == torch.float32 and module.window.dtype == torch.float32


@pytest.mark.parametrize("length", [0, 1, 159, 160, 161, 16000, 55_555, N_SAMPLES - 1, N_SAMPLES])
def test_valid_frames(length):
    got = WhisperLogMel.valid_frames(torch.tensor([length]))
    assert got.dtype == torch.long
    assert got.tolist() == [math.ceil(length / 160)]


def test_valid_frames_matches_extractor_attention_mask(clips):
    chunks = clips[:4]  # lengths <= 30 s
    mask = WhisperFeatureExtractor(feature_size=80)(
        chunks, sampling_rate=RATE, return_tensors="np", return_attention_mask=True
    )["attention_mask"]
    lengths = torch.tensor([len(c) for c in chunks])
    assert WhisperLogMel.valid_frames(lengths).tolist() == mask.sum(axis=1).tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(clips):
    waves, lengths = _batch(clips)
    cpu = WhisperLogMel(128)(waves, lengths)
    gpu = WhisperLogMel(128).to("cuda")(waves.cuda(), lengths.cuda())
    assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
    assert (gpu.cpu() - cpu).abs().max() < 1e-3
