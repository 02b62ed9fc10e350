"""The training recipe: setup, train, save. Side effects (process group, files, printing)
live here; the pieces it assembles are pure (``config``, ``model``, ``llaso_data.stream.loader``).

Launch: ``torchrun --nproc_per_node N -m llaso_train --config FILE [key=value ...]``.
"""

from __future__ import annotations

import dataclasses
import itertools
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
from llaso_data.stream.chat import (IGNORE_INDEX, ChatFormat, ensure_chat_tokens, renderer, special_token_ids,
                                   template_overhead, tiny_tokenizer)
from llaso_data.stream.loader import ShardStream, StreamConfig, StreamLoader
from llaso_data.stream.preview import summarize
from llaso_data.stream.windows import WaveformConfig

from .config import TrainConfig, to_dict
from .distributed import fail_on_timeout, init_distributed, shutdown_distributed
from .dtypes import compute_dtype, resolve_bf16
from .model import PROJECTOR_FILE, ExportSettings, SpeechLM, build_model, load_projector

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
RUN_STATE_FILE = "llaso_run.json"   # next to each DeepSpeed checkpoint tag: world size, accumulation
BATCH_INPUTS = ("input_ids", "attention_mask", "labels", "chunks", "chunk_lengths", "chunk_sample",
                "chunk_start", "chunk_tokens")


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


def _collective_device() -> torch.device:
    """Where the process group's tensors must live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _reduce_int(value: int, op) -> int:
    tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(tensor, op=op)
    return int(tensor.item())


def _min_over_ranks(count: int) -> int:
    return _reduce_int(count, dist.ReduceOp.MIN)


def build_loader(config: TrainConfig, tokenizer, fmt: ChatFormat, rank: int, world: int) -> StreamLoader:
    """The rank's loader over ``data.shards`` or ``data.sources``; plans epoch 0 now (all ranks
    together: dynamic batch counts are agreed over the process group) and prints rank 0's
    mixture summary (quotas, batches, samples dropped at planning, tasks per batch)."""
    data = config.data
    template = template_overhead(tokenizer, fmt)
    log0(f"data: the chat template adds {template[0]} tokens per sample and {template[1]} per clip "
         f"(counted against max_length {data.max_length} at planning)")
    plan = data.plan(config.model.stack, config.seed, template)
    stream = StreamConfig(plan, WaveformConfig(max_chunks=data.max_chunks, stack=config.model.stack))
    dataset = ShardStream(stream, rank, world, render=renderer(tokenizer, fmt, data.max_length),
                          pad_id=tokenizer.pad_token_id, agree=_min_over_ranks if world > 1 else None)
    for line in summarize([dataset.prepare()], plan).lines():
        log0(f"data: {line}")
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
    """This rank's generators: Python, NumPy, torch CPU and (on a GPU) the current device's CUDA one."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _micro_batches(loader: StreamLoader, epochs: int):
    """The loader's batches from its current position on, across epoch boundaries, until
    ``epochs`` epochs are done (an optimizer step may span two epochs)."""
    while loader.dataset.epoch < epochs:
        yield from loader
        log0(f"epoch {loader.dataset.epoch} done; samples skipped by the loader so far (rank 0): "
             f"{loader.skipped or 'none'}")
        loader.set_epoch(loader.dataset.epoch + 1)


