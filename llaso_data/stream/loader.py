"""Stream planned batches out of the shards: the dataset workers run, and the loader the
trainer iterates (with exact resume).

Shapes in a batch (``B`` samples, ``C`` audio chunks over the batch, ``N`` longest chunk in
samples, ``T`` longest token sequence):

* ``keys``: list[str] (B), the samples' keys, prefixed ``<source name>/`` in a stream of
  several sources (unique across them); ``tasks``: list[str] (B); ``samples``: list[Sample] (B)
* ``chunks``: (C, N) 16 kHz mono waveforms, zero-padded: int16 PCM when every clip of the
  batch is 16-bit PCM at 16 kHz mono (their samples as stored), else float32 in [-1, 1];
  :func:`float_chunks` gives float32 either way, exactly (``x / 32768`` for int16, what
  soundfile's float32 decode gives); the trainer calls it on the training device, so
  int16 batches cross processes and the host-to-device copy at half the bytes;
  ``chunk_lengths``: int64 (C,); ``chunk_sample``: int64 (C,) sample of each chunk;
  ``chunk_tokens``: int64 (C,) audio tokens each chunk becomes
* with a renderer: ``input_ids`` int64 (B, T) padded with ``pad_id``; ``labels`` int64
  (B, T) padded with -100; ``attention_mask`` int64 (B, T); ``chunk_start``: int64 (C,)
  position in its sample's ``input_ids`` where the chunk's tokens begin
* ``skipped``: samples left out of this batch (corrupt with ``on_corrupt="skip"``, or too
  long to render), by reason

:class:`StreamLoader` yields these as torch tensors. A worker (:func:`collate`) writes
``chunks`` straight into a shared-memory tensor, which reaches the trainer's process as one
file descriptor, and builds the small arrays with numpy: they travel pickled in the
DataLoader's queue and become tensors there without a copy (:func:`to_torch`), where a
tensor each would cost a shared-memory file and a file-descriptor handshake.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from llaso_data.stream.chat import IGNORE_INDEX
from llaso_data.stream.plan import PlanConfig, RankPlan, ShardTable, plan_rank
from llaso_data.records import Sample
from llaso_data.stream.shard_reader import CorruptShardError, ShardReader
from llaso_data.stream.windows import WaveformConfig, chunk_waveform, decode_clip, to_float32


@dataclass(frozen=True)
class StreamConfig:
    """Everything a rank's stream needs besides its rank: the plan (its sources included),
    the waveform windows, what to do with a corrupt sample (``raise`` or ``skip``) and the
    most shards a worker keeps open (``max_open_shards``; ``None``: the plan's
    ``open_shards``, so no shard in use is ever closed early). A worker closes each shard
    after the last batch that reads it."""

    plan: PlanConfig
    waveform: WaveformConfig = WaveformConfig()
    on_corrupt: str = "raise"
    max_open_shards: int | None = None

    def __post_init__(self):
        if self.on_corrupt not in ("raise", "skip"):
            raise ValueError("on_corrupt must be 'raise' or 'skip'")
        if self.max_open_shards is not None and self.max_open_shards < 1:
            raise ValueError("max_open_shards must be >= 1")


Renderer = Callable[[Sample, list[int]], object]
"""``render(sample, audio_tokens_per_clip) -> Rendered`` (see ``llaso_data.stream.chat.renderer``);
raises ``ValueError`` for a sample that cannot be rendered (reported, not trained on)."""


class ShardStream(IterableDataset):
    """One rank's batches for one epoch from ``start_batch`` on, split over DataLoader
    workers in the order the DataLoader collects them."""

    def __init__(self, config: StreamConfig, rank: int = 0, world_size: int = 1,
                 render: Renderer | None = None, pad_id: int = 0,
                 agree: Callable[[int], int] | None = None):
        self.config, self.rank, self.world_size = config, rank, world_size
        self.render, self.pad_id, self.agree = render, pad_id, agree
        self._shards = ShardTable.load(config.plan.sources)
        self.epoch = 0
        self.start_batch = 0
        self._plan: RankPlan | None = None

    @property
    def plan(self) -> RankPlan:
        if self._plan is None or self._plan.epoch != self.epoch:
            self._plan = plan_rank(self.config.plan, self.epoch, self.world_size, self.rank,
                                   shards=self._shards, agree=self.agree)
        return self._plan

    def __len__(self) -> int:
        return len(self.plan.batches)

    def prepare(self) -> RankPlan:
        """Compute this epoch's plan now (in the main process, before workers start)."""
        return self.plan

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        plan = self.plan
        numbers = plan.worker_batches(worker, workers, self.start_batch)
        reader = ShardReader(self.config.max_open_shards or max(plan.open_shards, 1))
        paths = [plan.shard_path(n) for n in range(len(plan.shard_names))]
        prefix = len(plan.sources) > 1
        try:
            finished = _last_uses(plan, numbers)
            for position, number in enumerate(numbers):
                yield self._batch(plan, number, reader, paths, prefix)
                for shard in finished.get(position, ()):
                    reader.release(paths[shard])
        finally:
            reader.close()

    def _batch(self, plan: RankPlan, number: int, reader: ShardReader, paths: list[str | Path], prefix: bool) -> dict:
        samples, waveforms, skipped = [], [], {}
        reader.fetch([(paths[int(plan.shard[s])], int(plan.offset[s]), int(plan.end[s])) for s in plan.batches[number]])
        for slot in plan.batches[number]:
            shard = int(plan.shard[slot])
            try:
                sample, clips = reader.read(paths[shard], int(plan.offset[slot]), int(plan.end[slot]))
                decoded = [chunk_waveform(decode_clip(c), self.config.waveform) for c in clips]
            except (CorruptShardError, RuntimeError, ValueError) as error:
                if self.config.on_corrupt == "raise":
                    raise CorruptShardError(f"{error}") from error
                skipped["corrupt"] = skipped.get("corrupt", 0) + 1
                continue
            if prefix:
                sample = dataclasses.replace(sample, key=f"{plan.sources[plan.shard_source[shard]].name}/{sample.key}")
            samples.append(sample)
            waveforms.append(decoded)
        return collate(samples, waveforms, self.config.waveform, self.render, self.pad_id, skipped)


