"""The planner on metadata only, in one process: manifest and index tables written with the
real schemas for corpora of 1,000-sample shards (no tars: planning never opens one).
Mixture inside batches, several sources, exact quotas, equal batch counts, no duplicates,
samples too long for ``max_length``, and the ``llaso-shard plan`` preview."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llaso_data.manifest import INDEX_FILE, INDEX_SCHEMA, MANIFEST_FILE, MANIFEST_SCHEMA
from llaso_data.stream.plan import Batching, Mixing, PlanConfig, Selection, Source, ShardTable, plan_rank
from llaso_data.stream.preview import preview, summarize

# 20 tasks of skewed sizes: 40, 20, 13, 10, 8, ... 2 shards of 1,000 samples
SKEWED = {f"T{i:02d}": max(2, round(40 / (1 + i))) for i in range(20)}


def write_tables(out: Path, shards_per_task: dict[str, int], per_shard: int = 1000, seed: int = 0,
                 long_every: int = 0) -> Path:
    """``manifest.parquet`` + ``index.parquet`` of a converted corpus (shards named as the
    converter names them, index grouped by shard in manifest order); 1-20 s of audio and
    10-400 characters per sample; every ``long_every``-th sample 600 s long."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted((f"train/text_audio/{task}/{task}-{n:06d}.tar", task)
                   for task, count in shards_per_task.items() for n in range(count))
    seconds = rng.uniform(1, 20, len(names) * per_shard)
    if long_every:
        seconds[::long_every] = 600.0
    manifest = [{"shard": name, "split": "train", "modality": "text_audio", "task": task, "category": "semantic",
                 "num_samples": per_shard, "audio_seconds": float(seconds[i * per_shard:(i + 1) * per_shard].sum()),
                 "bytes": per_shard * 4096, "sha256": "0" * 64} for i, (name, task) in enumerate(names)]
    shard = np.repeat([n for n, _ in names], per_shard)
    task = np.repeat([t for _, t in names], per_shard)
    position = np.tile(np.arange(per_shard), len(names))
    index = pa.table({
        "key": [f"{s.split('/')[-1][:-4]}-{p}" for s, p in zip(shard, position)], "shard": shard,
        "offset": position * 4096, "split": np.full(len(shard), "train"), "modality": np.full(len(shard), "text_audio"),
        "task": task, "category": np.full(len(shard), "semantic"), "audio_seconds": seconds,
        "num_clips": np.ones(len(shard), np.int32), "text_chars": rng.integers(10, 400, len(shard)),
        "source": np.char.add(task, "_train.json"), "ordinal": np.arange(len(shard))}, schema=INDEX_SCHEMA)
    pq.write_table(pa.Table.from_pylist(manifest, schema=MANIFEST_SCHEMA), out / MANIFEST_FILE)
    pq.write_table(index, out / INDEX_FILE, row_group_size=65536)
    return out


@pytest.fixture(scope="module")
def skewed(tmp_path_factory) -> Path:
    return write_tables(tmp_path_factory.mktemp("skewed"), SKEWED)


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> list[Path]:
    """Three corpora with uneven shard counts (1 to 9 per task), sharing task names."""
    root = tmp_path_factory.mktemp("three")
    return [write_tables(root / "align", {"ASR": 9, "ALIGN": 4}, per_shard=100, seed=1),
            write_tables(root / "instruct", {"ASR": 1, "SGC": 3, "ER": 2, "AQA": 5}, per_shard=100, seed=2),
            write_tables(root / "own", {"CONV": 1}, per_shard=100, seed=3)]


def _served(plan) -> list[tuple[str, str, int]]:
    return [(plan.sources[plan.shard_source[plan.shard[s]]].name, plan.shard_names[plan.shard[s]],
             int(plan.offset[s])) for b in plan.batches for s in b]


@pytest.mark.parametrize("mode", ["uniform", "natural"])
def test_every_batch_carries_the_mixture(skewed, mode):
    """Mean distinct tasks per batch of 8 at least 0.9x an i.i.d. shuffle's, on every rank."""
    config = PlanConfig([Source(skewed, Selection(None))], Mixing(mode), Batching(batch_size=8))
    shards = ShardTable.load(config.sources)
    for world_size in (1, 8, 64):
        plans = [plan_rank(config, 0, world_size, rank, shards) for rank in range(world_size)]
        summary = summarize(plans, config)
        assert summary.distinct_tasks_per_batch >= 0.9 * summary.iid_tasks_per_batch, (world_size, summary)
        assert summary.iid_tasks_per_batch > (6.5 if mode == "uniform" else 4.0)
        assert summary.longest_one_task_run <= 3
        for plan in plans:  # no rank is left with a narrow slice of the tasks
            assert len(set(plan.stratum.tolist())) == 20


