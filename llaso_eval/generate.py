"""Inference over an eval corpus's shards with a model exported by ``llaso_train``.

Every rank streams its share of the selected shards (the same planner and loader as
training: equal batches per rank, so ZeRO-3's collective parameter gathers line up), renders
each conversation up to an open assistant header, generates greedily and writes its answers
to a part file. Rank 0 then writes the predictions in LLaSO's format, one JSON array per
source annotation file, mirroring the corpus layout (``OUT/LLaSO-Eval/text_audio/ASR_test.json``):
each record is the original record (``voice``, ``conversations`` with ``<audio>``
placeholders, its provenance fields) plus ``key`` and the model's ``answer``, in source order.
``OUT/generation.json`` accounts for every selected sample: predicted, or listed as missing.

Launch: ``torchrun --nproc_per_node N -m llaso_eval generate --model EXPORT --shards DIR --out DIR``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from llaso_data.stream.chat import renderer, special_token_ids
from llaso_data.manifest import open_index
from llaso_data.stream.plan import Batching, PlanConfig, Selection, Source
from llaso_data.records import Sample
from llaso_data.stream.loader import ShardStream, StreamConfig, StreamLoader

from .predictions import GENERATION_SUMMARY

PARTS_DIR = ".parts"
ROLE_NAMES = {"user": "human", "assistant": "gpt"}


@dataclass(frozen=True)
class GenerateOptions:
    """One generation run.

    ``model``: a ``llaso_train`` export directory; ``shards``: a converted corpus (a folder
    or an ``s3://`` prefix); ``out``: a
    new or empty predictions directory; ``splits``/``modalities``/``tasks``: which strata
    (``None`` = all); ``batch_size`` samples per rank and step; ``max_new_tokens`` per
    answer; ``zero_stage`` 3 partitions the weights over the ranks (ZeRO-3 inference), 0
    keeps a full copy on each; ``bf16``: ``auto`` = on a GPU only.
    """

    model: Path
    shards: Path | str
    out: Path
    splits: tuple[str, ...] | None = ("test",)
    modalities: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None
    batch_size: int = 8
    max_new_tokens: int = 128
    num_workers: int = 1
    zero_stage: int = 3
    bf16: str | bool = "auto"
    dist_timeout_s: float = 1800.0

    def __post_init__(self):
        if not self.dist_timeout_s > 0:
            raise ValueError("dist_timeout_s must be > 0 (seconds a rank waits in a collective)")
        if self.zero_stage not in (0, 3):
            raise ValueError("zero_stage must be 0 (a full model per rank) or 3 (partitioned)")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")

    @property
    def selection(self) -> Selection:
        return Selection(self.splits, self.modalities, self.tasks)


def left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk_sample: torch.Tensor,
               chunk_start: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompts (B, T) -> left-padded ones, as batched generation needs; the
    audio spans move with their tokens: ``chunk_start`` (C,) of chunk ``i`` shifts by its
    sample ``chunk_sample[i]``'s padding. Returns ``(input_ids, attention_mask, chunk_start)``."""
    lengths = attention_mask.sum(dim=1)                                   # (B,)
    shift = input_ids.shape[1] - lengths                                  # (B,)
    columns = torch.arange(input_ids.shape[1])[None, :]                   # (1, T)
    source = (columns - shift[:, None]).clamp(min=0)                      # (B, T)
    keep = columns >= shift[:, None]
    ids = torch.where(keep, input_ids.gather(1, source), torch.full_like(input_ids, pad_id))
    return ids, keep.to(attention_mask.dtype), chunk_start + shift[chunk_sample]


def llaso_record(sample: Sample, answer: str) -> dict:
    """The sample as a LLaSO record (provenance fields, ``voice``, ``conversations`` with the
    gold answer and ``<audio>`` placeholders) plus its ``key`` and the model's ``answer``.
    Voice paths are the normalised ones (POSIX separators)."""
    conversations = [{"from": ROLE_NAMES[turn.role],
                      "value": "".join("<audio>" if isinstance(piece, int) else piece
                                       for piece in turn.segments())}
                     for turn in sample.turns]
    record = dict(sample.provenance)
    if sample.system is not None:
        record["instruction"] = sample.system
    record.update({"voice": list(sample.audio), "conversations": conversations,
                   "key": sample.key, "answer": answer})
    return record


def expected_samples(shards: Path | str, selection: Selection) -> dict[str, tuple[str, int]]:
    """``{key: (source, ordinal)}`` of every sample the selection covers, from the index of
    ``shards`` (a folder or an ``s3://`` prefix)."""
    with open_index(shards) as index:
        table = index.read(columns=["key", "split", "modality", "task", "source", "ordinal"])
    return {row["key"]: (row["source"], row["ordinal"]) for row in table.to_pylist()
            if selection.keeps(row["split"], row["modality"], row["task"])}


def merge_parts(parts: list[Path], out: Path, expected: dict[str, tuple[str, int]], skipped: dict) -> dict:
    """Write one LLaSO-format JSON array per source file under ``out`` from the ranks' part
    files (JSON lines ``{"source", "ordinal", "record"}``; a key seen twice, from the
    planner's padding, is written once) and return the summary written to ``generation.json``."""
    by_source: dict[str, dict[int, dict]] = defaultdict(dict)
    for part in parts:
        with open(part, encoding="utf-8") as lines:
            for line in lines:
                row = json.loads(line)
                by_source[row["source"]][row["ordinal"]] = row["record"]
    written = {}
    for source, records in sorted(by_source.items()):
        target = out / source
        target.parent.mkdir(parents=True, exist_ok=True)
        ordered = [records[ordinal] for ordinal in sorted(records)]
        target.write_text(json.dumps(ordered, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        written[source] = len(ordered)
    predicted = {record["key"] for records in by_source.values() for record in records.values()}
    missing = sorted(set(expected) - predicted)
    summary = {"samples": len(expected), "predicted": len(predicted & set(expected)),
               "missing": [{"key": key, "source": expected[key][0], "ordinal": expected[key][1]}
                           for key in missing],
               "skipped_by_reason": skipped, "files": written}
    (out / GENERATION_SUMMARY).write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    return summary


def generate(options: GenerateOptions) -> dict | None:
    """Run under torchrun (or alone: world size 1). Returns the summary on rank 0, else None."""
    import torch.distributed as dist

    from llaso_train.distributed import fail_on_timeout, init_distributed, shutdown_distributed

    init_distributed(options.dist_timeout_s)
    rank, world = dist.get_rank(), dist.get_world_size()
    with fail_on_timeout("llaso_eval generate", rank, world, options.dist_timeout_s):
        summary = _generate(options, rank, world)
        shutdown_distributed()
    return summary


def _generate(options: GenerateOptions, rank: int, world: int) -> dict | None:
    import deepspeed
    import torch.distributed as dist

    from llaso_train.dtypes import compute_dtype, resolve_bf16
    from llaso_train.model import load_exported

    device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available()
              else torch.device("cpu"))
    bf16 = resolve_bf16(options.bf16)
    parts = options.out / PARTS_DIR
    if options.out.exists() and any(options.out.iterdir()):  # every rank sees it and stops
        raise FileExistsError(f"{options.out}: not empty; choose a new predictions directory")
    dist.barrier()
    if rank == 0:
        parts.mkdir(parents=True)
    dist.barrier()

    model, tokenizer, settings = load_exported(options.model, dtype=compute_dtype(bf16))  # whatever it was saved in
    fmt = settings.fmt
    stop_ids = [special_token_ids(tokenizer, fmt)[fmt.end_of_turn]]
    if options.zero_stage == 3:
        engine, *_ = deepspeed.initialize(model=model, config={
            "train_micro_batch_size_per_gpu": options.batch_size,
            "zero_optimization": {"stage": 3}, "bf16": {"enabled": bf16}})
        model = engine.module
    else:
        model = model.to(device)
    model.eval()

    plan = PlanConfig([Source(options.shards, options.selection)],
                      batching=Batching(batch_size=options.batch_size, remainder="pad"))
    stream = ShardStream(StreamConfig(plan, settings.waveform), rank, world,
                         render=renderer(tokenizer, fmt, settings.max_length, prompt_only=True),
                         pad_id=tokenizer.pad_token_id)
    loader = StreamLoader(stream, num_workers=options.num_workers)
    with open(parts / f"rank-{rank:05d}.jsonl", "w", encoding="utf-8") as part:
        for batch in loader:
            answers = _answer(model, tokenizer, batch, device, options, stop_ids,
                              synced=options.zero_stage == 3 and world > 1)
            for sample, answer in zip(batch["samples"], answers):
                part.write(json.dumps({"source": sample.source, "ordinal": sample.ordinal,
                                       "record": llaso_record(sample, answer)}, ensure_ascii=False) + "\n")
    skipped = [None] * world
    dist.all_gather_object(skipped, loader.skipped)
    dist.barrier()
    if rank != 0:
        return None
    totals: dict[str, int] = defaultdict(int)
    for counts in skipped:
        for reason, count in counts.items():
            totals[reason] += count
    summary = merge_parts(sorted(parts.glob("rank-*.jsonl")), options.out,
                          expected_samples(options.shards, options.selection), dict(totals))
    shutil.rmtree(parts)
    return summary


def _answer(model, tokenizer, batch: dict, device: torch.device, options: GenerateOptions,
            stop_ids: list[int], synced: bool) -> list[str]:
    """Decoded greedy answers of one batch, stripped; a batch of no samples still steps (an
    empty prompt per rank would desynchronise ZeRO-3), with a one-token dummy prompt."""
    pad_id = tokenizer.pad_token_id
    if batch["input_ids"].shape[0] == 0:
        batch = dict(batch, input_ids=torch.full((1, 1), pad_id), attention_mask=torch.ones((1, 1), dtype=torch.int64))
    ids, mask, starts = left_align(batch["input_ids"], batch["attention_mask"], batch["chunk_sample"],
                                   batch["chunk_start"], pad_id)
    new = model.generate(ids.to(device), mask.to(device), batch["chunks"].to(device),
                         batch["chunk_lengths"].to(device), batch["chunk_sample"].to(device),
                         starts.to(device), batch["chunk_tokens"].to(device),
                         max_new_tokens=options.max_new_tokens, stop_ids=stop_ids, pad_id=pad_id,
                         synced_gpus=synced)
    texts = tokenizer.batch_decode(new.cpu(), skip_special_tokens=True)
    return [text.strip() for text in texts[:len(batch["samples"])]]
