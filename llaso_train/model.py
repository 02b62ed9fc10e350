"""The speech LM: Whisper encoder -> frame-stacking MLP projector -> causal LM.

Shapes: ``B`` samples, ``T`` tokens, ``C`` audio chunks in the batch (30 s windows),
``F = FRAMES_PER_CHUNK / stack`` (1,500 / stack) projected frames per chunk, ``D`` encoder width, ``H`` LM width.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder, WhisperModel

from llaso_data.frontend import FRAMES_PER_CHUNK, SAMPLE_RATE
from llaso_data.stream.chat import IGNORE_INDEX, ChatFormat, special_token_ids
from llaso_data.stream.windows import WaveformConfig

from .config import ModelConfig
from .dtypes import check_compute_dtype
from .features import WhisperLogMel, float_chunks

PROJECTOR_FILE = "projector.safetensors"
SETTINGS_FILE = "llaso.json"


class Projector(nn.Module):
    """``mlp2x_gelu`` over stacked frames: (C, FRAMES_PER_CHUNK, D) -> (C, FRAMES_PER_CHUNK / stack, H)."""

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

    def embed(self, input_ids: torch.Tensor, chunks: torch.Tensor, chunk_lengths: torch.Tensor,
              chunk_sample: torch.Tensor, chunk_start: torch.Tensor, chunk_tokens: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """LM input embeddings with every audio span filled by its projected encoder frames.

        ``input_ids``: (B, T); ``chunks``: (C, S) 16 kHz waveforms, int16 PCM or float32
        (converted to float32 here, on the model's device, by
        :func:`llaso_train.features.float_chunks`), with ``chunk_lengths`` (C,); chunk ``i``
        fills ``chunk_tokens[i]`` placeholders of sample ``chunk_sample[i]`` from position
        ``chunk_start[i]``. Returns ``(embeds (B, T, H), audio_term)`` where ``audio_term``
        is a zero scalar tied to the encoder and projector when the batch has no audio (add
        it to the loss so every rank's backward reaches the same parameters).
        """
        dummy = chunks.shape[0] == 0
        if dummy:
            chunks = torch.zeros((1, SAMPLE_RATE), device=input_ids.device)      # 1 s of silence
            chunk_lengths = torch.full((1,), SAMPLE_RATE, device=input_ids.device)
        encoder_dtype = next(self.encoder.parameters()).dtype
        features = self.mel(float_chunks(chunks), chunk_lengths).to(encoder_dtype)
        frames = self.encoder(features).last_hidden_state           # (C, FRAMES_PER_CHUNK, D)
        projected = self.projector(frames)                          # (C, F, H)
        embeds = self.lm.get_input_embeddings()(input_ids)          # (B, T, H)
        if dummy:
            return embeds, 0.0 * projected.sum()
        positions = torch.arange(projected.shape[1], device=projected.device)
        filled = positions[None, :] < chunk_tokens[:, None]         # (C, F)
        rows = torch.repeat_interleave(chunk_sample, chunk_tokens)
        cols = (chunk_start[:, None] + positions[None, :])[filled]
        embeds = embeds.index_put((rows, cols), projected[filled].to(embeds.dtype))
        return embeds, projected.new_zeros(())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                chunks: torch.Tensor, chunk_lengths: torch.Tensor, chunk_sample: torch.Tensor,
                chunk_start: torch.Tensor, chunk_tokens: torch.Tensor,
                normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
        """Next-token loss: the float32 negative log-likelihood summed over the supervised
        positions (``labels != -100``, shifted by one), divided by ``normalizer``; by default
        their number here (a token mean over this batch). The trainer passes the supervised
        tokens of the whole optimizer step, so every token weighs the same whatever the size
        of its micro-batch. ``labels``/``attention_mask``: (B, T) int64; the other arguments
        as in :meth:`embed`. Returns a float32 scalar."""
        embeds, audio_term = self.embed(input_ids, chunks, chunk_lengths, chunk_sample, chunk_start, chunk_tokens)
        logits = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).logits
        targets = labels[:, 1:]
        summed = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                 ignore_index=IGNORE_INDEX, reduction="sum")
        if normalizer is None:
            normalizer = (targets != IGNORE_INDEX).sum().clamp(min=1)
        return summed / normalizer + audio_term

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunks: torch.Tensor,
                 chunk_lengths: torch.Tensor, chunk_sample: torch.Tensor, chunk_start: torch.Tensor,
                 chunk_tokens: torch.Tensor, max_new_tokens: int, stop_ids: list[int], pad_id: int,
                 synced_gpus: bool = False) -> torch.Tensor:
        """Greedy continuations of LEFT-padded prompts: (B, T) in, (B, <= max_new_tokens) new
        token ids out, padded with ``pad_id`` after each row's stop token.

        ``synced_gpus`` keeps a rank that has finished stepping until every rank has (needed
        under ZeRO-3, where each forward gathers parameters collectively).
        """
        embeds, _ = self.embed(input_ids, chunks, chunk_lengths, chunk_sample, chunk_start, chunk_tokens)
        return self.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, do_sample=False,
                                max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id,
                                synced_gpus=synced_gpus, num_beams=1)


def flash_attention_usable() -> bool:
    """True when a GPU is present and ``flash_attn``'s CUDA kernels really import (an
    installed but ABI-broken flash-attn fails here, not later inside the model build)."""
    if not torch.cuda.is_available():
        return False
    try:
        from flash_attn import flash_attn_func  # noqa: F401  (loads the compiled extension)
    except Exception:  # ImportError, OSError (undefined symbol), RuntimeError: all mean unusable
        return False
    return True


def pick_attention(requested: str) -> str:
    """``flash_attention_2`` when asked for (or ``auto``) and usable here, else ``sdpa``."""
    if requested == "auto":
        return "flash_attention_2" if flash_attention_usable() else "sdpa"
    if requested == "flash_attention_2" and not flash_attention_usable():
        raise ValueError("flash_attention_2 needs a GPU and a flash-attn build that imports "
                         "(pip install -e .[gpu]); `import flash_attn` failed or no GPU is present")
    return requested


@contextlib.contextmanager
def _zero3_build(ds_config: dict | None):
    """While open, with a ZeRO-3 DeepSpeed config, transformers builds and loads models
    partitioned (``deepspeed.zero.Init`` through ``HfDeepSpeedConfig``, which it holds by weak
    reference only) and resizes embeddings on gathered rows. Yields whether it is on."""
    if not ds_config or ds_config.get("zero_optimization", {}).get("stage") != 3:
        yield False
        return
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    keep = HfDeepSpeedConfig(ds_config)
    try:
        yield True
    finally:
        del keep
        unset_hf_deepspeed_config()


def build_encoder(spec, attention: str, dtype: torch.dtype) -> WhisperEncoder:
    """A Whisper encoder in ``dtype`` from a checkpoint directory (of a ``WhisperModel`` or
    ``WhisperForConditionalGeneration``; the decoder is dropped) or a dict of ``WhisperConfig``
    fields (random weights)."""
    if isinstance(spec, dict):
        return WhisperEncoder._from_config(WhisperConfig(**spec), attn_implementation=attention, dtype=dtype)
    return WhisperModel.from_pretrained(spec, attn_implementation=attention, dtype=dtype).encoder


def build_lm(spec, attention: str, vocab_size: int, dtype: torch.dtype) -> nn.Module:
    """A causal LM in ``dtype`` from a checkpoint directory or a config dict with
    ``model_type``; embeddings grown to ``vocab_size`` rows when smaller (transformers'
    ``resize_token_embeddings``: new rows drawn around the mean of the old ones, gathered
    and re-partitioned under ZeRO-3)."""
    if isinstance(spec, dict):
        fields = dict(spec)
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        lm = AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=dtype)
    else:
        lm = AutoModelForCausalLM.from_pretrained(spec, attn_implementation=attention, dtype=dtype)
    embeddings = lm.get_input_embeddings()
    rows = embeddings.weight.ds_shape[0] if hasattr(embeddings.weight, "ds_shape") else embeddings.num_embeddings
    if rows < vocab_size:
        lm.resize_token_embeddings(vocab_size)
    return lm


def build_model(config: ModelConfig, vocab_size: int, audio_pad_id: int,
                dtype: torch.dtype = torch.float32, ds_config: dict | None = None) -> SpeechLM:
    """The speech LM with every parameter in ``dtype`` (see :mod:`llaso_train.dtypes`).

    With a ZeRO-3 ``ds_config`` (the one ``deepspeed.initialize`` will get), the LM and the
    projector are created partitioned (``zero.Init``): no rank ever holds them whole, the
    checkpoint is loaded shard by shard and the embedding resize runs on gathered rows. The
    encoder is built whole on each rank (whisper-large-v3's encoder: 0.64 B parameters,
    1.3 GB in bf16) and partitioned by ``deepspeed.initialize``: transformers 5.23 cannot
    load a Whisper checkpoint under ``zero.Init`` (its weight init reads a partitioned
    position-embedding shape).
    """
    attention = pick_attention(config.attn_implementation)
    encoder = build_encoder(config.encoder, attention, dtype)
    with _zero3_build(ds_config) as zero3:
        lm = build_lm(config.lm, attention, vocab_size, dtype)
        if zero3:
            import deepspeed

            # the dtype comes from ds_config's bf16 section: DeepSpeed 0.19.8 turns an explicit
            # dtype into bf16 on any accelerator without fp16 (operator precedence in _set_dtype)
            with deepspeed.zero.Init(config_dict_or_path=ds_config):
                projector = Projector(encoder.config.d_model, lm.config.hidden_size, config.stack)
        else:
            projector = Projector(encoder.config.d_model, lm.config.hidden_size, config.stack).to(dtype)
    if config.gradient_checkpointing:
        enable = getattr(lm, "activation_checkpointing_enable", None) or lm.gradient_checkpointing_enable
        enable()
        lm.enable_input_require_grads()
    model = SpeechLM(encoder, projector, lm, audio_pad_id)
    check_compute_dtype(model, dtype)
    return model


def load_projector(model: SpeechLM, path: Path | str) -> None:
    """Initialise the projector from a ``projector.safetensors`` file (no pickle), in the
    projector's dtype. Under ZeRO-3 (partitioned parameters) call it on every rank: the
    parameters are gathered, rank 0's copy is loaded and re-partitioned."""
    weights = load_file(str(path))
    parameters = list(model.projector.parameters())
    if not any(hasattr(p, "ds_id") for p in parameters):
        model.projector.load_state_dict(weights)
        return
    import deepspeed
    import torch.distributed as dist

    with deepspeed.zero.GatheredParameters(parameters, modifier_rank=0):
        if dist.get_rank() == 0:
            model.projector.load_state_dict(weights)