def _last_uses(plan: RankPlan, numbers: range) -> dict[int, list[int]]:
    """``{i: shards}``: the shards that batch ``numbers[i]`` reads for the last time in the
    sequence ``numbers`` (one worker's, in order), which the worker may close after it."""
    if not len(numbers):
        return {}
    if isinstance(plan.batches, np.ndarray):
        chosen = plan.batches[numbers.start:numbers.stop:numbers.step]
        slots, position = chosen.ravel(), np.repeat(np.arange(len(chosen)), chosen.shape[1])
    else:
        chosen = [plan.batches[n] for n in numbers]
        slots = np.concatenate(chosen)
        position = np.repeat(np.arange(len(chosen)), [len(b) for b in chosen])
    last = np.full(len(plan.shard_names), -1, np.int64)  # the last position reading each shard
    np.maximum.at(last, plan.shard[slots], position)
    shards = np.flatnonzero(last >= 0)
    finished: dict[int, list[int]] = {}
    for s, p in zip(shards.tolist(), last[shards].tolist()):
        finished.setdefault(p, []).append(s)
    return finished


def collate(samples: list[Sample], waveforms: list[list[list[np.ndarray]]], waveform: WaveformConfig,
            render: Renderer | None, pad_id: int, skipped: dict[str, int]) -> dict:
    """Build a batch dict (see the module docstring) from decoded samples: ``chunks`` a
    tensor, the other arrays numpy (:func:`to_torch` makes them tensors).

    ``waveforms[b][clip]`` is the list of 30 s windows (int16 or float32, see
    :mod:`llaso_data.stream.windows`) of clip ``clip`` of sample ``b``.
    """
    rendered = []
    if render is not None:
        kept_samples, kept_waveforms = [], []
        for sample, clips in zip(samples, waveforms):
            tokens = [sum(waveform.tokens(len(w)) for w in windows) for windows in clips]
            try:
                rendered.append(render(sample, tokens))
            except ValueError:
                skipped["unrenderable"] = skipped.get("unrenderable", 0) + 1
                continue
            kept_samples.append(sample)
            kept_waveforms.append(clips)
        samples, waveforms = kept_samples, kept_waveforms
    chunks, lengths, owners, tokens, starts = [], [], [], [], []
    for b, clips in enumerate(waveforms):
        for clip, windows in enumerate(clips):
            position = _clip_start(rendered[b], clip) if rendered else 0
            for window in windows:
                chunks.append(window)
                lengths.append(len(window))
                owners.append(b)
                count = waveform.tokens(len(window))
                tokens.append(count)
                starts.append(position)
                position += count
    batch = {
        "keys": [s.key for s in samples], "tasks": [s.task for s in samples], "samples": samples,
        "chunks": pad_chunks(chunks, max(lengths, default=0)),
        "chunk_lengths": np.array(lengths, dtype=np.int64), "chunk_sample": np.array(owners, dtype=np.int64),
        "chunk_tokens": np.array(tokens, dtype=np.int64), "skipped": skipped,
    }
    if render is not None:
        batch.update(_pad_tokens(rendered, pad_id))
        batch["chunk_start"] = np.array(starts, dtype=np.int64)
    return batch