def supervised_tokens(batch: dict) -> int:
    """Positions the loss counts in a batch: labels other than -100 after the LM's shift by one."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def check_resumable(tag_dir: Path, world: int, gradient_accumulation: int) -> None:
    """Refuse (ValueError) to resume from ``tag_dir`` with another world size or accumulation:
    the loader position and the RNG states are per rank, and the step would mean another
    number of samples."""
    saved = json.loads((tag_dir / RUN_STATE_FILE).read_text())
    if saved["world_size"] != world:
        raise ValueError(
            f"{tag_dir}: saved by {saved['world_size']} ranks, resumed on {world}; the data position and "
            f"RNG states are per rank. Resume with {saved['world_size']} processes, or start a new "
            f"output_dir (init_projector= the export of this run)")
    if saved["gradient_accumulation"] != gradient_accumulation:
        raise ValueError(f"{tag_dir}: saved with gradient_accumulation={saved['gradient_accumulation']}, "
                         f"resumed with {gradient_accumulation}; keep the setting to resume")


@dataclass
class Telemetry:
    """Per-optimizer-step figures; rank 0 prints and appends ``metrics.jsonl``."""

    path: Path
    samples: int = 0
    tokens: int = 0
    audio_seconds: float = 0.0
    wait: float = 0.0
    busy: float = 0.0

    def record(self, step: int, loss: float, batches: list[dict], wait: float, busy: float, lr: float,
               world: int) -> dict:
        """One optimizer step made of this rank's micro-``batches``; counts are extrapolated
        to ``world`` ranks (ranks get equal shares). ``wait``/``busy`` in seconds."""
        samples = sum(len(batch["keys"]) for batch in batches) * world
        tokens = sum(int(batch["attention_mask"].sum()) for batch in batches) * world
        seconds = sum(float(batch["chunk_lengths"].sum()) for batch in batches) / SAMPLE_RATE * world
        self.samples += samples
        self.tokens += tokens
        self.audio_seconds += seconds
        self.wait += wait
        self.busy += busy
        elapsed = wait + busy
        row = {"step": step, "loss": round(loss, 6), "samples": self.samples, "lr": lr,
               "tokens_per_s": round(tokens / elapsed, 1), "samples_per_s": round(samples / elapsed, 3),
               "audio_hours_per_s": round(seconds / 3600 / elapsed, 6),
               "data_wait_fraction": round(self.wait / (self.wait + self.busy), 4)}
        return row


def optimizer_step(engine, batches: list[dict], device: torch.device, world: int) -> float:
    """One optimizer step over this rank's ``batches`` (``gradient_accumulation`` of them;
    every rank calls it with the same count). Returns the step's loss: the mean over every
    supervised token of the step on all ranks.

    DeepSpeed divides each backward by the accumulation and averages gradients over the
    ranks, so each micro-batch's summed loss is divided by ``step_tokens / (world *
    accumulation)``: the step's gradient is then that of the token mean, whatever the number
    of supervised tokens in each micro-batch (dynamic batches differ a lot)."""
    accumulation = len(batches)
    step_tokens = _reduce_int(sum(supervised_tokens(b) for b in batches), dist.ReduceOp.SUM)
    normalizer = max(1, step_tokens) / (world * accumulation)
    step_loss = torch.zeros((), device=device)
    for batch in batches:
        loss = engine(**{k: batch[k].to(device) for k in BATCH_INPUTS}, normalizer=normalizer)
        engine.backward(loss)
        engine.step()
        step_loss += loss.detach().float()
    step_loss = step_loss.to(_collective_device())
    dist.all_reduce(step_loss)
    return float(step_loss) / (world * accumulation)


def train(config: TrainConfig) -> None:
    """Run one stage. ``step`` counts optimizer steps (``gradient_accumulation`` micro-batches
    per rank each): ``max_steps``, ``save_every``, ``log_every`` and the metrics all count
    them, and checkpoints fall on step boundaries only. The loss of a step is the mean over
    every supervised token of its micro-batches on all ranks."""
    init_distributed(config.dist_timeout_s)
    rank, world = dist.get_rank(), dist.get_world_size()
    with fail_on_timeout("llaso_train", rank, world, config.dist_timeout_s):
        _train(config, rank, world)
        shutdown_distributed()


def _train(config: TrainConfig, rank: int, world: int) -> None:
    import deepspeed

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    bf16 = resolve_bf16(config.bf16)
    dtype = compute_dtype(bf16)
    accumulation = config.gradient_accumulation
    out = Path(config.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(config), indent=2, default=str))
    checkpoints = out / CHECKPOINT_DIR
    latest = checkpoints / "latest"
    if latest.exists():  # before any weight is loaded: a clear refusal, not a DeepSpeed shape error
        check_resumable(checkpoints / latest.read_text().strip(), world, accumulation)
    _seed_everything(config.seed)

    fmt = ChatFormat()
    tokenizer = build_tokenizer(config.model.tokenizer, fmt)
    audio_pad = special_token_ids(tokenizer, fmt)[fmt.audio_pad]
    ds_config = deepspeed_config(config, bf16)
    model = build_model(config.model, len(tokenizer), audio_pad, dtype, ds_config)  # ZeRO-3: built partitioned
    if config.init_projector:
        load_projector(model, config.init_projector)
    freeze_for_stage(model, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_count = sum(getattr(p, "ds_numel", p.numel()) for p in trainable)
    loader = build_loader(config, tokenizer, fmt, rank, world)
    total_steps = min(config.max_steps, config.epochs * len(loader) // accumulation)
    optimizer = torch.optim.AdamW(trainable, lr=config.optim.lr, betas=config.optim.betas,
                                  weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(config, max(1, total_steps)))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)

    step = 0
    telemetry = Telemetry(out / METRICS_FILE)
    if latest.exists():
        _, client = engine.load_checkpoint(str(checkpoints))
        step = client["step"]
        loader.load_state_dict(client["loader"])
        telemetry.samples = client["samples"]
        _set_rng_state(client["rng"][rank])
        log0(f"resumed at step {step} (epoch {loader.dataset.epoch}, batch {loader.batches_done})")
    log0(f"training {config.stage}: {trainable_count:,} trainable parameters, "
         f"{len(loader)} batches per epoch per rank, {accumulation} per optimizer step, "
         f"{total_steps} optimizer steps, world size {world}, ZeRO-{config.zero_stage}, {dtype}")

    keys_path = out / f"keys-rank{rank}.jsonl"
    for path in ([keys_path] if config.log_keys else []) + ([telemetry.path] if rank == 0 else []):
        keep_rows_through(path, step)  # a restarted run logs the steps after its checkpoint again
    keys_file = open(keys_path, "a") if config.log_keys else None
    metrics_file = open(telemetry.path, "a") if rank == 0 else None
    stream = _micro_batches(loader, config.epochs)
    try:
        while step < total_steps:
            ticked = time.perf_counter()
            batches = list(itertools.islice(stream, accumulation))
            if len(batches) < accumulation:  # the data ran out inside a step: not taken
                break
            waited = time.perf_counter() - ticked
            mean_loss = optimizer_step(engine, batches, device, world)
            step += 1
            busy = time.perf_counter() - ticked - waited
            row = telemetry.record(step, mean_loss, batches, waited, busy, scheduler.get_last_lr()[0], world)
            if keys_file:
                keys = [key for batch in batches for key in batch["keys"]]
                keys_file.write(json.dumps({"step": step, "keys": keys, "loss": mean_loss}) + "\n")
                keys_file.flush()
            if metrics_file and step % config.log_every == 0:
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                log0(f"step {step}: loss {row['loss']:.4f}, {row['tokens_per_s']:.0f} tok/s, "
                     f"data wait {row['data_wait_fraction']:.1%}")
            if config.save_every and step % config.save_every == 0:
                _save(engine, checkpoints, step, loader, telemetry, world, accumulation)
    finally:
        for handle in (keys_file, metrics_file):
            if handle:
                handle.close()
    settings = ExportSettings(config.model.stack, config.data.max_chunks, config.data.max_length,
                              dataclasses.asdict(fmt))
    _export(engine, model, tokenizer, settings, out / "export", rank)
    log0(f"done: {step} steps; model exported to {out / 'export'}")


def keep_rows_through(path: Path, step: int) -> None:
    """Cut the JSON-lines log ``path`` (rows with a ``step``) to its rows of steps ``<= step``,
    the step a run starts from (0 for a fresh start): a run killed after its last checkpoint
    logged steps it now trains again. A torn last line (the kill landed mid-write) goes too.
    The kept rows are written to a temporary file renamed over ``path``, so a kill during
    the cut leaves the old file or the new one. A missing file is left missing."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step and line.endswith("\n"):
            kept.append(line)
    if len(kept) == len(lines):
        return
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(kept), encoding="utf-8")
    os.replace(temporary, path)


