"""Epoch planning from metadata only: which samples each rank and worker serves, in which
batches, in which order. Reads each source's ``manifest.parquet`` and the rows of its
``index.parquet`` for the shards one rank touches; never opens a tar.

Legend for shapes: ``E`` samples in the epoch (after mixing), ``R`` ranks, ``L = E // R``
samples per rank, ``K`` batches per rank, ``W`` loader workers per rank, ``G`` strata.

The plan of an epoch:

1. **Select** shards of each :class:`Source` (a converted root, its :class:`Selection` and
   its weight). A stratum is a (source, task) pair.
2. **Mix**: integer quotas per stratum that follow the weights exactly (largest remainder),
   :func:`stratum_quotas`: the mixing mode's weight of the stratum times its source's
   weight. A stratum whose quota exceeds its size is up-sampled by whole passes plus a
   seeded remainder; one below its size is down-sampled without repetition. Each quota is
   spread over the stratum's shards (largest remainder, seeded ties), positions inside a
   shard picked by a seeded subset, ascending.
3. **Interleave** the strata at sample granularity: item ``i`` of a stratum with quota
   ``q`` and seeded phase ``u`` in ``[0, 1)`` sits at ``(i + u) / q`` on the unit interval,
   and the epoch is all items in that order (a weighted low-discrepancy interleave: any
   ``n`` consecutive slots hold each stratum ``n * q / E`` times, +-1). The order is cut
   into frames of ~1,024 slots whose boundaries are exact integer counts, so a rank finds
   its range without materialising the epoch (:func:`_interleave`).
4. **Rotate** inside a stratum: its items are drawn round-robin from a window of
   ``shard_window`` shards (in a seeded per-epoch order); an exhausted shard is replaced by
   the stratum's next one. A shard is read in ascending offsets, and a stratum has at most
   ``shard_window`` shards in use at any moment (:func:`_window_items`).
5. **Split** the sequence into ``R`` contiguous, equally long rank ranges (the remainder is
   dropped, or filled by wrapping around when ``remainder="pad"``).
6. **Fit**: a slot whose sample cannot fit ``Batching.max_length`` (estimated from the
   index: audio tokens + text tokens) is dropped and replaced by the nearest kept slot of
   the same stratum in the rank (declared in ``RankPlan.dropped`` / ``filled_slots``), so
   quotas per stratum, batch counts and batch sizes stay as planned.
7. **Shuffle** inside each rank in blocks of ``shuffle_block`` slots: a seeded permutation
   of which stratum each position of the block serves, each stratum keeping its own order
   (reads stay ascending within a shard). The state at any batch is computable: exact
   resume costs no replay and no I/O.
8. **Batch**: ``batch_size`` consecutive slots, or dynamic batches under a token budget
   with length buckets inside each block. Every rank ends with the same ``K``: equal by
   construction for fixed batches; for dynamic batches the ranks agree on the smallest
   count (``agree``, required with more than one rank) and drop the rest, which the plan
   reports.
9. **Workers**: from the first batch ``s`` still to serve, batch ``j`` goes to worker
   ``(j - s) % W``, the order in which a ``torch.utils.data.DataLoader`` collects them.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow.parquet as pq

from llaso_data.manifest import INDEX_FILE, open_index, read_manifest
from llaso_data.storage import join

FRAME_SLOTS = 1024      # mean slots per interleave frame
PHASE_SCALE = 1 << 16   # phases are integers / PHASE_SCALE


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
class Source:
    """One converted corpus of a stream: ``root`` (the folder ``llaso-shard convert`` wrote),
    which of its strata to use, and ``weight``, which multiplies the mixing weight of each of
    its strata. ``name`` (default: the root's folder name) labels its strata and, in a stream
    of several sources, prefixes its keys (``name/key``). :meth:`path` is the one place a
    shard's location is formed."""

    root: str | Path
    selection: Selection = Selection()
    weight: float = 1.0
    name: str | None = None

    def __post_init__(self):
        if not self.weight > 0:
            raise ValueError(f"source {self.root}: weight must be positive")
        name = self.name if self.name is not None else Path(self.root).name
        if not name or "/" in name:
            raise ValueError(f"source {self.root}: name {name!r} must be non-empty, without '/'")
        object.__setattr__(self, "name", name)

    def path(self, relative: str) -> str | Path:
        """Where the source's file ``relative`` (a shard or a table) lives: a Path under a
        local root, a URL under an object-store root (``s3://bucket/prefix``)."""
        return join(self.root, relative)


@dataclass(frozen=True)
class Mixing:
    """How strata are weighted in an epoch.

    ``mode``: ``natural`` (proportional to size), ``uniform`` (equal per stratum),
    ``temperature`` (size ** (1 / temperature), normalised) or ``explicit`` (``weights`` by
    task; tasks absent from it get weight 0). Each stratum's weight is then multiplied by
    its source's weight. ``epoch_samples`` defaults to the number of selected samples.
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
        if self.epoch_samples is not None and self.epoch_samples < 1:
            raise ValueError("epoch_samples must be >= 1")


@dataclass(frozen=True)
class Batching:
    """Fixed ``batch_size`` samples, or (``max_tokens`` set) dynamic batches whose padded
    cost ``len(batch) * max(sample cost)`` stays within ``max_tokens``, where a sample's
    cost is its audio tokens (``audio_tokens_per_second`` x seconds) plus its text tokens
    (text characters / ``chars_per_token``). ``max_length`` (tokens): a sample whose cost,
    plus ``template_tokens`` (what the chat template adds to every sample: system prompt,
    turn headers, end-of-turn tokens), plus ``clip_tokens`` per clip (1 for window rounding,
    plus the clip's audio delimiters), exceeds it is dropped at planning
    (``llaso_data.stream.chat.template_overhead`` measures both for a tokenizer)."""

    batch_size: int | None = 8
    max_tokens: int | None = None
    audio_tokens_per_second: float = 25.0
    chars_per_token: float = 4.0
    remainder: str = "drop"
    max_length: int | None = None
    template_tokens: int = 0
    clip_tokens: int = 1

    def __post_init__(self):
        if (self.batch_size is None) == (self.max_tokens is None):
            raise ValueError("set exactly one of batch_size and max_tokens")
        if any(v is not None and v < 1 for v in (self.batch_size, self.max_tokens, self.max_length)):
            raise ValueError("batch_size, max_tokens and max_length must be >= 1")
        if self.template_tokens < 0 or self.clip_tokens < 0:
            raise ValueError("template_tokens and clip_tokens must be >= 0")
        if self.audio_tokens_per_second <= 0 or self.chars_per_token <= 0:
            raise ValueError("audio_tokens_per_second and chars_per_token must be positive")
        if self.remainder not in ("drop", "pad"):
            raise ValueError("remainder must be 'drop' or 'pad'")

    @property
    def dynamic(self) -> bool:
        return self.max_tokens is not None

    def costs(self, seconds: np.ndarray, chars: np.ndarray) -> np.ndarray:
        """Token cost per sample (float64, same shape): audio tokens plus text tokens."""
        return seconds.astype(np.float64) * self.audio_tokens_per_second + chars / self.chars_per_token


@dataclass(frozen=True)
class PlanConfig:
    """``sources``: the converted corpora mixed (one or more, names unique); ``shard_window``:
    shards a stratum draws from at once (a worker keeps about ``G * shard_window`` open)."""

    sources: tuple[Source, ...]
    mixing: Mixing = Mixing()
    batching: Batching = Batching()
    seed: int = 0
    shuffle_block: int = 1024
    shard_window: int = 4

    def __post_init__(self):
        sources = tuple(self.sources)
        object.__setattr__(self, "sources", sources)
        if not sources:
            raise ValueError("a plan needs at least one source")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names} (set name=...)")
        if self.shuffle_block < 1 or self.shard_window < 1:
            raise ValueError("shuffle_block and shard_window must be >= 1")


@dataclass
class ShardTable:
    """The manifest rows of the selected shards of every source, as arrays (length S),
    sorted by (source, name)."""

    sources: tuple[Source, ...]
    names: list[str]
    source: np.ndarray         # (S,) int32, source number per shard
    tasks: np.ndarray          # (S,) object, task per shard
    sizes: np.ndarray          # (S,) int64, samples per shard
    first_rows: np.ndarray     # (S,) int64, row of the shard's first sample in its index.parquet

    @classmethod
    def load(cls, sources: Sequence[Source]) -> "ShardTable":
        names, numbers, tasks, sizes, firsts = [], [], [], [], []
        for number, source in enumerate(sources):
            rows = read_manifest(source.root).select(
                ["shard", "split", "modality", "task", "num_samples"]).to_pylist()
            first_row = 0  # the index lists samples grouped by shard in manifest order
            for row in rows:
                row["first_row"], first_row = first_row, first_row + row["num_samples"]
            kept = sorted((r for r in rows if source.selection.keeps(r["split"], r["modality"], r["task"])),
                          key=lambda r: r["shard"])
            if not kept:
                raise ValueError(f"{source.root}: no shard matches {source.selection}")
            for row in kept:
                names.append(row["shard"])
                numbers.append(number)
                tasks.append(row["task"])
                sizes.append(row["num_samples"])
                firsts.append(row["first_row"])
        return cls(tuple(sources), names, np.array(numbers, np.int32), np.array(tasks, dtype=object),
                   np.array(sizes, np.int64), np.array(firsts, np.int64))

    def strata(self) -> tuple[list[tuple[str, str]], np.ndarray]:
        """The strata ``[(source name, task), ...]`` (sorted) and the stratum of each shard (S,)."""
        labels = sorted({(self.sources[s].name, t) for s, t in zip(self.source.tolist(), self.tasks)})
        number = {label: k for k, label in enumerate(labels)}
        return labels, np.array([number[self.sources[s].name, t] for s, t in zip(self.source.tolist(), self.tasks)],
                                np.int32)


def stratum_quotas(sizes: dict[tuple[str, str], int], mixing: Mixing,
                   source_weights: dict[str, float] | None = None) -> dict[tuple[str, str], int]:
    """Samples per (source, task) stratum in one epoch; sums exactly to the epoch size.

    >>> stratum_quotas({("a", "ASR"): 90, ("a", "SGC"): 10}, Mixing("uniform"))
    {('a', 'ASR'): 50, ('a', 'SGC'): 50}
    """
    strata = sorted(sizes)
    counts = np.array([sizes[k] for k in strata], dtype=np.float64)
    if mixing.mode == "natural":
        weights = counts
    elif mixing.mode == "uniform":
        weights = np.ones_like(counts)
    elif mixing.mode == "temperature":
        weights = counts ** (1.0 / mixing.temperature)
    else:
        weights = np.array([mixing.weights.get(task, 0.0) for _, task in strata], dtype=np.float64)
    if source_weights:
        weights = weights * np.array([source_weights[source] for source, _ in strata])
    if weights.sum() <= 0:
        raise ValueError("mixing weights sum to zero over the selected strata")
    total = mixing.epoch_samples if mixing.epoch_samples is not None else int(counts.sum())
    return dict(zip(strata, _largest_remainder(weights / weights.sum() * total, total).tolist()))


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

    ``shard_names`` (relative to their source) and ``shard_source`` (source number) are
    indexed by ``shard``; ``shard`` (int32), ``offset`` (int64, byte offset in the tar),
    ``seconds`` (float32), ``chars`` (int32) and ``stratum`` (int32, into ``strata``, the
    ``(source name, task)`` pairs) are per slot (length L), as is ``end`` (int64, where the
    sample's bytes end in the tar: the next sample's offset, or -1 for a shard's last sample,
    whose bytes end where the archive's closing zero blocks begin); ``batches`` holds, for each of
    the K batches, the slot numbers (int64) it serves, in order: a (K, batch_size) array for
    fixed batches, a list of arrays for dynamic ones. ``quotas``: samples per stratum in the
    whole epoch (all ranks). ``dropped``: samples dropped at planning, by reason;
    ``filled_slots``: slots refilled after those drops; ``dropped_batches``: dynamic batches
    dropped to match the other ranks; ``padded_slots``: slots added by ``remainder="pad"``.
    ``open_shards``: the most shards in use at once over the rank's batches (a shard is in
    use from its first batch to its last): what a worker keeps open.
    """

    epoch: int
    rank: int
    world_size: int
    sources: tuple[Source, ...]
    shard_names: list[str]
    shard_source: np.ndarray
    shard: np.ndarray
    offset: np.ndarray
    seconds: np.ndarray
    chars: np.ndarray
    stratum: np.ndarray
    strata: list[tuple[str, str]]
    quotas: dict[tuple[str, str], int]
    batches: np.ndarray | list[np.ndarray] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    filled_slots: int = 0
    dropped_batches: int = 0
    padded_slots: int = 0
    open_shards: int = 0
    end: np.ndarray | None = None

    def worker_batches(self, worker: int, num_workers: int, start: int = 0) -> range:
        """Batch numbers worker ``worker`` of ``num_workers`` serves from batch ``start`` on:
        ``start + worker``, ``start + worker + W``, ... (a DataLoader collects from workers
        0, 1, ..., W-1 in turn, so this is exactly the planned order)."""
        return range(start + worker, len(self.batches), max(num_workers, 1))

    def shard_path(self, number: int) -> str | Path:
        """Location of the plan's shard ``number``."""
        return self.sources[self.shard_source[number]].path(self.shard_names[number])


@dataclass
class _Epoch:
    """The epoch's layout shared by all ranks: strata, quotas, phases and, per stratum, its
    shards (indices into the ShardTable) in window order with their takes."""

    strata: list[tuple[str, str]]
    quotas: np.ndarray                  # (G,) int64
    phases: np.ndarray                  # (G,) int64 in [0, PHASE_SCALE)
    members: list[np.ndarray]           # per stratum: shard ids in window order (takes > 0)
    takes: np.ndarray                   # (S,) int64 samples served from each shard

    @property
    def total(self) -> int:
        return int(self.quotas.sum())


def _epoch_layout(shards: ShardTable, config: PlanConfig, epoch: int) -> _Epoch:
    strata, shard_stratum = shards.strata()
    sizes = np.bincount(shard_stratum, weights=shards.sizes, minlength=len(strata)).astype(np.int64)
    weights = {s.name: s.weight for s in config.sources}
    quotas = stratum_quotas(dict(zip(strata, sizes.tolist())), config.mixing, weights)
    takes = np.zeros(len(shards.names), dtype=np.int64)
    members, phases = [], []
    for k, label in enumerate(strata):
        quota = quotas[label]
        ids = np.flatnonzero(shard_stratum == k)
        size = shards.sizes[ids]
        passes, rest = divmod(quota, int(size.sum()))
        tiebreak = seeded_rng(config.seed, epoch, "spread", label).permutation(len(ids))
        takes[ids] = passes * size + _largest_remainder(size / size.sum() * rest, rest, tiebreak)
        order = ids[seeded_rng(config.seed, epoch, "shard-order", label).permutation(len(ids))]
        members.append(order[takes[order] > 0])
        phases.append(int(seeded_rng(config.seed, epoch, "phase", label).integers(PHASE_SCALE)))
    return _Epoch(strata, np.array([quotas[s] for s in strata], np.int64), np.array(phases, np.int64),
                  members, takes)


def _frame_counts(quotas: Sequence[int], phases: Sequence[int], frames: int, j: int) -> list[int]:
    """Per stratum, how many of its items sit before frame boundary ``j / frames``: items
    ``i`` with ``(i + u / PHASE_SCALE) / q < j / frames``, in exact integers."""
    scale = PHASE_SCALE * frames
    return [min(max(-((u * frames - j * q * PHASE_SCALE) // scale), 0), q) for q, u in zip(quotas, phases)]


def _interleave(layout: _Epoch, begin: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Epoch positions ``begin .. end - 1`` (within ``0 .. E``) as ``(stratum, item)`` arrays:
    the items of every stratum ordered by (frame, ``(i + u) / q``, stratum). Costs
    ``O(G log(E / FRAME_SLOTS))`` big-integer steps to find the frames, then
    ``O((end - begin) log)`` to order the items of those frames."""
    quotas, phases = layout.quotas.tolist(), layout.phases.tolist()
    frames = max(1, math.ceil(layout.total / FRAME_SLOTS))

    def position(j: int) -> int:
        return sum(_frame_counts(quotas, phases, frames, j))

    first = bisect.bisect_right(range(frames + 1), begin, key=position) - 1   # position(first) <= begin
    last = bisect.bisect_left(range(frames + 1), end, key=position)           # position(last) >= end
    bounds = np.array([_frame_counts(quotas, phases, frames, j) for j in range(first, last + 1)],
                      dtype=np.int64).T  # (G, frames spanned + 1)
    strata, items, frame, key = [], [], [], []
    for k, (q, u) in enumerate(zip(quotas, phases)):
        i = np.arange(bounds[k, 0], bounds[k, -1], dtype=np.int64)
        strata.append(np.full(len(i), k, np.int32))
        items.append(i)
        frame.append(np.searchsorted(bounds[k], i, side="right"))
        key.append((i + u / PHASE_SCALE) / q)
    strata, items, frame = np.concatenate(strata), np.concatenate(items), np.concatenate(frame)
    key = np.concatenate(key)
    order = np.argsort(key, kind="stable")  # ties: by stratum (the concatenation order)
    if np.any(np.diff(frame[order]) < 0):  # a float key rounded across a frame boundary
        order = np.lexsort((strata, key, frame))
    base = int(bounds[:, 0].sum())
    chosen = order[begin - base:end - base]
    return strata[chosen], items[chosen]


def _window_items(takes: np.ndarray, window: int, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """Items ``low .. high - 1`` of a stratum whose shards (in window order) serve ``takes``
    samples each, drawn round-robin from ``window`` shards at a time (an exhausted shard's
    place goes to the next shard): ``(shard number in window order, take number within the
    shard)`` per item. Walks the stratum in phases between exhaustions: O(shards x window)."""
    takes = takes.tolist()
    active = list(range(min(window, len(takes))))
    following = len(active)
    used = [0] * len(takes)
    at = 0
    shards, numbers = [], []
    while active and at < high:
        width = len(active)
        rounds = min(takes[s] - used[s] for s in active)
        length = width * rounds
        if at + length > low:
            step = np.arange(max(low - at, 0), min(high - at, length), dtype=np.int64)
            which = np.array(active, np.int64)[step % width]
            shards.append(which)
            numbers.append(np.array(used, np.int64)[which] + step // width)
        at += length
        replaced = []
        for s in active:
            used[s] += rounds
            if used[s] < takes[s]:
                replaced.append(s)
            elif following < len(takes):
                replaced.append(following)
                following += 1
        active = replaced
    if not shards:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(shards), np.concatenate(numbers)


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


def plan_rank(config: PlanConfig, epoch: int, world_size: int, rank: int,
              shards: ShardTable | None = None,
              agree: Callable[[int], int] | None = None) -> RankPlan:
    """The epoch plan of one rank. ``agree`` maps this rank's dynamic batch count to the
    count all ranks use (the minimum over ranks; e.g. an all-reduce MIN); dynamic batches
    over more than one rank without it raise ValueError (the ranks would diverge)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if config.batching.dynamic and world_size > 1 and agree is None:
        raise ValueError("dynamic batches over several ranks need agree (e.g. an all-reduce MIN of the "
                         "batch count): each rank's own count differs")
    shards = shards or ShardTable.load(config.sources)
    layout = _epoch_layout(shards, config, epoch)
    total = layout.total
    start, length, padded = _rank_range(total, world_size, rank, config.batching)
    if length == 0:
        raise ValueError(f"epoch of {total} samples is too small for {world_size} ranks")
    slot_stratum, slot_shard_id, slot_position = _rank_slots(layout, shards, config, epoch, start, length)
    # local shard numbers, by first use (no sort of the slots: a scatter over the S shards)
    first_use = np.full(len(shards.names), length, np.int64)
    np.minimum.at(first_use, slot_shard_id, np.arange(length))
    touched = np.flatnonzero(first_use < length)
    touched = touched[np.argsort(first_use[touched], kind="stable")]
    renumber = np.empty(len(shards.names), np.int64)
    renumber[touched] = np.arange(len(touched))
    slot_shard = renumber[slot_shard_id].astype(np.int32)
    columns = _touched_rows(shards, touched)
    bases = np.concatenate([[0], np.cumsum(shards.sizes[touched])])
    rows = bases[slot_shard] + slot_position
    offset, seconds, chars, clips, end = (column[rows] for column in columns)
    plan = RankPlan(epoch, rank, world_size, shards.sources, [shards.names[i] for i in touched],
                    shards.source[touched], slot_shard, offset, seconds, chars, slot_stratum,
                    layout.strata, dict(zip(layout.strata, layout.quotas.tolist())), padded_slots=padded, end=end)
    _fit(plan, clips, config.batching)
    emission = _stratum_shuffle(plan.stratum, config.shuffle_block, config.seed, epoch, rank)
    if config.batching.dynamic:
        batches = _dynamic_batches(emission, _slot_costs(plan, config.batching), config, epoch, rank)
        count = agree(len(batches)) if agree else len(batches)
        if count > len(batches):
            raise ValueError(f"agreed batch count {count} exceeds this rank's {len(batches)}")
        plan.dropped_batches = len(batches) - count
        plan.batches = batches[:count]
    else:
        plan.batches = emission.reshape(-1, config.batching.batch_size)  # length is a multiple
    plan.open_shards = _open_shards(plan)
    return plan


def _rank_slots(layout: _Epoch, shards: ShardTable, config: PlanConfig, epoch: int, start: int,
                length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slot of the rank range ``start .. start + length - 1`` (wrapping past the end:
    padding): ``(stratum, shard id, row within the shard)``."""
    total = layout.total
    strata, shard_ids, positions = [], [], []
    picks: dict[int, np.ndarray] = {}
    at = start
    while at < start + length:  # one pass over the epoch per segment
        begin = at % total
        end = min(total, begin + start + length - at)
        stratum, item = _interleave(layout, begin, end)
        shard_id = np.empty(len(item), np.int64)
        position = np.empty(len(item), np.int64)
        grouped = np.argsort(_narrow(stratum), kind="stable")  # slots by stratum, each in sequence order
        bounds = np.searchsorted(stratum[grouped], np.arange(len(layout.strata) + 1))
        for k in np.flatnonzero(np.diff(bounds)).tolist():
            mask = grouped[bounds[k]:bounds[k + 1]]
            members = layout.members[k]
            low = int(item[mask[0]])  # items of a stratum are ascending along the sequence
            member, number = _window_items(layout.takes[members], config.shard_window, low, low + len(mask))
            ids = members[member]
            shard_id[mask] = ids
            present = members[np.flatnonzero(np.bincount(member, minlength=len(members)))]
            for s in present.tolist():
                if s not in picks:
                    picks[s] = _positions_in_shard(int(shards.sizes[s]), int(layout.takes[s]), config.seed, epoch,
                                                   shards.names[s])
            position[mask] = _gather_picks(picks, present, ids, number)
        strata.append(stratum)
        shard_ids.append(shard_id)
        positions.append(position)
        at += end - begin
    return np.concatenate(strata), np.concatenate(shard_ids), np.concatenate(positions)


def _gather_picks(picks: dict[int, np.ndarray], present: np.ndarray, ids: np.ndarray,
                  number: np.ndarray) -> np.ndarray:
    """``picks[ids[n]][number[n]]`` for every ``n`` (int64, the shape of ``ids``), in one
    gather over the concatenated picks of the shards ``present`` (the distinct ``ids``)."""
    arrays = [picks[s] for s in present.tolist()]
    starts = np.zeros(int(present.max(initial=0)) + 1, np.int64)
    starts[present] = np.cumsum([0] + [len(a) for a in arrays[:-1]])
    return np.concatenate(arrays)[starts[ids] + number] if arrays else np.zeros(0, np.int64)


def _narrow(values: np.ndarray) -> np.ndarray:
    """Small non-negative integers as int16 when they fit: numpy sorts 16-bit integers
    stably by radix, several times faster than wider ones (the order is the same)."""
    return values.astype(np.int16) if values.max(initial=0) < 1 << 15 else values


def _touched_rows(shards: ShardTable, touched: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(offset, audio_seconds, text_chars, num_clips, end)`` of every sample of the ``touched``
    shards, concatenated in that order (each source's index read once); ``end`` is the next
    sample's offset in the shard, -1 for its last."""
    parts: list[tuple[np.ndarray, ...]] = [None] * len(touched)
    for number, source in enumerate(shards.sources):
        mine = np.flatnonzero(shards.source[touched] == number)
        if not len(mine):
            continue
        ids = touched[mine]
        rows = _read_index_rows(source, [shards.names[i] for i in ids], shards.first_rows[ids], shards.sizes[ids])
        for position, row in zip(mine.tolist(), rows):
            parts[position] = (*row, np.append(row[0][1:], -1))
    return tuple(np.concatenate([p[c] for p in parts]) for c in range(5))


def _fit(plan: RankPlan, clips: np.ndarray, batching: Batching) -> None:
    """Drop the slots whose sample cannot fit ``max_length`` and refill each with the nearest
    earlier (else later) kept slot of the same stratum, else of any stratum."""
    if batching.max_length is None:
        return
    length = batching.costs(plan.seconds, plan.chars) + batching.template_tokens + clips * batching.clip_tokens
    too_long = length > batching.max_length
    if not too_long.any():
        return
    kept = np.flatnonzero(~too_long)
    if not len(kept):
        raise ValueError(f"rank {plan.rank}: no sample of its {len(too_long)} fits max_length "
                         f"{batching.max_length}; raise max_length or change the selection")
    donor = np.empty(len(too_long), np.int64)
    for k in np.unique(plan.stratum[too_long]).tolist():
        pool = kept[plan.stratum[kept] == k]
        if not len(pool):
            pool = kept
        holes = np.flatnonzero(too_long & (plan.stratum == k))
        at = np.searchsorted(pool, holes) - 1
        donor[holes] = pool[np.where(at >= 0, at, 0)]
    holes = np.flatnonzero(too_long)
    for column in (plan.shard, plan.offset, plan.end, plan.seconds, plan.chars, plan.stratum):
        column[holes] = column[donor[holes]]
    plan.dropped = {"too_long": int(len(holes))}
    plan.filled_slots = int(len(holes))


def _open_shards(plan: RankPlan) -> int:
    """Most shards in use at once over the batches (a shard from its first batch to its last)."""
    if not len(plan.batches):
        return 0
    batch_of = np.concatenate([np.full(len(b), n, np.int64) for n, b in enumerate(plan.batches)]) \
        if isinstance(plan.batches, list) else np.repeat(np.arange(len(plan.batches)), plan.batches.shape[1])
    slots = np.concatenate(list(plan.batches)) if isinstance(plan.batches, list) else plan.batches.ravel()
    shard = plan.shard[slots]
    count = len(plan.shard_names)
    first = np.full(count, len(plan.batches), np.int64)
    last = np.full(count, -1, np.int64)
    np.minimum.at(first, shard, batch_of)
    np.maximum.at(last, shard, batch_of)
    used = last >= 0
    events = np.zeros(len(plan.batches) + 1, np.int64)
    np.add.at(events, first[used], 1)
    np.add.at(events, last[used] + 1, -1)
    return int(np.cumsum(events).max())


def _read_index_rows(source: Source, names: Sequence[str], first_rows: np.ndarray, sizes: np.ndarray
                     ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """``(offset, audio_seconds, text_chars, num_clips)`` rows of each named shard, read from the row
    range the manifest gives it (``first_rows``, ``sizes``). Only the row groups holding a
    range are decoded, one at a time, and of them only these columns and ``shard``, which is
    checked at both ends of every range: an index that does not list the shards' samples
    where the manifest says raises ValueError."""
    path = source.path(INDEX_FILE)
    with open_index(source.root, read_dictionary=["shard"]) as index:
        return _index_rows(index, path, names, first_rows, sizes)


def _index_rows(index: pq.ParquetFile, path: str | Path, names: Sequence[str], first_rows: np.ndarray,
                sizes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    metadata = index.metadata
    group_starts = np.cumsum([0] + [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])
    lasts = first_rows + sizes  # one past each range's last row
    if lasts.max(initial=0) > group_starts[-1]:
        raise ValueError(f"{path} has {group_starts[-1]} rows; the manifest lists more samples")
    bases = np.concatenate([[0], np.cumsum(sizes)])  # where each shard's rows go in the output
    offset = np.empty(bases[-1], np.int64)
    seconds = np.empty(bases[-1], np.float32)
    chars = np.empty(bases[-1], np.int32)
    clips = np.empty(bases[-1], np.int32)
    ranges = np.argsort(first_rows, kind="stable")
    wanted = np.zeros(metadata.num_row_groups, bool)
    for r in ranges:
        wanted[np.searchsorted(group_starts, first_rows[r], "right") - 1:np.searchsorted(group_starts, lasts[r])] = True
    unfinished = 0  # ranges[unfinished:] still have rows to read
    for group in np.flatnonzero(wanted):
        begin, end = int(group_starts[group]), int(group_starts[group + 1])
        table = index.read_row_group(int(group), columns=["shard", "offset", "audio_seconds", "text_chars",
                                                                     "num_clips"],
                                     use_threads=False)
        # Arrow to numpy through DLPack (no copy; refuses nulls, which the index never holds),
        # not to_numpy(), which imports pandas: ~0.4 s and ~40 MB in every rank.
        shard = table["shard"].combine_chunks()
        codes, labels = np.from_dlpack(shard.indices), shard.dictionary.to_pylist()
        columns = [np.from_dlpack(table[c].combine_chunks()) for c in ("offset", "audio_seconds", "text_chars", "num_clips")]
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
            offset[into], seconds[into], chars[into], clips[into] = (column[a - begin:b - begin] for column in columns)
        while unfinished < len(ranges) and lasts[ranges[unfinished]] <= end:
            unfinished += 1
    return [tuple(column[bases[r]:bases[r + 1]] for column in (offset, seconds, chars, clips))
            for r in range(len(names))]


def _stratum_shuffle(stratum: np.ndarray, block: int, seed: int, epoch: int, rank: int) -> np.ndarray:
    """Emission order of slots ``0..L-1``: inside each block of ``block`` slots, a seeded
    permutation decides which stratum each position serves; each stratum's slots keep their
    order (so a shard is still read in ascending offsets)."""
    emission = np.empty(len(stratum), np.int64)
    stratum = _narrow(stratum)
    for number, begin in enumerate(range(0, len(stratum), block)):
        end = min(begin + block, len(stratum))
        pattern = stratum[begin:end][seeded_rng(seed, epoch, rank, "block", number).permutation(end - begin)]
        # the n-th position serving stratum k gets the block's n-th slot of stratum k
        emission[begin + np.argsort(pattern, kind="stable")] = begin + np.argsort(stratum[begin:end], kind="stable")
    return emission


def _slot_costs(plan: RankPlan, batching: Batching) -> np.ndarray:
    """Token cost of each slot: audio tokens plus text tokens, (L,) float64."""
    return batching.costs(plan.seconds, plan.chars)


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