def _check_epoch(plans, sources: list[Path], names: list[str]) -> Counter:
    """Equal batch counts; a sample repeats only by declared up-sampling (at most
    ``ceil(quota / size)`` times, never where the quota fits its stratum); returns samples
    served per (source, task)."""
    assert len({len(p.batches) for p in plans}) == 1 and len(plans[0].batches) > 0
    tasks, sizes = {}, Counter()
    for name, root in zip(names, sources):
        for row in pq.read_table(root / MANIFEST_FILE).to_pylist():
            tasks[name, row["shard"]] = row["task"]
            sizes[name, row["task"]] += row["num_samples"]
    repeats = Counter(x for p in plans for x in _served(p))
    quotas = plans[0].quotas
    for (source, shard, _), count in repeats.items():
        stratum = (source, tasks[source, shard])
        assert count <= -(-quotas[stratum] // sizes[stratum]), stratum
    return Counter((source, tasks[source, shard]) for (source, shard, _), n in repeats.items() for _ in range(n))


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("world_size", [1, 3, 8])
def test_several_sources_keep_quotas_equal_batches_and_no_duplicates(three, count, world_size):
    roots = three[:count]
    names = [r.name for r in roots]
    sources = [Source(root, Selection(None), weight) for root, weight in zip(roots, (1.0, 2.0, 0.5))]
    fixed = PlanConfig(sources, Mixing("natural", epoch_samples=sum(
        pq.read_metadata(r / INDEX_FILE).num_rows for r in roots)), Batching(batch_size=4))
    plans = [plan_rank(fixed, 0, world_size, rank) for rank in range(world_size)]
    served = _check_epoch(plans, roots, names)
    quotas = plans[0].quotas
    assert sum(quotas.values()) == fixed.mixing.epoch_samples
    # natural x source weight: a stratum's share is its size times its source's weight
    sizes = Counter()
    for name, root in zip(names, roots):
        for row in pq.read_table(root / MANIFEST_FILE).to_pylist():
            sizes[name, row["task"]] += row["num_samples"]
    weight = dict(zip(names, (1.0, 2.0, 0.5)))
    exact = {k: sizes[k] * weight[k[0]] for k in sizes}
    for k, quota in quotas.items():
        assert abs(quota - exact[k] / sum(exact.values()) * fixed.mixing.epoch_samples) < 1
    kept = len(plans[0].batches) * 4 * world_size
    if kept == sum(quotas.values()):
        assert served == Counter(quotas)
    else:  # the remainder dropped at the end: each stratum within the interleave's +-1 per rank cut
        assert all(abs(served[k] - quotas[k] * kept / sum(quotas.values())) <= world_size + 1 for k in quotas)

    dynamic = PlanConfig(sources, Mixing("uniform"), Batching(batch_size=None, max_tokens=900))
    own = [len(plan_rank(dynamic, 0, world_size, r, agree=lambda n: n).batches) for r in range(world_size)]
    plans = [plan_rank(dynamic, 0, world_size, r, agree=lambda n: min(own)) for r in range(world_size)]
    _check_epoch(plans, roots, names)
    assert sum(p.dropped_batches for p in plans) == sum(own) - world_size * min(own)


def test_padding_and_upsampling_are_the_only_repeats(three):
    sources = [Source(three[0], Selection(None)), Source(three[1], Selection(None))]
    total = sum(pq.read_metadata(r / INDEX_FILE).num_rows for r in three[:2])
    config = PlanConfig(sources, Mixing("uniform"), Batching(batch_size=7, remainder="pad"))
    plans = [plan_rank(config, 0, 5, rank) for rank in range(5)]
    served = Counter(x for p in plans for x in _served(p))
    assert len({len(p.batches) for p in plans}) == 1
    assert sum(served.values()) == total + sum(p.padded_slots for p in plans)
    # uniform over 6 strata: the 100-sample CONV-less strata are up-sampled by whole passes
    quotas = plans[0].quotas
    assert max(quotas.values()) - min(quotas.values()) <= 1
    by_shard_size = {("instruct", "ASR"): 100}
    assert quotas["instruct", "ASR"] > by_shard_size["instruct", "ASR"]
    assert max(served.values()) <= -(-max(quotas.values()) // 100) + 1


def test_reads_stay_ascending_within_a_shard_and_few_shards_are_open(skewed):
    config = PlanConfig([Source(skewed, Selection(None))], Mixing("uniform"), Batching(batch_size=8),
                        shard_window=2)
    plan = plan_rank(config, 0, 8, 3)
    for workers in (1, 3):
        for worker in range(workers):
            slots = np.concatenate([plan.batches[n] for n in plan.worker_batches(worker, workers)])
            for shard in np.unique(plan.shard[slots]):
                offsets = plan.offset[slots[plan.shard[slots] == shard]]
                assert (np.diff(offsets) > 0).all()
    assert plan.open_shards <= 20 * 2 + 20  # a window of 2 per task, plus shards handed over in a batch
    wider = plan_rank(PlanConfig(config.sources, config.mixing, config.batching, shard_window=4), 0, 8, 3)
    assert plan.open_shards < wider.open_shards


def test_samples_too_long_are_dropped_at_planning_and_refilled_from_their_task(tmp_path):
    root = write_tables(tmp_path / "c", {"ASR": 3, "SGC": 2}, per_shard=100, long_every=10)
    plain = PlanConfig([Source(root, Selection(None))], batching=Batching(batch_size=4, audio_tokens_per_second=25))
    fitted = PlanConfig(plain.sources, batching=Batching(batch_size=4, audio_tokens_per_second=25, max_length=1000))
    for world_size in (1, 3):
        before = [plan_rank(plain, 0, world_size, r) for r in range(world_size)]
        after = [plan_rank(fitted, 0, world_size, r) for r in range(world_size)]
        long_slots = sum(int((p.seconds == 600).sum()) for p in before)
        assert long_slots > 0 and sum(p.dropped.get("too_long", 0) for p in after) == long_slots
        assert all((p.seconds < 600).all() for p in after)
        assert [len(p.batches) for p in after] == [len(p.batches) for p in before]
        assert all(len(b) == 4 for p in after for b in p.batches)
        for b, a in zip(before, after):
            assert Counter(b.stratum.tolist()) == Counter(a.stratum.tolist())  # quotas per task kept
        assert summarize(after, fitted).dropped == {"too_long": long_slots}


def test_the_chat_templates_tokens_count_against_max_length(tmp_path):
    """A sample fits when its audio and text estimate plus the template's tokens (per sample
    and per clip) stay within max_length: the same corpus loses exactly the samples the
    template pushes over."""
    root = write_tables(tmp_path / "c", {"ASR": 3, "SGC": 2}, per_shard=100)

    def plan(**fit):
        batching = Batching(batch_size=4, audio_tokens_per_second=25, chars_per_token=4.0, **fit)
        return plan_rank(PlanConfig([Source(root, Selection(None))], batching=batching), 0, 1, 0)

    estimate = plan().seconds * 25 + plan().chars / 4.0
    assert estimate.max() + 1 <= 700 and not plan(max_length=700).dropped
    templated = plan(max_length=700, template_tokens=250, clip_tokens=3)
    pushed_over = int((estimate + 250 + 3 > 700).sum())
    assert 0 < pushed_over < len(estimate) // 2
    assert templated.dropped == {"too_long": pushed_over}
    assert (templated.seconds * 25 + templated.chars / 4.0 + 253 <= 700).all()
    with pytest.raises(ValueError, match="template_tokens and clip_tokens"):
        Batching(batch_size=4, template_tokens=-1)


def test_dynamic_batches_over_several_ranks_need_agreement(three):
    config = PlanConfig([Source(three[0], Selection(None))], batching=Batching(batch_size=None, max_tokens=900))
    with pytest.raises(ValueError, match="dynamic batches over several ranks need agree"):
        plan_rank(config, 0, 2, 0)
    assert len(plan_rank(config, 0, 1, 0).batches) > 0


def test_source_names_must_be_unique(three):
    with pytest.raises(ValueError, match="source names must be unique"):
        PlanConfig([Source(three[0]), Source(three[0])])
    PlanConfig([Source(three[0]), Source(three[0], name="again")])


def test_plan_command_previews_the_mixture(three):
    command = [sys.executable, "-m", "llaso_data.cli", "plan", str(three[0]), str(three[1]), "--weights", "1", "3",
               "--mixing", "uniform", "--batch-size", "8", "--world-size", "4", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    expected = preview(PlanConfig([Source(three[0], Selection(("train",))), Source(three[1], Selection(("train",)), 3.0)],
                                  Mixing("uniform"), Batching(batch_size=8, audio_tokens_per_second=10)), 4)
    assert summary == json.loads(json.dumps(expected.to_dict()))
    assert abs(summary["quotas"]["instruct/SGC"] - 3 * summary["quotas"]["align/ASR"]) <= 3
    assert summary["distinct_tasks_per_batch"] >= 0.9 * summary["iid_tasks_per_batch"]
    text = subprocess.run(command[:-1], capture_output=True, text=True, timeout=120)
    assert "instruct/SGC" in text.stdout and "distinct tasks per batch" in text.stdout
    fitted = subprocess.run(command + ["--max-length", "300", "--template-tokens", "100"], capture_output=True,
                            text=True, timeout=120)
    assert fitted.returncode == 0, fitted.stderr
    sources = [Source(three[0], Selection(("train",))), Source(three[1], Selection(("train",)), 3.0)]
    expected = preview(PlanConfig(sources, Mixing("uniform"),
                                  Batching(batch_size=8, audio_tokens_per_second=10, max_length=300, template_tokens=100)), 4)
    assert json.loads(fitted.stdout) == json.loads(json.dumps(expected.to_dict()))
    untemplated = preview(PlanConfig(sources, Mixing("uniform"),
                                     Batching(batch_size=8, audio_tokens_per_second=10, max_length=300)), 4)
    assert expected.dropped["too_long"] > untemplated.dropped.get("too_long", 0)
    bad = subprocess.run([sys.executable, "-m", "llaso_data.cli", "plan", str(three[0]), "--weights", "1", "2"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "2 weights for 1 sources" in bad.stderr
