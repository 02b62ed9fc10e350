"""Training-step benchmark on one GPU: tokens/s, MFU, the data-wait fraction and peak
memory of the ``instruct`` stage at a realistic model shape, through the recipe's own pieces
and with the Base preset's workload by default (``llaso_base_instruct.yaml``: stack 1, batch 1,
gradient checkpointing, 4 loader workers; ``--grad-accum`` micro-batches per optimizer step).

What runs (one process, one rank):

* **Model.** ``--preset base`` (default): LLaSO-Base dimensions with RANDOM weights built
  from configs (nothing is downloaded): a Whisper-large-v3 encoder (``d_model=1280``, 32
  layers, 20 heads, ffn 5120, 128 mel bins), the ``mlp2x_gelu`` projector over ``--stack``
  stacked frames (default 1: 1280 -> 3072 -> 3072) and a Llama-3.2-3B LM (hidden 3072,
  ffn 8192, 28 layers, 24 heads, 8 KV heads, vocab 128,256, tied embeddings,
  ``rope_theta=500000``). ``--preset tiny``: the dimensions of
  ``llaso_train/configs/tiny_instruct.yaml``, so the code path can run on CPU.
  Built by ``llaso_train.model.build_model`` in the compute dtype, the LM and projector
  partitioned as they are created under ZeRO-3 (on the GPU directly, which only makes random
  init faster); ``attn_implementation`` from ``pick_attention(--attn)`` (``auto``:
  ``flash_attention_2`` when flash-attn imports, else ``sdpa``); ``--grad-ckpt`` (default;
  ``--no-grad-ckpt`` to disable) enables the LM's gradient checkpointing as
  ``model.gradient_checkpointing`` does.
* **Stage.** ``instruct``: ``freeze_for_stage`` (projector + LM trained, encoder frozen),
  a client ``torch.optim.AdamW`` and ``deepspeed.initialize`` with the recipe's
  ``deepspeed_config`` (ZeRO stage ``--zero``, default 3; bf16 on a GPU). With one GPU,
  ZeRO-3 partitions nothing across ranks; it is still the recipe's code path.
* **Data.** The REAL loader (``llaso_train.recipe.build_loader``: ``ShardStream`` +
  ``StreamLoader``) over a converted shard folder ``--shards`` (e.g. ``shards/demo`` from
  ``./scripts/demo.sh``) rendered with the tiny tokenizer (``llaso_data.stream.chat.tiny_tokenizer``;
  its ~1,000 ids fit in the 128,256-row embedding, which is only resized when smaller).
  Batches by ``--batch-size`` or ``--max-tokens``; ``--num-workers`` loader processes.
  When the epoch runs out the next epoch starts (new loader workers; counted in
  ``epoch_restarts``).

Timing: ``--warmup`` optimizer steps (default 1) are run and discarded, then ``--steps``
(default 3) timed ones. Each step takes ``--grad-accum`` batches from the loader (default 32,
as the Base preset) and runs ``llaso_train.recipe.optimizer_step`` on them, the recipe's own
step (loss normalised over the step's supervised tokens, one backward and ``engine.step()``
per micro-batch), with ``torch.cuda.synchronize()`` before the clock starts and before it
stops. ``data_wait_fraction`` = time blocked in the loader / step time, summed over the
timed steps. ``step_time_s`` is the mean wall time of a timed step (data wait included);
``tokens_per_s`` = non-padding LM tokens (``attention_mask.sum()``, text + audio
placeholders, as ``recipe.Telemetry`` counts them) / timed wall time.

MFU (model FLOPs utilisation) per step, summed over the timed steps and divided by their
wall time and by ``--peak-tflops`` (dense bf16 peak; default by
``torch.cuda.get_device_name()``: H100 SXM 989, H100 PCIe 756, H100 NVL 835, H200 989,
A100 312; other GPUs need the flag; ``null`` on CPU)::

    flops = 6 * N_lm * tokens                # LM forward + backward, trained
          + 6 * N_proj * C * F               # projector forward + backward, trained
          + 2 * N_enc * C * 1500             # encoder forward only (frozen, no grad into it)

* ``tokens``: non-padding LM tokens of the batch (padding is not useful work).
* ``C``: audio chunks the model encodes (every chunk is a 30 s Whisper window, 1500 encoder
  frames whatever its audio length; a batch without audio still encodes one dummy chunk),
  ``F = 1500 / stack`` projector outputs per chunk.
* ``N_lm``: LM weights that multiply activations = all LM parameters minus the input
  embedding, plus the output projection (with tied embeddings: all LM parameters once).
* ``N_proj``: all projector parameters.
* ``N_enc``: encoder parameters minus the positional embedding, with the first conv counted
  twice (it runs over 3000 mel frames, the rest over 1500).
* Not counted: attention score/value products, norms, activations, the log-mel front end,
  the optimizer, and recomputation by gradient checkpointing (model FLOPs, not hardware
  FLOPs). ``mfu_with_attention`` also adds the attention products, PaLM-style (no causal
  discount): ``12 * L_lm * H_lm * sum_i(t_i ** 2)`` for the LM (``t_i`` a sample's
  non-padding length, forward + backward) and ``4 * L_enc * D_enc * 1500 ** 2 * C`` for the
  encoder (forward).

Launch (single process; it sets ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``,
``RANK=0``, ``WORLD_SIZE=1``, ``LOCAL_RANK=0`` itself when they are unset), or under
``torchrun --nproc_per_node 1``::

    python bench/train_gpu.py --shards shards/demo --batch-size 4 --json
    torchrun --nproc_per_node 1 bench/train_gpu.py --shards shards/demo --max-tokens 4000
    DS_ACCELERATOR=cpu python bench/train_gpu.py --preset tiny --shards shards/demo --steps 3 --warmup 1 --json

With ``--json`` the JSON object is the only thing written to stdout (everything else,
DeepSpeed's logging included, goes to stderr). ``peak_memory_gb`` and
``peak_reserved_gb`` are ``torch.cuda.max_memory_allocated()`` and
``torch.cuda.max_memory_reserved()`` in GiB (2**30 bytes), ``null`` on CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import socket
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

ENCODER_FRAMES = 1500  # Whisper encoder output frames per 30 s chunk

PRESETS = {
    "base": {
        "encoder": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20,
                    "encoder_ffn_dim": 5120, "num_mel_bins": 128},
        "lm": {"model_type": "llama", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
               "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 128256,
               "max_position_embeddings": 131072, "rope_theta": 500000.0, "tie_word_embeddings": True},
    },
    # llaso_train/configs/tiny_instruct.yaml
    "tiny": {
        "encoder": {"d_model": 64, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 128,
                    "num_mel_bins": 80},
        "lm": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 1000,
               "max_position_embeddings": 4096, "tie_word_embeddings": False},
    },
}

# Dense bf16 tensor-core peaks (TFLOP/s), matched in order against the device name.
PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),   # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="base")
    p.add_argument("--shards", default="shards/demo", help="converted shard folder (default shards/demo)")
    p.add_argument("--splits", nargs="+", default=["train"])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--batch-size", type=int, default=None, help="samples per batch (default 1)")
    size.add_argument("--max-tokens", type=int, default=None, help="dynamic batches under this padded token budget")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=32, help="micro-batches per optimizer step (default 32)")
    p.add_argument("--max-length", type=int, default=2048, help="longest rendered sample in tokens")
    p.add_argument("--max-chunks", type=int, default=20, help="30 s windows kept per clip")
    p.add_argument("--stack", type=int, default=1, help="encoder frames stacked per projector input")
    p.add_argument("--zero", type=int, default=3, choices=(0, 1, 2, 3), help="ZeRO stage (default 3)")
    p.add_argument("--bf16", choices=("auto", "true", "false"), default="auto", help="auto: on a GPU only")
    p.add_argument("--attn", choices=("auto", "sdpa", "eager", "flash_attention_2"), default="auto")
    p.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=True,
                   help="gradient checkpointing in the LM (default on, as the Base instruct preset)")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak dense bf16 TFLOP/s of the GPU (default from the device name)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object (only that on stdout)")
    args = p.parse_args(argv)
    if args.batch_size is None and args.max_tokens is None:
        args.batch_size = 1
    if args.steps < 1 or args.warmup < 0 or args.grad_accum < 1:
        p.error("--steps and --grad-accum must be >= 1 and --warmup >= 0")
    return args


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group() -> None:
    """A 1-rank group: torchrun's environment when present, else one set up here."""
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
            os.environ.setdefault(name, value)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_world_size() != 1:
        raise SystemExit(f"bench/train_gpu.py measures one GPU; got world size {dist.get_world_size()} "
                         "(use --nproc_per_node 1)")


