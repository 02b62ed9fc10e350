"""The training recipe: setup, train, save. Side effects (process group, files, printing)
live here; the pieces it assembles are pure (``config``, ``model``, ``llaso_data.stream.loader``).

Launch: ``torchrun --nproc_per_node N -m llaso_train --config FILE [key=value ...]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from llaso_data.frontend import SAMPLE_RATE
from llaso_data.stream.chat import ChatFormat, ensure_chat_tokens, renderer, special_token_ids, tiny_tokenizer
from llaso_data.stream.plan import PlanConfig
from llaso_data.stream.loader import ShardStream, StreamConfig, StreamLoader
from llaso_data.stream.windows import WaveformConfig

from .config import TrainConfig, to_dict
from .distributed import fail_on_timeout, init_distributed
from .model import PROJECTOR_FILE, ExportSettings, SpeechLM, build_model, load_projector

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"


def log0(*parts) -> None:
    """Print on rank 0 only."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*parts, flush=True)


def build_tokenizer(name: str, fmt: ChatFormat):
    if name == "tiny":
        return tiny_tokenizer(fmt=fmt)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    ensure_chat_tokens(tokenizer, fmt)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def freeze_for_stage(model: SpeechLM, config: TrainConfig) -> None:
    """align: projector only. instruct: projector + LM (+ encoder if ``train_encoder``)."""
    model.encoder.requires_grad_(config.stage == "instruct" and config.train_encoder)
    model.lm.requires_grad_(config.stage == "instruct")
    model.projector.requires_grad_(True)


def _min_over_ranks(count: int) -> int:
    value = torch.tensor([count], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())


def build_loader(config: TrainConfig, tokenizer, fmt: ChatFormat, rank: int, world: int) -> StreamLoader:
    data = config.data
    plan = PlanConfig(
        selection=data.selection(), mixing=data.mixing_rule(), batching=data.batching(config.model.stack),
        seed=config.seed, shuffle_block=data.shuffle_block)
    stream = StreamConfig(Path(data.shards), plan, WaveformConfig(max_chunks=data.max_chunks, stack=config.model.stack))
    dataset = ShardStream(stream, rank, world, render=renderer(tokenizer, fmt, data.max_length),
                          pad_id=tokenizer.pad_token_id, agree=_min_over_ranks if world > 1 else None)
    return StreamLoader(dataset, num_workers=data.num_workers)


