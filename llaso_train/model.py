"""The speech LM: Whisper encoder -> frame-stacking MLP projector -> causal LM.

Shapes: ``B`` samples, ``T`` tokens, ``C`` audio chunks in the batch (30 s windows),
``F = 1500 / stack`` projected frames per chunk, ``D`` encoder width, ``H`` LM width.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder, WhisperModel

from llaso_data.stream import float_chunks

from .config import ModelConfig
from .features import WhisperLogMel

PROJECTOR_FILE = "projector.safetensors"


class Projector(nn.Module):
    """``mlp2x_gelu`` over stacked frames: (C, 1500, D) -> (C, 1500 / stack, H)."""

    def __init__(self, encoder_width: int, lm_width: int, stack: int):
        super().__init__()
        self.stack = stack
        self.net = nn.Sequential(nn.Linear(encoder_width * stack, lm_width), nn.GELU(),
                                 nn.Linear(lm_width, lm_width))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        chunks, length, width = frames.shape
        stacked = frames[:, : length // self.stack * self.stack].reshape(chunks, length // self.stack, width * self.stack)
        return self.net(stacked)


class SpeechLM(nn.Module):
    """Encoder, projector and LM in one module, so ZeRO-3 partitions and gathers them together.

    Every forward runs exactly one batched encoder call, also for a batch without audio (a
    silent dummy chunk whose output is multiplied by zero), so all ranks issue the same
    collectives every step.
    """

    def __init__(self, encoder: WhisperEncoder, projector: Projector, lm: nn.Module, audio_pad_id: int):
        super().__init__()
        self.mel = WhisperLogMel(n_mels=encoder.config.num_mel_bins)
        self.encoder, self.projector, self.lm = encoder, projector, lm
        self.audio_pad_id = audio_pad_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                chunks: torch.Tensor, chunk_lengths: torch.Tensor, chunk_sample: torch.Tensor,
                chunk_start: torch.Tensor, chunk_tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss over supervised positions.

        ``input_ids``/``attention_mask``/``labels``: (B, T); ``chunks``: (C, S) 16 kHz
        waveforms, int16 PCM or float32 (converted to float32 here, on the model's device,
        by :func:`llaso_data.stream.float_chunks`), with ``chunk_lengths`` (C,); chunk ``i``
        fills ``chunk_tokens[i]`` placeholders of sample ``chunk_sample[i]`` from position
        ``chunk_start[i]``.
        """
        dummy = chunks.shape[0] == 0
        if dummy:
            chunks = torch.zeros((1, 16000), device=input_ids.device)
            chunk_lengths = torch.full((1,), 16000, device=input_ids.device)
        encoder_dtype = next(self.encoder.parameters()).dtype
        features = self.mel(float_chunks(chunks), chunk_lengths).to(encoder_dtype)
        frames = self.encoder(features).last_hidden_state           # (C, 1500, D)
        projected = self.projector(frames)                          # (C, F, H)
        embeds = self.lm.get_input_embeddings()(input_ids)          # (B, T, H)
        if dummy:
            return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels,
                           use_cache=False).loss + 0.0 * projected.sum()
        positions = torch.arange(projected.shape[1], device=projected.device)
        filled = positions[None, :] < chunk_tokens[:, None]         # (C, F)
        rows = torch.repeat_interleave(chunk_sample, chunk_tokens)
        cols = (chunk_start[:, None] + positions[None, :])[filled]
        embeds = embeds.index_put((rows, cols), projected[filled].to(embeds.dtype))
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, use_cache=False).loss


def pick_attention(requested: str) -> str:
    """``flash_attention_2`` when asked for (or ``auto``) and usable here, else ``sdpa``."""
    usable = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        return "flash_attention_2" if usable else "sdpa"
    if requested == "flash_attention_2" and not usable:
        raise ValueError("flash_attention_2 needs a GPU and the flash-attn package (pip install -e .[gpu])")
    return requested


def build_encoder(spec, attention: str) -> WhisperEncoder:
    """A Whisper encoder from a checkpoint directory or a dict of ``WhisperConfig`` fields."""
    if isinstance(spec, dict):
        return WhisperEncoder._from_config(WhisperConfig(**spec), attn_implementation=attention)
    return WhisperModel.from_pretrained(spec, attn_implementation=attention).encoder


def build_lm(spec, attention: str, vocab_size: int) -> nn.Module:
    """A causal LM from a checkpoint directory or a config dict with ``model_type``;
    embeddings resized to ``vocab_size`` (before any ZeRO partitioning)."""
    if isinstance(spec, dict):
        fields = dict(spec)
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        lm = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
    else:
        lm = AutoModelForCausalLM.from_pretrained(spec, attn_implementation=attention)
    if lm.get_input_embeddings().num_embeddings < vocab_size:
        lm.resize_token_embeddings(vocab_size)
    return lm


def build_model(config: ModelConfig, vocab_size: int, audio_pad_id: int) -> SpeechLM:
    attention = pick_attention(config.attn_implementation)
    encoder = build_encoder(config.encoder, attention)
    lm = build_lm(config.lm, attention, vocab_size)
    projector = Projector(encoder.config.d_model, lm.config.hidden_size, config.stack)
    if config.gradient_checkpointing:
        enable = getattr(lm, "activation_checkpointing_enable", None) or lm.gradient_checkpointing_enable
        enable()
        lm.enable_input_require_grads()
    return SpeechLM(encoder, projector, lm, audio_pad_id)


def load_projector(model: SpeechLM, path: Path | str) -> None:
    """Initialise the projector from a ``projector.safetensors`` file (no pickle)."""
    model.projector.load_state_dict(load_file(str(path)))
