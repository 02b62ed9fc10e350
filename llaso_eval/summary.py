"""Aggregate stem scores into task, category and overall scores.

* **Task**: its stems pooled, each weighted by its record count ``n``. ``value`` is
  given when all its scored stems share one metric (accuracy pools to correct/total);
  ``normalized`` and ``abstention_rate`` are the weighted means over the stems that have them.
* **Category** (linguistic, semantic, paralinguistic): the mean of its tasks' normalised scores.
* **Overall normalised score**: the mean of the normalised scores of every task that has
  one, each task counting once, on 0..1 like the normalised score LLaSO reports (0.72 for
  LLaSO-Base). LLaSO's exact normalisation is not published in the sources this project
  used, so the figures are comparable between runs of this scorer, not with the paper's
  number. Tasks without a score (a judge task with no judge) are listed as skipped and
  left out of the mean, so compare overall scores only over the same tasks.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from llaso_data.tasks import CATEGORIES, TASKS

from .score import StemScore


@dataclass(frozen=True)
class TaskScore:
    """One task over its stems; ``metric`` is ``"mixed"`` when its stems use several;
    ``verdicts`` (judged tasks) sums its stems' verdict counts by source."""

    task: str
    name: str
    category: str
    stems: tuple[str, ...]
    n: int
    metric: str | None
    value: float | None
    normalized: float | None
    abstention_rate: float | None
    verdicts: dict[str, int] | None = None


@dataclass(frozen=True)
class Summary:
    """Tasks in catalogue order; ``categories`` maps each category present to its score
    (None when none of its tasks has one); ``skipped`` names tasks without a score."""

    tasks: tuple[TaskScore, ...]
    categories: dict[str, float | None]
    overall: float | None
    skipped: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"overall": self.overall, "categories": self.categories, "skipped_tasks": list(self.skipped),
                "tasks": {t.task: {k: v for k, v in t.__dict__.items() if k != "task"} for t in self.tasks}}


def summarize(stems: Iterable[StemScore]) -> Summary:
    """Task, category and overall scores of a run's stem scores."""
    by_task: dict[str, list[StemScore]] = defaultdict(list)
    for stem in stems:
        by_task[stem.task].append(stem)
    tasks = tuple(_task_score(task, by_task[task]) for task in sorted(by_task, key=task_rank))
    categories: dict[str, float | None] = {}
    for category in sorted({t.category for t in tasks}, key=category_rank):
        values = [t.normalized for t in tasks if t.category == category and t.normalized is not None]
        categories[category] = sum(values) / len(values) if values else None
    scored = [t.normalized for t in tasks if t.normalized is not None]
    return Summary(tasks, categories, sum(scored) / len(scored) if scored else None,
                   tuple(t.task for t in tasks if t.normalized is None))


def _task_score(task: str, stems: list[StemScore]) -> TaskScore:
    scored = [s for s in stems if s.value is not None]
    metrics = {s.metric for s in scored}
    metric = metrics.pop() if len(metrics) == 1 else ("mixed" if metrics else stems[0].metric)
    return TaskScore(
        task=task,
        name=TASKS[task].name if task in TASKS else task,
        category=stems[0].category,
        stems=tuple(s.stem for s in stems),
        n=sum(s.n for s in stems),
        metric=metric,
        value=_weighted(scored, "value") if metric != "mixed" else None,
        normalized=_weighted(stems, "normalized"),
        abstention_rate=_weighted(stems, "abstention_rate"),
        verdicts=_summed([s.verdicts for s in stems if s.verdicts is not None]),
    )


def _summed(counts: list[dict[str, int]]) -> dict[str, int] | None:
    """Counts added key by key (None when there are none)."""
    if not counts:
        return None
    total: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            total[key] = total.get(key, 0) + value
    return total


def _weighted(stems: list[StemScore], name: str) -> float | None:
    """The ``n``-weighted mean of a field over the stems where it is set (None if nowhere)."""
    pairs = [(getattr(s, name), s.n) for s in stems if getattr(s, name) is not None and s.n > 0]
    weight = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / weight if weight else None


_TASK_ORDER = list(TASKS)


def task_rank(task: str) -> tuple[int, str]:
    """Sort key: catalogue tasks in catalogue order (ASR, PR, AQA, ...), then others by name."""
    return (_TASK_ORDER.index(task), "") if task in TASKS else (len(_TASK_ORDER), task)


def category_rank(category: str) -> tuple[int, str]:
    """Sort key: linguistic, semantic, paralinguistic, then others by name."""
    return (CATEGORIES.index(category), "") if category in CATEGORIES else (len(CATEGORIES), category)