@dataclass(frozen=True)
class ExportSettings:
    """What inference needs to feed an exported model the way it was trained; written next to
    the weights as ``llaso.json``.

    ``stack``: encoder frames per projector output; ``max_chunks``: 30 s windows kept per clip;
    ``max_length``: the training sequence length in tokens; ``chat_format``: the
    :class:`llaso_data.stream.chat.ChatFormat` fields.
    """

    stack: int
    max_chunks: int
    max_length: int
    chat_format: dict

    @property
    def fmt(self) -> ChatFormat:
        return ChatFormat(**self.chat_format)

    @property
    def waveform(self) -> WaveformConfig:
        return WaveformConfig(max_chunks=self.max_chunks, stack=self.stack)

    def write(self, export_dir: Path) -> None:
        (export_dir / SETTINGS_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, export_dir: Path) -> "ExportSettings":
        path = export_dir / SETTINGS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; is {export_dir} a model exported by llaso_train?")
        return cls(**json.loads(path.read_text()))


def load_exported(export_dir: Path | str, attention: str = "auto", dtype: torch.dtype = torch.float32
                  ) -> tuple[SpeechLM, object, ExportSettings]:
    """The speech LM exported by ``llaso_train`` (``lm/`` with its tokenizer, ``encoder/``,
    ``projector.safetensors``, ``llaso.json``), in eval mode on the CPU with every parameter
    in ``dtype`` whatever dtype it was saved in, its tokenizer and its settings. Weights load
    from safetensors; nothing is unpickled."""
    from transformers import AutoTokenizer

    export_dir = Path(export_dir)
    settings = ExportSettings.read(export_dir)
    attention = pick_attention(attention)
    tokenizer = AutoTokenizer.from_pretrained(export_dir / "lm")
    encoder = WhisperEncoder.from_pretrained(export_dir / "encoder", attn_implementation=attention, dtype=dtype)
    lm = AutoModelForCausalLM.from_pretrained(export_dir / "lm", attn_implementation=attention, dtype=dtype)
    projector = Projector(encoder.config.d_model, lm.config.hidden_size, settings.stack).to(dtype)
    audio_pad = special_token_ids(tokenizer, settings.fmt)[settings.fmt.audio_pad]
    model = SpeechLM(encoder, projector, lm, audio_pad)
    load_projector(model, export_dir / PROJECTOR_FILE)
    check_compute_dtype(model, dtype)
    return model.eval(), tokenizer, settings