def deepspeed_config(config: TrainConfig, bf16: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,     # batches are formed by the loader
        "gradient_accumulation_steps": config.gradient_accumulation,
        "gradient_clipping": config.optim.grad_clip,
        "zero_optimization": {"stage": config.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": bf16},
        # A client torch AdamW avoids JIT-building DeepSpeed's FusedAdam (~70 s on CPU).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def lr_schedule(config: TrainConfig, total_steps: int):
    """Linear warm-up then cosine decay over ``total_steps`` optimizer steps."""
    warmup = max(1, int(total_steps * config.optim.warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


@dataclass
class Telemetry:
    """Per-step figures; rank 0 prints and appends ``metrics.jsonl``."""

    path: Path
    samples: int = 0
    tokens: int = 0
    audio_seconds: float = 0.0
    wait: float = 0.0
    busy: float = 0.0

    def record(self, step: int, loss: float, batch: dict, wait: float, busy: float, lr: float, world: int) -> dict:
        self.samples += len(batch["keys"]) * world
        tokens = int(batch["attention_mask"].sum()) * world
        seconds = float(batch["chunk_lengths"].sum()) / SAMPLE_RATE * world
        self.tokens += tokens
        self.audio_seconds += seconds
        self.wait += wait
        self.busy += busy
        elapsed = wait + busy
        row = {"step": step, "loss": round(loss, 6), "samples": self.samples, "lr": lr,
               "tokens_per_s": round(tokens / elapsed, 1), "samples_per_s": round(len(batch["keys"]) * world / elapsed, 3),
               "audio_hours_per_s": round(seconds / 3600 / elapsed, 6),
               "data_wait_fraction": round(self.wait / (self.wait + self.busy), 4)}
        return row


def train(config: TrainConfig) -> None:
    init_distributed(config.dist_timeout_s)
    rank, world = dist.get_rank(), dist.get_world_size()
    with fail_on_timeout("llaso_train", rank, world, config.dist_timeout_s):
        _train(config, rank, world)


def _train(config: TrainConfig, rank: int, world: int) -> None:
    import deepspeed

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    bf16 = torch.cuda.is_available() if config.bf16 == "auto" else bool(config.bf16)
    out = Path(config.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(config), indent=2, default=str))
    _seed_everything(config.seed)

    fmt = ChatFormat()
    tokenizer = build_tokenizer(config.model.tokenizer, fmt)
    audio_pad = special_token_ids(tokenizer, fmt)[fmt.audio_pad]
    model = build_model(config.model, len(tokenizer), audio_pad)
    if config.init_projector:
        load_projector(model, config.init_projector)
    freeze_for_stage(model, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_count = sum(p.numel() for p in trainable)  # before ZeRO-3 partitions them
    loader = build_loader(config, tokenizer, fmt, rank, world)
    micro_steps = min(config.max_steps, config.epochs * len(loader))
    optimizer = torch.optim.AdamW(trainable, lr=config.optim.lr, betas=config.optim.betas,
                                  weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule(config, max(1, micro_steps // config.gradient_accumulation)))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(config, bf16))

    step = 0
    telemetry = Telemetry(out / METRICS_FILE)
    checkpoints = out / CHECKPOINT_DIR
    if (checkpoints / "latest").exists():
        _, client = engine.load_checkpoint(str(checkpoints))
        step = client["step"]
        loader.load_state_dict(client["loader"])
        telemetry.samples = client["samples"]
        _set_rng_state(client["rng"][rank])
        log0(f"resumed at step {step} (epoch {loader.dataset.epoch}, batch {loader.batches_done})")
    log0(f"training {config.stage}: {trainable_count:,} trainable parameters, "
         f"{len(loader)} batches per epoch per rank, world size {world}, ZeRO-{config.zero_stage}, bf16={bf16}")

    keys_file = open(out / f"keys-rank{rank}.jsonl", "a") if config.log_keys else None
    metrics_file = open(telemetry.path, "a") if rank == 0 else None
    try:
        while step < config.max_steps and loader.dataset.epoch < config.epochs:
            ticked = time.perf_counter()
            for batch in loader:
                waited = time.perf_counter() - ticked
                inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels", "chunks",
                                                           "chunk_lengths", "chunk_sample", "chunk_start", "chunk_tokens")}
                loss = engine(**inputs)
                engine.backward(loss)
                engine.step()
                step += 1
                mean_loss = loss.detach().float()
                dist.all_reduce(mean_loss)
                mean_loss = float(mean_loss) / world
                busy = time.perf_counter() - ticked - waited
                row = telemetry.record(step, mean_loss, batch, waited, busy, scheduler.get_last_lr()[0], world)
                if keys_file:
                    keys_file.write(json.dumps({"step": step, "keys": batch["keys"], "loss": mean_loss}) + "\n")
                    keys_file.flush()
                if metrics_file and step % config.log_every == 0:
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
                    log0(f"step {step}: loss {row['loss']:.4f}, {row['tokens_per_s']:.0f} tok/s, "
                         f"data wait {row['data_wait_fraction']:.1%}")
                if config.save_every and step % config.save_every == 0:
                    _save(engine, checkpoints, step, loader, telemetry, world)
                ticked = time.perf_counter()
                if step >= config.max_steps:
                    break
            else:
                loader.set_epoch(loader.dataset.epoch + 1)
    finally:
        for handle in (keys_file, metrics_file):
            if handle:
                handle.close()
    settings = ExportSettings(config.model.stack, config.data.max_chunks, config.data.max_length,
                              dataclasses.asdict(fmt))
    _export(model, tokenizer, settings, out / "export", rank)
    log0(f"done: {step} steps; model exported to {out / 'export'}")


def _save(engine, checkpoints: Path, step: int, loader: StreamLoader, telemetry: Telemetry, world: int) -> None:
    """DeepSpeed checkpoint + loader state + every rank's RNG state."""
    states = [None] * world
    dist.all_gather_object(states, _rng_state())
    client = {"step": step, "loader": loader.state_dict(), "samples": telemetry.samples, "rng": states}
    engine.save_checkpoint(str(checkpoints), tag=f"step{step}", client_state=client)


def _export(model: SpeechLM, tokenizer, settings: ExportSettings, target: Path, rank: int) -> None:
    """HF-format LM + tokenizer, the encoder, ``projector.safetensors`` and the inference
    settings (see ``llaso_train.model.load_exported``); all ranks gather, rank 0 writes."""
    import deepspeed
    from safetensors.torch import save_file

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        if rank == 0:
            target.mkdir(parents=True, exist_ok=True)
            model.lm.save_pretrained(target / "lm")
            model.encoder.save_pretrained(target / "encoder")
            tokenizer.save_pretrained(target / "lm")
            save_file({k: v.detach().cpu().contiguous() for k, v in model.projector.state_dict().items()},
                      str(target / PROJECTOR_FILE))
            settings.write(target)
    dist.barrier()
