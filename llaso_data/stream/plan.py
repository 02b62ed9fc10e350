"""Epoch planning from metadata only: which samples each rank and worker serves, in which
batches, in which order. Reads ``manifest.parquet`` and the rows of ``index.parquet`` for the
shards one rank touches; never opens a tar.

Legend for shapes: ``E`` samples in the epoch (after mixing), ``R`` ranks, ``L = E // R``
samples per rank, ``K`` batches per rank, ``W`` loader workers per rank.

The plan of an epoch:

1. **Select** shards by split / modality / task (:class:`Selection`).
2. **Mix**: integer quotas per task that follow the weights exactly (largest remainder),
   :func:`task_quotas`. A task whose quota exceeds its size is up-sampled by whole passes
   plus a seeded remainder; one below its size is down-sampled without repetition.
3. **Spread** each task's quota over its shards (largest remainder, seeded ties), pick the
   positions inside each shard with a seeded permutation, order shards by a seeded
   per-epoch permutation. This gives one global sequence of ``E`` slots.
4. **Split** the sequence into ``R`` contiguous, equally long rank ranges (the remainder is
   dropped, or filled by wrapping around when ``remainder="pad"``).
5. **Shuffle** inside each rank by seeded permutations of consecutive blocks of
   ``shuffle_block`` slots (a bounded shuffle buffer whose state at any batch can be
   recomputed without replaying the epoch: exact resume costs no I/O).
6. **Batch**: ``batch_size`` consecutive slots, or dynamic batches under a token budget
   with length buckets inside each block. Every rank ends with the same ``K``: equal by
   construction for fixed batches; for dynamic batches the ranks agree on the smallest
   count (``agree``) and drop the rest, which the plan reports.
7. **Workers**: from the first batch ``s`` still to serve, batch ``j`` goes to worker
   ``(j - s) % W``, the order in which a ``torch.utils.data.DataLoader`` collects them.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow.parquet as pq

from llaso_data.manifest import INDEX_FILE, read_manifest


def seeded_rng(*parts: object) -> np.random.Generator:
    """A numpy generator seeded by a stable hash of ``parts`` (not Python's ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


@dataclass(frozen=True)
class Selection:
    """Which strata to use; ``None`` means all."""

    splits: tuple[str, ...] | None = ("train",)
    modalities: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None

    def keeps(self, split: str, modality: str, task: str) -> bool:
        return ((self.splits is None or split in self.splits)
                and (self.modalities is None or modality in self.modalities)
                and (self.tasks is None or task in self.tasks))


@dataclass(frozen=True)
class Mixing:
    """How tasks are weighted in an epoch.

    ``mode``: ``natural`` (proportional to size), ``uniform`` (equal per task),
    ``temperature`` (size ** (1 / temperature), normalised) or ``explicit`` (``weights`` by
    task; tasks absent from it get weight 0). ``epoch_samples`` defaults to the number of
    selected samples.
    """

    mode: str = "natural"
    temperature: float = 1.0
    weights: dict[str, float] | None = None
    epoch_samples: int | None = None

    def __post_init__(self):
        if self.mode not in ("natural", "uniform", "temperature", "explicit"):
            raise ValueError(f"unknown mixing mode {self.mode!r}")
        if self.mode == "explicit" and not self.weights:
            raise ValueError("explicit mixing needs weights")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")


@dataclass(frozen=True)
class Batching:
    """Fixed ``batch_size`` samples, or (``max_tokens`` set) dynamic batches whose padded
    cost ``len(batch) * max(sample cost)`` stays within ``max_tokens``, where a sample's
    cost is its audio tokens (``audio_tokens_per_second`` x seconds) plus its text tokens
    (text characters / ``chars_per_token``)."""

    batch_size: int | None = 8
    max_tokens: int | None = None
    audio_tokens_per_second: float = 25.0
    chars_per_token: float = 4.0
    remainder: str = "drop"

    def __post_init__(self):
        if (self.batch_size is None) == (self.max_tokens is None):
            raise ValueError("set exactly one of batch_size and max_tokens")
        if any(v is not None and v < 1 for v in (self.batch_size, self.max_tokens)):
            raise ValueError("batch_size and max_tokens must be >= 1")
        if self.audio_tokens_per_second <= 0 or self.chars_per_token <= 0:
            raise ValueError("audio_tokens_per_second and chars_per_token must be positive")
        if self.remainder not in ("drop", "pad"):
            raise ValueError("remainder must be 'drop' or 'pad'")

    @property
    def dynamic(self) -> bool:
        return self.max_tokens is not None


@dataclass(frozen=True)
class PlanConfig:
    selection: Selection = Selection()
    mixing: Mixing = Mixing()
    batching: Batching = Batching()
    seed: int = 0
    shuffle_block: int = 1024


@dataclass
class ShardTable:
    """The manifest rows of the selected shards, as arrays (length S), sorted by name."""

    names: list[str]
    tasks: np.ndarray          # (S,) object, task per shard
    sizes: np.ndarray          # (S,) int64, samples per shard
    first_rows: np.ndarray     # (S,) int64, row of the shard's first sample in index.parquet

    @classmethod
    def load(cls, out: Path, selection: Selection) -> "ShardTable":
        rows = read_manifest(out).select(["shard", "split", "modality", "task", "num_samples"]).to_pylist()
        first_row = 0  # the index lists samples grouped by shard in manifest order
        for row in rows:
            row["first_row"], first_row = first_row, first_row + row["num_samples"]
        kept = sorted((r for r in rows if selection.keeps(r["split"], r["modality"], r["task"])),
                      key=lambda r: r["shard"])
        if not kept:
            raise ValueError(f"{out}: no shard matches {selection}")
        return cls([r["shard"] for r in kept], np.array([r["task"] for r in kept], dtype=object),
                   np.array([r["num_samples"] for r in kept], dtype=np.int64),
                   np.array([r["first_row"] for r in kept], dtype=np.int64))


def task_quotas(sizes: dict[str, int], mixing: Mixing) -> dict[str, int]:
    """Samples per task in one epoch; sums exactly to the epoch size.

    >>> task_quotas({"ASR": 90, "SGC": 10}, Mixing("uniform"))
    {'ASR': 50, 'SGC': 50}
    """
    tasks = sorted(sizes)
    counts = np.array([sizes[t] for t in tasks], dtype=np.float64)
    if mixing.mode == "natural":
        weights = counts
    elif mixing.mode == "uniform":
        weights = np.ones_like(counts)
    elif mixing.mode == "temperature":
        weights = counts ** (1.0 / mixing.temperature)
    else:
        weights = np.array([mixing.weights.get(t, 0.0) for t in tasks], dtype=np.float64)
    if weights.sum() <= 0:
        raise ValueError("mixing weights sum to zero over the selected tasks")
    total = mixing.epoch_samples if mixing.epoch_samples is not None else int(counts.sum())
    return dict(zip(tasks, _largest_remainder(weights / weights.sum() * total, total).tolist()))


def _largest_remainder(exact: np.ndarray, total: int, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Integers summing to ``total``, each the floor or ceiling of ``exact``."""
    floors = np.floor(exact).astype(np.int64)
    missing = int(total - floors.sum())
    if missing:
        fraction = exact - floors
        order = np.lexsort((tiebreak if tiebreak is not None else np.arange(len(exact)), -fraction))
        floors[order[:missing]] += 1
    return floors


@dataclass
class RankPlan:
    """One rank's epoch.

    ``shard_names`` are indexed by ``shard``; ``shard`` (int32), ``offset`` (int64, byte
    offset in the tar), ``seconds`` (float32) and ``chars`` (int32) are per slot (length L);
    ``batches`` holds, for each of the K batches, the slot numbers (int64) it serves, in
    order: a (K, batch_size) array for fixed batches, a list of arrays for dynamic ones.
    ``dropped_batches`` counts dynamic batches dropped to match the other ranks;
    ``padded_slots`` counts slots added by ``remainder="pad"``.
    """

    epoch: int
    rank: int
    world_size: int
    shard_names: list[str]
    shard: np.ndarray
    offset: np.ndarray
    seconds: np.ndarray
    chars: np.ndarray
    batches: np.ndarray | list[np.ndarray] = field(default_factory=list)
    dropped_batches: int = 0
    padded_slots: int = 0

    def worker_batches(self, worker: int, num_workers: int, start: int = 0) -> range:
        """Batch numbers worker ``worker`` of ``num_workers`` serves from batch ``start`` on:
        ``start + worker``, ``start + worker + W``, ... (a DataLoader collects from workers
        0, 1, ..., W-1 in turn, so this is exactly the planned order)."""
        return range(start + worker, len(self.batches), max(num_workers, 1))


def _global_slots(shards: ShardTable, config: PlanConfig, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Shard order and take counts: returns (shard ids in epoch order, slots per shard)."""
    task_sizes: dict[str, int] = {}
    for task, size in zip(shards.tasks, shards.sizes):
        task_sizes[task] = task_sizes.get(task, 0) + int(size)
    quotas = task_quotas(task_sizes, config.mixing)
    takes = np.zeros(len(shards.names), dtype=np.int64)
    for task, quota in quotas.items():
        members = np.flatnonzero(shards.tasks == task)
        sizes = shards.sizes[members]
        passes, rest = divmod(quota, int(sizes.sum()))
        tiebreak = seeded_rng(config.seed, epoch, "spread", task).permutation(len(members))
        takes[members] = passes * sizes + _largest_remainder(sizes / sizes.sum() * rest, rest, tiebreak)
    order = seeded_rng(config.seed, epoch, "shard-order").permutation(len(shards.names))
    order = order[takes[order] > 0]
    return order, takes


def _positions_in_shard(size: int, take: int, seed: int, epoch: int, name: str) -> np.ndarray:
    """The ``take`` positions (0-based sample numbers) served from a shard of ``size``:
    whole passes, then a seeded subset; ascending within each pass (sequential reads)."""
    passes, rest = divmod(take, size)
    whole = np.tile(np.arange(size, dtype=np.int64), passes)
    if not rest:
        return whole
    chosen = np.sort(seeded_rng(seed, epoch, "pick", name).permutation(size)[:rest])
    return np.concatenate([whole, chosen]).astype(np.int64)


def _rank_range(total: int, world_size: int, rank: int, batching: Batching) -> tuple[int, int, int]:
    """(start, length, padded) of a rank's slots in the global sequence."""
    unit = batching.batch_size if not batching.dynamic else 1
    per_rank = total // (world_size * unit) * unit
    if batching.remainder == "pad" and per_rank * world_size < total:
        per_rank += unit
    start = rank * per_rank
    padded = max(0, start + per_rank - total) - max(0, start - total)
    return start, per_rank, min(padded, per_rank)


def plan_rank(out: Path, config: PlanConfig, epoch: int, world_size: int, rank: int,
              shards: ShardTable | None = None,
              agree: Callable[[int], int] | None = None) -> RankPlan:
    """The epoch plan of one rank. ``agree`` maps this rank's dynamic batch count to the
    count all ranks use (the minimum over ranks; e.g. an all-reduce MIN); without it the
    rank keeps its own count, which is only safe with one rank."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    shards = shards or ShardTable.load(out, config.selection)
    order, takes = _global_slots(shards, config, epoch)
    ends = np.cumsum(takes[order])
    total = int(ends[-1]) if len(ends) else 0
    start, length, padded = _rank_range(total, world_size, rank, config.batching)
    if length == 0:
        raise ValueError(f"epoch of {total} samples is too small for {world_size} ranks")
    pieces = _rank_pieces(ends, start, length)
    local = {}  # position in `order` -> number of the shard in this plan, by first use
    for position, _, _ in pieces:
        local.setdefault(position, len(local))
    touched = order[list(local)]
    names = [shards.names[i] for i in touched]
    rows = _read_index_rows(out, names, shards.first_rows[touched], shards.sizes[touched])
    slot_shard = np.empty(length, np.int32)
    slot_offset = np.empty(length, np.int64)
    slot_seconds = np.empty(length, np.float32)
    slot_chars = np.empty(length, np.int32)
    cursor = 0
    for position, first, count in pieces:
        number = local[position]
        shard_id = order[position]
        picked = _positions_in_shard(int(shards.sizes[shard_id]), int(takes[shard_id]), config.seed, epoch,
                                     shards.names[shard_id])[first:first + count]
        offset, seconds, chars = rows[number]
        slots = slice(cursor, cursor + count)
        slot_shard[slots] = number
        slot_offset[slots] = offset[picked]
        slot_seconds[slots] = seconds[picked]
        slot_chars[slots] = chars[picked]
        cursor += count
    plan = RankPlan(epoch, rank, world_size, names, slot_shard, slot_offset, slot_seconds, slot_chars,
                    padded_slots=padded)
    emission = _block_shuffle(length, config.shuffle_block, config.seed, epoch, rank)
    if config.batching.dynamic:
        batches = _dynamic_batches(emission, _slot_costs(plan, config.batching), config, epoch, rank)
        count = agree(len(batches)) if agree else len(batches)
        if count > len(batches):
            raise ValueError(f"agreed batch count {count} exceeds this rank's {len(batches)}")
        plan.dropped_batches = len(batches) - count
        plan.batches = batches[:count]
    else:
        plan.batches = emission.reshape(-1, config.batching.batch_size)  # length is a multiple
    return plan


def _rank_pieces(ends: np.ndarray, start: int, length: int) -> list[tuple[int, int, int]]:
    """The global slots ``start .. start + length - 1`` (wrapping past the end: padding) as
    runs within one shard: ``(position in the shard order, first take, count)``, in slot order.
    ``ends`` are the cumulative takes along the shard order."""
    total = int(ends[-1])
    pieces = []
    while length:
        slot = start % total
        position = int(np.searchsorted(ends, slot, side="right"))
        first = slot - (int(ends[position - 1]) if position else 0)
        count = min(int(ends[position]) - slot, length)
        pieces.append((position, first, count))
        start, length = start + count, length - count
    return pieces


def _read_index_rows(out: Path, names: Sequence[str], first_rows: np.ndarray, sizes: np.ndarray
                     ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(offset, audio_seconds, text_chars)`` rows of each named shard, read from the row
    range the manifest gives it (``first_rows``, ``sizes``). Only the row groups holding a
    range are decoded, one at a time, and of them only these columns and ``shard``, which is
    checked at both ends of every range: an index that does not list the shards' samples
    where the manifest says raises ValueError."""
    path = out / INDEX_FILE
    index = pq.ParquetFile(path, read_dictionary=["shard"])
    metadata = index.metadata
    group_starts = np.cumsum([0] + [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])
    lasts = first_rows + sizes  # one past each range's last row
    if lasts.max(initial=0) > group_starts[-1]:
        raise ValueError(f"{path} has {group_starts[-1]} rows; the manifest lists more samples")
    bases = np.concatenate([[0], np.cumsum(sizes)])  # where each shard's rows go in the output
    offset = np.empty(bases[-1], np.int64)
    seconds = np.empty(bases[-1], np.float32)
    chars = np.empty(bases[-1], np.int32)
    ranges = np.argsort(first_rows, kind="stable")
    wanted = np.zeros(metadata.num_row_groups, bool)
    for r in ranges:
        wanted[np.searchsorted(group_starts, first_rows[r], "right") - 1:np.searchsorted(group_starts, lasts[r])] = True
    unfinished = 0  # ranges[unfinished:] still have rows to read
    for group in np.flatnonzero(wanted):
        begin, end = int(group_starts[group]), int(group_starts[group + 1])
        table = index.read_row_group(int(group), columns=["shard", "offset", "audio_seconds", "text_chars"],
                                     use_threads=False)
        # Arrow to numpy through DLPack (no copy; refuses nulls, which the index never holds),
        # not to_numpy(), which imports pandas: ~0.4 s and ~40 MB in every rank.
        shard = table["shard"].combine_chunks()
        codes, labels = np.from_dlpack(shard.indices), shard.dictionary.to_pylist()
        columns = [np.from_dlpack(table[c].combine_chunks()) for c in ("offset", "audio_seconds", "text_chars")]
        for r in ranges[unfinished:]:
            low, high = int(first_rows[r]), int(lasts[r])
            if low >= end:
                break
            a, b = max(low, begin), min(high, end)  # the range's rows inside this group
            for row in (a, b - 1):
                if labels[codes[row - begin]] != names[r]:
                    raise ValueError(f"{path}: row {row} is not a sample of {names[r]}, whose rows the manifest "
                                     f"puts at {low}..{high - 1} (the index must list samples grouped by shard, "
                                     "in manifest order)")
            into = slice(bases[r] + a - low, bases[r] + b - low)
            offset[into], seconds[into], chars[into] = (column[a - begin:b - begin] for column in columns)
        while unfinished < len(ranges) and lasts[ranges[unfinished]] <= end:
            unfinished += 1
    return [(offset[bases[r]:bases[r + 1]], seconds[bases[r]:bases[r + 1]], chars[bases[r]:bases[r + 1]])
            for r in range(len(names))]


def _block_shuffle(length: int, block: int, seed: int, epoch: int, rank: int) -> np.ndarray:
    """Slot numbers ``0..length-1`` permuted inside consecutive blocks of ``block``."""
    emission = np.empty(length, np.int64)
    for number, begin in enumerate(range(0, length, block)):
        end = min(begin + block, length)
        emission[begin:end] = seeded_rng(seed, epoch, rank, "block", number).permutation(end - begin)
        emission[begin:end] += begin
    return emission


def _slot_costs(plan: RankPlan, batching: Batching) -> np.ndarray:
    """Token cost of each slot: audio tokens plus text tokens, (L,) float64."""
    return (plan.seconds.astype(np.float64) * batching.audio_tokens_per_second
            + plan.chars / batching.chars_per_token)


def _dynamic_batches(emission: np.ndarray, costs: np.ndarray, config: PlanConfig, epoch: int,
                     rank: int) -> list[np.ndarray]:
    """Length-bucketed batches under the padded-cost budget, built block by block.

    Inside a block, slots are sorted by cost and cut greedily: a batch starting at sorted
    position ``s`` takes ``s`` and then each next slot ``j`` while ``cost[j] * (j - s + 1)``
    (its padded cost, the slot being the longest so far) stays within the budget. That
    product grows with ``j``, so each cut is a binary search, not a walk over the slots."""
    budget = config.batching.max_tokens
    block = config.shuffle_block
    batches: list[np.ndarray] = []
    for number, begin in enumerate(range(0, len(emission), block)):
        slots = emission[begin:begin + block]
        order = np.argsort(costs[slots], kind="stable")
        slots, sorted_costs = slots[order], costs[slots][order].tolist()
        block_batches, start = [], 0
        while start < len(slots):
            end = bisect.bisect_right(range(start + 1, len(slots)), budget,
                                      key=lambda j: sorted_costs[j] * (j - start + 1)) + start + 1
            block_batches.append(slots[start:end])
            start = end
        order = seeded_rng(config.seed, epoch, rank, "batches", number).permutation(len(block_batches))
        batches.extend(block_batches[i] for i in order)
    return batches


def padding_ratio(plan: RankPlan, batching: Batching) -> float:
    """Share of padded positions over all batches: ``1 - sum(cost) / sum(len * max cost)``."""
    costs = _slot_costs(plan, batching)
    used = sum(float(costs[b].sum()) for b in plan.batches)
    padded = sum(float(costs[b].max()) * len(b) for b in plan.batches if len(b))
    return 1.0 - used / padded if padded else 0.0