def pad_chunks(chunks: list[np.ndarray], longest: int) -> torch.Tensor:
    """(C, longest) zero-padded: int16 if every chunk is int16, else float32 (int16 chunks
    converted exactly). In a DataLoader worker the tensor is allocated in shared memory (a
    new shared-memory file, which reads as zeros: only the samples are written), so it is
    filled once and reaches the trainer's process as one file descriptor, not copied
    through the queue."""
    pcm = all(chunk.dtype == np.int16 for chunk in chunks)
    dtype = torch.int16 if pcm else torch.float32
    shape = (len(chunks), longest)
    if get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(shape[0] * shape[1] * dtype.itemsize)
        audio = torch.empty(0, dtype=dtype).set_(storage, 0, shape, (longest, 1))
    else:
        audio = torch.from_numpy(np.zeros(shape, dtype=np.int16 if pcm else np.float32))  # calloc: no fill pass
    rows = audio.numpy()
    for row, chunk in enumerate(chunks):
        rows[row, :len(chunk)] = chunk if pcm else to_float32(chunk)
    return audio


def _clip_start(rendered, clip: int) -> int:
    return next(start for start, _, index in rendered.audio_spans if index == clip)


def _pad_tokens(rendered: list, pad_id: int) -> dict[str, np.ndarray]:
    longest = max((len(r.input_ids) for r in rendered), default=0)
    ids = np.full((len(rendered), longest), pad_id, dtype=np.int64)
    labels = np.full((len(rendered), longest), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(rendered), longest), dtype=np.int64)
    for row, item in enumerate(rendered):
        n = len(item.input_ids)
        ids[row, :n] = item.input_ids
        labels[row, :n] = item.labels
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def to_torch(batch: dict) -> dict:
    """The batch with its numpy arrays as torch tensors sharing their memory (no copy)."""
    return {name: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
            for name, value in batch.items()}


@dataclass
class StreamLoader:
    """The loader a trainer iterates: a DataLoader over :class:`ShardStream` that counts the
    batches it has handed out, so ``state_dict()`` is exact (batches still prefetched in
    workers are not counted and come again after a restart)."""

    dataset: ShardStream
    num_workers: int = 0
    prefetch_factor: int = 2
    batches_done: int = 0
    skipped: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.dataset.epoch:
            self.dataset.epoch, self.batches_done = epoch, 0

    def __iter__(self) -> Iterator[dict]:
        """One epoch's batches from ``batches_done`` on. With workers, the objects alive when
        they fork are frozen out of the garbage collector for the epoch (``gc.freeze``):
        otherwise a full collection in either process writes to every page of the other's
        heap it still shares (copy-on-write, a fault and a page copy each)."""
        self.dataset.start_batch = self.batches_done
        self.dataset.prepare()  # plan here, once: workers receive it and never call ``agree``
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                            prefetch_factor=self.prefetch_factor if self.num_workers else None,
                            collate_fn=_identity)
        with _collector_frozen(self.num_workers > 0):
            for batch in loader:
                self.batches_done += 1
                for reason, count in batch["skipped"].items():
                    self.skipped[reason] = self.skipped.get(reason, 0) + count
                yield to_torch(batch)

    def state_dict(self) -> dict:
        return {"epoch": self.dataset.epoch, "batches_done": self.batches_done,
                "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self.skipped = dict(state.get("skipped", {}))


_frozen_epochs = 0
"""Epochs with workers running in this process (the collector is frozen while any does)."""


@contextlib.contextmanager
def _collector_frozen(active: bool) -> Iterator[None]:
    """Freeze the objects alive now out of the garbage collector while the block runs
    (``gc.freeze``), when ``active``. Nested or overlapping epochs (an evaluation loader
    inside a training epoch) keep it frozen until the last of them ends."""
    global _frozen_epochs
    if not active:
        yield
        return
    if _frozen_epochs == 0:
        gc.freeze()
    _frozen_epochs += 1
    try:
        yield
    finally:
        _frozen_epochs -= 1
        if _frozen_epochs == 0:
            gc.unfreeze()


def _identity(batch):
    return batch
