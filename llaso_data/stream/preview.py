"""What a mixture gives before any GPU hour is spent on it: quotas, batches per rank,
padding, and how mixed the batches are, from plans (metadata only).

``distinct_tasks_per_batch`` counts distinct (source, task) strata per batch;
``iid_tasks_per_batch`` is what batches of the same sizes drawn i.i.d. from the epoch's
stratum proportions ``p`` give on average (``sum_k 1 - (1 - p_k) ** n`` for a batch of
``n``); ``longest_one_task_run`` is the longest run of consecutive batches that each hold a
single stratum, the same one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from llaso_data.stream.plan import PlanConfig, RankPlan, ShardTable, padding_ratio, plan_rank


@dataclass
class MixturePreview:
    """Figures of one epoch over ``ranks_planned`` of ``world_size`` ranks; counts summed over
    those ranks. ``quotas``: samples per ``source/task`` in the epoch (all ranks)."""

    world_size: int
    ranks_planned: int
    epoch_samples: int
    quotas: dict[str, int]
    batches_per_rank: int
    samples_per_rank: int
    padding_ratio: float
    distinct_tasks_per_batch: float
    iid_tasks_per_batch: float
    longest_one_task_run: int
    open_shards: int
    dropped: dict[str, int]
    filled_slots: int
    padded_slots: int
    dropped_batches: int

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """A readable summary, one line each."""
        width = max(len(name) for name in self.quotas)
        out = [f"{'source/task':<{width}} {'samples':>10} {'share':>7}"]
        for name, quota in sorted(self.quotas.items()):
            out.append(f"{name:<{width}} {quota:>10,} {quota / self.epoch_samples:>7.1%}")
        dropped = ", ".join(f"{reason} {count:,}" for reason, count in self.dropped.items()) or "none"
        out += [f"epoch: {self.epoch_samples:,} samples; world size {self.world_size}: "
                f"{self.batches_per_rank:,} batches ({self.samples_per_rank:,} samples) per rank",
                f"distinct tasks per batch: {self.distinct_tasks_per_batch:.2f} "
                f"(i.i.d. shuffle: {self.iid_tasks_per_batch:.2f}); longest run of one-task batches: "
                f"{self.longest_one_task_run}",
                f"padding ratio {self.padding_ratio:.3f}; shards open per worker: at most {self.open_shards}",
                f"dropped at planning ({self.ranks_planned} of {self.world_size} ranks): {dropped}; "
                f"refilled slots {self.filled_slots:,}, padded slots {self.padded_slots:,}, "
                f"dynamic batches dropped to match ranks {self.dropped_batches:,}"]
        return out


def summarize(plans: Sequence[RankPlan], config: PlanConfig) -> MixturePreview:
    """The preview of ``plans`` (one epoch, one or more ranks of it)."""
    quotas = {f"{source}/{task}": quota for (source, task), quota in plans[0].quotas.items()}
    total = sum(quotas.values())
    shares = np.array([q / total for q in plans[0].quotas.values()])
    distinct, iid, sizes, longest = [], [], [], 0
    for plan in plans:
        strata = [plan.stratum[b] for b in plan.batches]
        counts = [len(np.unique(s)) for s in strata]
        distinct += counts
        sizes += [len(s) for s in strata]
        run, previous = 0, None
        for s, count in zip(strata, counts):
            label = int(s[0]) if count == 1 else None
            run = run + 1 if label is not None and label == previous else (1 if label is not None else 0)
            previous = label
            longest = max(longest, run)
    size_counts = np.bincount(sizes) if sizes else np.zeros(1)
    expected = sum(n * float(np.sum(1 - (1 - shares) ** size)) for size, n in enumerate(size_counts) if n)
    dropped: dict[str, int] = {}
    for plan in plans:
        for reason, count in plan.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    return MixturePreview(
        world_size=plans[0].world_size, ranks_planned=len(plans), epoch_samples=total, quotas=quotas,
        batches_per_rank=len(plans[0].batches), samples_per_rank=int(sum(len(b) for b in plans[0].batches)),
        padding_ratio=round(float(np.mean([padding_ratio(p, config.batching) for p in plans])), 4),
        distinct_tasks_per_batch=round(float(np.mean(distinct)) if distinct else 0.0, 3),
        iid_tasks_per_batch=round(expected / max(len(sizes), 1), 3),
        longest_one_task_run=longest, open_shards=max(p.open_shards for p in plans), dropped=dropped,
        filled_slots=sum(p.filled_slots for p in plans), padded_slots=sum(p.padded_slots for p in plans),
        dropped_batches=sum(p.dropped_batches for p in plans))


def preview(config: PlanConfig, world_size: int, epoch: int = 0) -> MixturePreview:
    """Plan every rank of an epoch (dynamic batches: the ranks agree on the smallest count,
    as training does) and summarize."""
    shards = ShardTable.load(config.sources)
    counts = [len(plan_rank(config, epoch, world_size, rank, shards, agree=lambda n: n).batches)
              for rank in range(world_size)] if config.batching.dynamic else None
    agree = (lambda n: min(counts)) if counts else None
    return summarize([plan_rank(config, epoch, world_size, rank, shards, agree=agree)
                      for rank in range(world_size)], config)