def _save(engine, checkpoints: Path, step: int, loader: StreamLoader, telemetry: Telemetry, world: int,
          accumulation: int) -> None:
    """DeepSpeed checkpoint + loader state + every rank's RNG state, at an optimizer-step
    boundary (nothing is accumulated); ``RUN_STATE_FILE`` records what resuming needs."""
    states = [None] * world
    dist.all_gather_object(states, _rng_state())
    tag = f"step{step}"
    if dist.get_rank() == 0:
        (checkpoints / tag).mkdir(parents=True, exist_ok=True)
        (checkpoints / tag / RUN_STATE_FILE).write_text(json.dumps(
            {"step": step, "world_size": world, "gradient_accumulation": accumulation}) + "\n")
    client = {"step": step, "loader": loader.state_dict(), "samples": telemetry.samples, "rng": states}
    engine.save_checkpoint(str(checkpoints), tag=tag, client_state=client)


def _export(engine, model: SpeechLM, tokenizer, settings: ExportSettings, target: Path, rank: int) -> None:
    """HF-format LM + tokenizer, the encoder, ``projector.safetensors`` and the inference
    settings (see ``llaso_train.model.load_exported``), in the compute dtype. Under ZeRO-3 the
    weights are gathered one module at a time onto rank 0 (DeepSpeed's consolidated 16-bit
    state dict), so no rank ever holds the whole model twice; rank 0 writes."""
    from safetensors.torch import save_file

    if engine.zero_optimization_partition_weights():
        state = engine._zero3_consolidated_16bit_state_dict()       # rank 0: full; others: None
    else:
        state = model.state_dict() if rank == 0 else None
    if rank == 0:
        parts = {name: {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
                 for name in ("encoder", "projector", "lm")}
        target.mkdir(parents=True, exist_ok=True)
        model.lm.save_pretrained(target / "lm", state_dict=parts["lm"])
        model.encoder.save_pretrained(target / "encoder", state_dict=parts["encoder"])
        tokenizer.save_pretrained(target / "lm")
        save_file({k: v.detach().cpu().contiguous() for k, v in parts["projector"].items()},
                  str(target / PROJECTOR_FILE))
        settings.write(target)
    dist.barrier()