def peak_tflops(requested: float | None) -> float | None:
    if requested is not None:
        return requested
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops (dense bf16 TFLOP/s)")


def flop_counts(model) -> dict:
    """Parameter counts for the MFU formula (see the module docstring); partitioned
    (ZeRO-3) parameters count their full size."""
    def numel(p) -> int:
        return getattr(p, "ds_numel", p.numel())

    lm, encoder, projector = model.lm, model.encoder, model.projector
    lm_total = sum(numel(p) for p in lm.parameters())  # shared (tied) tensors once
    n_lm = lm_total - numel(lm.get_input_embeddings().weight) + numel(lm.get_output_embeddings().weight)
    enc_total = sum(numel(p) for p in encoder.parameters())
    n_enc = enc_total - numel(encoder.embed_positions.weight) + numel(encoder.conv1.weight)
    n_proj = sum(numel(p) for p in projector.parameters())
    return {"lm_params": lm_total, "encoder_params": enc_total, "projector_params": n_proj,
            "n_lm": n_lm, "n_enc": n_enc, "n_proj": n_proj,
            "lm_layers": lm.config.num_hidden_layers, "lm_width": lm.config.hidden_size,
            "enc_layers": encoder.config.encoder_layers, "enc_width": encoder.config.d_model}


def step_flops(counts: dict, batch: dict, stack: int) -> tuple[float, float]:
    """(model FLOPs of the docstring formula, attention products) for one batch."""
    lengths = batch["attention_mask"].sum(dim=1).double()
    tokens = float(lengths.sum())
    chunks = max(int(batch["chunks"].shape[0]), 1)  # a batch without audio encodes one dummy chunk
    frames = chunks * ENCODER_FRAMES
    projected = chunks * (ENCODER_FRAMES // stack)
    flops = 6 * counts["n_lm"] * tokens + 6 * counts["n_proj"] * projected + 2 * counts["n_enc"] * frames
    attention = (12 * counts["lm_layers"] * counts["lm_width"] * float((lengths ** 2).sum())
                 + 4 * counts["enc_layers"] * counts["enc_width"] * ENCODER_FRAMES ** 2 * chunks)
    return flops, attention


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> dict:
    import deepspeed

    from llaso_data.stream.chat import ChatFormat, special_token_ids
    from llaso_train.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from llaso_train.dtypes import compute_dtype, resolve_bf16
    from llaso_train.model import build_model, pick_attention
    from llaso_train.recipe import (_micro_batches, _seed_everything, build_loader, build_tokenizer,
                                    deepspeed_config, freeze_for_stage, optimizer_step)

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    shards = Path(args.shards)
    if not (shards / "manifest.parquet").exists():
        raise SystemExit(f"{shards} is not a converted shard folder (no manifest.parquet); "
                         "run ./scripts/demo.sh, or llaso-shard synth + llaso-shard convert")
    peak = peak_tflops(args.peak_tflops)
    init_process_group()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    bf16 = resolve_bf16({"auto": "auto", "true": True, "false": False}[args.bf16], cuda)

    preset = PRESETS[args.preset]
    model_config = ModelConfig(encoder=dict(preset["encoder"]), lm=dict(preset["lm"]), tokenizer="tiny",
                               stack=args.stack, attn_implementation=args.attn,
                               gradient_checkpointing=args.grad_ckpt)
    data_config = DataConfig(shards=str(shards), splits=list(args.splits), batch_size=args.batch_size,
                             max_tokens=args.max_tokens, num_workers=args.num_workers,
                             max_length=args.max_length, max_chunks=args.max_chunks)
    config = TrainConfig(stage="instruct", model=model_config, data=data_config,
                         optim=OptimConfig(lr=args.lr), output_dir="runs/bench_train_gpu",
                         max_steps=args.warmup + args.steps, epochs=10**6, zero_stage=args.zero,
                         gradient_accumulation=args.grad_accum, bf16=bf16, seed=args.seed)
    _seed_everything(args.seed)
    attention = pick_attention(args.attn)

    fmt = ChatFormat()
    tokenizer = build_tokenizer("tiny", fmt)
    audio_pad = special_token_ids(tokenizer, fmt)[fmt.audio_pad]
    built = time.perf_counter()
    ds_config = deepspeed_config(config, bf16)
    with torch.device(device):  # random init on the GPU: same model, faster than on the CPU
        model = build_model(model_config, len(tokenizer), audio_pad, compute_dtype(bf16), ds_config)
    build_seconds = time.perf_counter() - built
    lm_attention = getattr(model.lm.config, "_attn_implementation", attention)
    freeze_for_stage(model, config)
    counts = flop_counts(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_count = sum(getattr(p, "ds_numel", p.numel()) for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=config.optim.lr, betas=config.optim.betas,
                                  weight_decay=config.optim.weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    loader = build_loader(config, tokenizer, fmt, 0, 1)
    if len(loader) == 0:
        raise SystemExit(f"no batches in {shards} for splits {args.splits} with this batching")

    stream = _micro_batches(loader, config.epochs)  # across epochs, as the recipe
    epoch_at_start = 0
    timed = []
    loss_value = float("nan")
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            epoch_at_start = loader.dataset.epoch
        _sync()
        start = time.perf_counter()
        batches = [next(stream) for _ in range(args.grad_accum)]
        got = time.perf_counter()
        loss_value = optimizer_step(engine, batches, device, world=1)
        _sync()
        end = time.perf_counter()
        if step < args.warmup:
            continue
        flops = attn_flops = 0.0
        for batch in batches:
            f, a = step_flops(counts, batch, args.stack)
            flops, attn_flops = flops + f, attn_flops + a
        masks = [batch["attention_mask"] for batch in batches]
        timed.append({"wait": got - start, "time": end - start, "flops": flops, "attn_flops": attn_flops,
                      "samples": sum(len(b["keys"]) for b in batches), "tokens": sum(int(m.sum()) for m in masks),
                      "padded": sum(m.numel() for m in masks), "seq_len": max(m.shape[1] for m in masks),
                      "chunks": sum(int(b["chunks"].shape[0]) for b in batches),
                      "audio_tokens": sum(int(b["chunk_tokens"].sum()) for b in batches)})
    restarts = loader.dataset.epoch - epoch_at_start

    total_time = sum(r["time"] for r in timed)
    total_flops = sum(r["flops"] for r in timed)
    total_attn = sum(r["attn_flops"] for r in timed)
    n = len(timed)

    def mean(key: str) -> float:
        return sum(r[key] for r in timed) / n

    achieved = total_flops / total_time / 1e12
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "preset": args.preset,
        "dims": {"encoder": preset["encoder"], "lm": preset["lm"],
                 "projector": {"type": "mlp2x_gelu", "stack": args.stack,
                               "in": preset["encoder"]["d_model"] * args.stack,
                               "out": preset["lm"]["hidden_size"]},
                 "lm_vocab_rows": model.lm.get_input_embeddings().weight.ds_shape[0]
                 if hasattr(model.lm.get_input_embeddings().weight, "ds_shape")
                 else model.lm.get_input_embeddings().weight.shape[0],
                 "tokenizer_vocab": len(tokenizer)},
        "params": {"encoder": counts["encoder_params"], "projector": counts["projector_params"],
                   "lm": counts["lm_params"], "trainable": trainable_count,
                   "flop_n_lm": counts["n_lm"], "flop_n_encoder": counts["n_enc"],
                   "flop_n_projector": counts["n_proj"]},
        "zero_stage": args.zero, "bf16": bf16, "grad_ckpt": args.grad_ckpt, "grad_accum": args.grad_accum,
        "attn_implementation": lm_attention,
        "shards": str(shards), "num_workers": args.num_workers,
        "batching": {"batch_size": args.batch_size} if args.batch_size else {"max_tokens": args.max_tokens},
        "step": {"mean_samples": round(mean("samples"), 3), "mean_tokens": round(mean("tokens"), 1),
                  "mean_padded_tokens": round(mean("padded"), 1),
                  "max_seq_len": max(r["seq_len"] for r in timed),
                  "mean_chunks": round(mean("chunks"), 3), "mean_audio_tokens": round(mean("audio_tokens"), 1),
                  "padding_fraction": round(1 - sum(r["tokens"] for r in timed) / sum(r["padded"] for r in timed), 4),
                  "batches_per_epoch": len(loader)},
        "warmup": args.warmup, "steps": n, "epoch_restarts": restarts,
        "tokens_per_s": round(sum(r["tokens"] for r in timed) / total_time, 1),
        "samples_per_s": round(sum(r["samples"] for r in timed) / total_time, 3),
        "step_time_s": round(total_time / n, 4),
        "compute_time_s": round((total_time - sum(r["wait"] for r in timed)) / n, 4),
        "data_wait_fraction": round(sum(r["wait"] for r in timed) / total_time, 4),
        "model_tflops_per_step": round(total_flops / n / 1e12, 4),
        "achieved_tflops": round(achieved, 3),
        "peak_tflops": peak,
        "mfu": round(achieved / peak, 4) if peak and cuda else None,
        "mfu_with_attention": round((total_flops + total_attn) / total_time / 1e12 / peak, 4)
        if peak and cuda else None,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "build_seconds": round(build_seconds, 1),
        "loss_last": loss_value if math.isfinite(loss_value) else None,
        "skipped": dict(loader.skipped),
    }
    return result


def _human(count: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.3f}{unit}"
    return str(count)


def print_table(r: dict, out) -> None:
    rows = [
        ("device", r["device_name"]),
        ("preset", f"{r['preset']}  (LM {_human(r['params']['lm'])}, encoder {_human(r['params']['encoder'])}, "
                   f"projector {_human(r['params']['projector'])}; trainable {_human(r['params']['trainable'])})"),
        ("engine", f"ZeRO-{r['zero_stage']}, bf16={r['bf16']}, grad_ckpt={r['grad_ckpt']}, "
                   f"{r['grad_accum']} micro-batches per step, "
                   f"attn={r['attn_implementation']}"),
        ("data", f"{r['shards']} {r['batching']}, {r['num_workers']} workers, "
                 f"{r['step']['batches_per_epoch']} batches/epoch, {r['epoch_restarts']} epoch restarts timed"),
        ("step (mean)", f"{r['step']['mean_samples']} samples, {r['step']['mean_tokens']} tokens "
                        f"({r['step']['mean_padded_tokens']} padded, max len {r['step']['max_seq_len']}), "
                        f"{r['step']['mean_chunks']} chunks, {r['step']['mean_audio_tokens']} audio tokens"),
        ("steps", f"{r['warmup']} warm-up + {r['steps']} timed"),
        ("step time", f"{r['step_time_s']:.4f} s (compute {r['compute_time_s']:.4f} s)"),
        ("tokens/s", f"{r['tokens_per_s']:,.1f}"),
        ("samples/s", f"{r['samples_per_s']:,.3f}"),
        ("data wait", f"{r['data_wait_fraction']:.2%}"),
        ("model TFLOP/step", f"{r['model_tflops_per_step']:.4f}  -> {r['achieved_tflops']:.3f} TFLOP/s"),
        ("MFU", "n/a (no GPU)" if r["mfu"] is None else
         f"{r['mfu']:.2%} of {r['peak_tflops']:.0f} TFLOP/s ({r['mfu_with_attention']:.2%} with attention)"),
        ("peak memory", "n/a (no GPU)" if r["peak_memory_gb"] is None else
         f"{r['peak_memory_gb']:.2f} GiB allocated, {r['peak_reserved_gb']:.2f} GiB reserved"),
        ("last loss", r["loss_last"]),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out, flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = sys.stdout
    if args.json:
        # Keep stdout for the JSON object alone: everything else (DeepSpeed's logger holds
        # sys.stdout, loader workers inherit fd 1) goes to stderr.
        sys.stdout.flush()
        out = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
    try:
        result = run(args)
        if args.json:
            print(json.dumps(result), file=out, flush=True)
        else:
            print_table(result, out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
