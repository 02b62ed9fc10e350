"""Typed training configuration, loaded from YAML with ``key=value`` overrides and
validated before any process group starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llaso_data.frontend import FRAMES_PER_CHUNK, FRAMES_PER_SECOND
from llaso_data.stream.plan import Batching, Mixing, PlanConfig, Selection, Source

STAGES = ("align", "instruct")


@dataclass
class ModelConfig:
    """The speech LM.

    ``encoder``: a Whisper checkpoint directory, or a dict of ``WhisperConfig`` fields for a
    randomly initialised encoder. ``lm``: a causal-LM checkpoint directory, or a dict of config
    fields with ``model_type`` (e.g. ``llama``). ``tokenizer``: a tokenizer directory, or
    ``"tiny"`` for the deterministic from-scratch tokenizer of ``llaso_data.stream.chat``.
    ``stack``: encoder frames stacked per projector input (Whisper gives FRAMES_PER_SECOND = 50 frames/s).
    ``attn_implementation``: ``auto`` picks ``flash_attention_2`` when importable on a GPU,
    else ``sdpa``.
    """

    encoder: Any = None
    lm: Any = None
    tokenizer: str = "tiny"
    projector: str = "mlp2x_gelu"
    stack: int = 5
    attn_implementation: str = "auto"
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.encoder is None or self.lm is None:
            raise ValueError("model.encoder and model.lm are required")
        if self.projector != "mlp2x_gelu":
            raise ValueError(f"unknown projector {self.projector!r}; only mlp2x_gelu is implemented")
        if self.stack < 1 or FRAMES_PER_CHUNK % self.stack:
            raise ValueError(f"model.stack must divide Whisper's {FRAMES_PER_CHUNK} encoder frames per chunk")
        if self.attn_implementation not in ("auto", "sdpa", "eager", "flash_attention_2"):
            raise ValueError(f"unknown attn_implementation {self.attn_implementation!r}")


@dataclass
class DataConfig:
    """Which shards, how mixed and batched (see ``llaso_data.stream.plan``).

    ``shards``: one converted corpus, selected by ``splits`` / ``modalities`` / ``tasks``;
    or ``sources``: several, each ``{shards: PATH, weight: W, name: N, splits: [...],
    modalities: [...], tasks: [...]}`` (selection keys default to the section's own;
    ``weight`` to 1; ``name`` to the folder name). Set exactly one of the two; ``shards`` is
    the one-source case of ``sources``. ``max_tokens`` budgets and the ``max_length`` check
    at planning use ``chars_per_token`` to estimate text tokens from characters: calibrate
    it for the tokenizer in use (about 4 for Llama-3 on English, about 2 for the tiny one)."""

    shards: str | None = None
    sources: list | None = None
    splits: list | None = field(default_factory=lambda: ["train"])
    modalities: list | None = None
    tasks: list | None = None
    mixing: str = "natural"
    temperature: float = 1.0
    weights: dict | None = None
    batch_size: int | None = 4
    max_tokens: int | None = None
    chars_per_token: float = 4.0
    shuffle_block: int = 1024
    shard_window: int = 4
    num_workers: int = 1
    max_length: int = 2048
    max_chunks: int = 20

    def __post_init__(self):
        if (self.shards is None) == (self.sources is None):
            raise ValueError("data: set exactly one of data.shards and data.sources")
        try:  # the planner's own rules, so they are stated once
            self.plan(stack=1, seed=0)
        except (ValueError, TypeError) as error:
            raise ValueError(f"data: {error}") from None
        if self.num_workers < 0:
            raise ValueError("data.num_workers must be >= 0")

    def selection(self, entry: dict | None = None) -> Selection:
        """The selection of a ``sources`` entry, its missing keys taken from this section
        (no entry: the section's own)."""
        entry = entry or {}
        values = [entry.get(key, getattr(self, key)) for key in ("splits", "modalities", "tasks")]
        return Selection(*(None if v is None else tuple(v) for v in values))

    def plan_sources(self) -> list[Source]:
        """The planner's sources: one for ``shards``, one per ``sources`` entry."""
        if self.sources is None:
            return [Source(self.shards, self.selection())]
        known = {"shards", "weight", "name", "splits", "modalities", "tasks"}
        sources = []
        for number, entry in enumerate(self.sources):
            if not isinstance(entry, dict) or "shards" not in entry or set(entry) - known:
                raise ValueError(f"data.sources[{number}] must be a mapping with shards and only {sorted(known)}")
            sources.append(Source(entry["shards"], self.selection(entry), float(entry.get("weight", 1.0)),
                                  entry.get("name")))
        return sources

    def mixing_rule(self) -> Mixing:
        return Mixing(self.mixing, self.temperature, self.weights)

    def batching(self, stack: int, template: tuple[int, int] = (0, 0)) -> Batching:
        """The planner's batching for a projector stacking ``stack`` encoder frames (audio
        costs ``FRAMES_PER_SECOND / stack`` tokens per second); samples estimated longer than
        ``max_length`` tokens, the chat template's ``template`` tokens (per sample, per clip;
        ``llaso_data.stream.chat.template_overhead``) included, are dropped at planning."""
        per_sample, per_clip = template
        return Batching(batch_size=self.batch_size, max_tokens=self.max_tokens,
                        audio_tokens_per_second=FRAMES_PER_SECOND / stack, chars_per_token=self.chars_per_token,
                        max_length=self.max_length, template_tokens=per_sample, clip_tokens=1 + per_clip)

    def plan(self, stack: int, seed: int, template: tuple[int, int] = (0, 0)) -> PlanConfig:
        """The whole plan configuration (``template``: see :meth:`batching`)."""
        return PlanConfig(self.plan_sources(), self.mixing_rule(), self.batching(stack, template), seed=seed,
                          shuffle_block=self.shuffle_block, shard_window=self.shard_window)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    betas: tuple = (0.9, 0.999)
    grad_clip: float = 1.0

    def __post_init__(self):
        if self.lr <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("optim.lr must be > 0 and optim.warmup_ratio in [0, 1)")
        self.betas = tuple(self.betas)


@dataclass
class TrainConfig:
    """One training stage.

    ``stage``: ``align`` trains the projector only (encoder and LM frozen); ``instruct``
    trains projector and LM (and the encoder when ``train_encoder``), starting from
    ``init_projector`` (the align stage's ``projector.safetensors``) when given.
    ``gradient_accumulation`` micro-batches (loader batches) per rank make one optimizer
    step; ``max_steps``, ``save_every`` and ``log_every`` count optimizer steps, so a
    checkpoint never cuts an accumulation. ``epochs`` bounds the run too (whichever comes
    first; a step may span two epochs, and micro-batches left over at the very end that
    cannot fill a step are not trained on). The learning-rate schedule runs over optimizer
    steps; the loss of a step is the mean over all its supervised tokens on all ranks.
    ``zero_stage`` is DeepSpeed's ZeRO stage (0-3). ``bf16``: ``auto`` means on a GPU only.
    ``dist_timeout_s``: seconds a rank waits in a collective before every surviving rank
    exits with status 3 (a stopped or hung peer).
    """

    stage: str = "align"
    model: ModelConfig = None
    data: DataConfig = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    output_dir: str = "runs/train"
    max_steps: int = 100
    epochs: int = 1
    gradient_accumulation: int = 1
    zero_stage: int = 3
    bf16: Any = "auto"
    train_encoder: bool = False
    init_projector: str | None = None
    seed: int = 0
    log_every: int = 1
    save_every: int = 0
    log_keys: bool = False
    dist_timeout_s: float = 1800.0

    def __post_init__(self):
        if not self.dist_timeout_s > 0:
            raise ValueError("dist_timeout_s must be > 0 (seconds a rank waits in a collective)")
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, not {self.stage!r}")
        if self.model is None:
            raise ValueError("a model section is required")
        if self.data is None:
            raise ValueError("a data section is required")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError("zero_stage must be 0, 1, 2 or 3")
        if self.bf16 not in ("auto", True, False):
            raise ValueError("bf16 must be auto, true or false")
        if self.stage == "align" and (self.train_encoder or self.init_projector):
            raise ValueError("the align stage trains the projector only (no train_encoder, no init_projector)")
        if self.max_steps < 1 or self.epochs < 1 or self.gradient_accumulation < 1:
            raise ValueError("max_steps, epochs and gradient_accumulation must be >= 1")


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig}


def load_config(path: Path | str, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML recipe and apply ``section.key=value`` overrides (values parsed as YAML)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"override {override!r} is not key=value")
        dotted, value = override.split("=", 1)
        target = raw
        *parents, leaf = dotted.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = _parse_value(value)
    return _build(raw)


def _parse_value(text: str):
    """YAML scalar, except that ``1e-3`` (a string in YAML 1.1) is a float."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _build(raw: dict) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    values = dict(raw)
    for name, cls in _SECTIONS.items():
        section = values.get(name)
        if section is not None:
            fields = {f.name for f in dataclasses.fields(cls)}
            extra = set(section) - fields
            if extra:
                raise ValueError(f"unknown keys in {name}: {sorted(extra)}")
            values[name] = cls(**section)
    return TrainConfig(**values)


def to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)
