"""The streaming loader on real converted shards: rank balance, exact quotas, shuffling,
dynamic batches, exact resume, and safety against planted or truncated members."""

from __future__ import annotations

import dataclasses
import io
import pickle
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
import soxr
import torch

from llaso_data.stream.plan import (Batching, Mixing, PlanConfig, Selection, Source, padding_ratio, plan_rank,
                                    stratum_quotas)
from llaso_data.stream.loader import ShardStream, StreamConfig, StreamLoader
from llaso_synth.corpus import write_corpus
from llaso_data.stream.shard_reader import CorruptShardError
from llaso_train.features import float_chunks

from conftest import convert_in_process


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A converted synthetic corpus with many small, unevenly filled shards."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, seed=5, samples_per_task=4)
    out = tmp_path_factory.mktemp("shards")
    report = convert_in_process(root, out, samples_per_shard=3)
    assert report.identity_holds
    return out


def _served(plan) -> list[tuple[str, int]]:
    return [(plan.shard_names[plan.shard[s]], int(plan.offset[s])) for b in plan.batches for s in b]

def _keys_cut_and_resumed(config, rank: int, world_size: int, workers: int, cut: int) -> list:
    """The batch keys of one rank's epoch, read as ``cut`` batches, a state_dict, then a new
    loader resumed from that state to the end."""
    first = StreamLoader(ShardStream(config, rank, world_size), num_workers=workers)
    iterator = iter(first)
    head = [next(iterator)["keys"] for _ in range(cut)]
    state = first.state_dict()
    del iterator
    resumed = StreamLoader(ShardStream(config, rank, world_size), num_workers=workers)
    resumed.load_state_dict(state)
    return head + [b["keys"] for b in resumed]



@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [1, 3, 5])
def test_equal_batches_per_rank_and_no_sample_twice(shards, world_size, batch_size):
    config = PlanConfig([Source(shards, Selection(None))], batching=Batching(batch_size=batch_size), seed=1)
    plans = [plan_rank(config, 0, world_size, r) for r in range(world_size)]
    counts = {len(p.batches) for p in plans}
    assert len(counts) == 1
    served = [x for p in plans for x in _served(p)]
    assert len(served) == len(set(served))
    total = pq.read_metadata(shards / "index.parquet").num_rows
    assert len(served) == total // (world_size * batch_size) * world_size * batch_size
    assert all(len(b) == batch_size for p in plans for b in p.batches)


def test_fewer_shards_than_ranks_times_workers(shards):
    selection = Selection(("train",), ("text_audio",), ("ASR",))
    manifest = pq.read_table(shards / "manifest.parquet").to_pylist()
    asr_shards = [r for r in manifest if r["split"] == "train" and r["task"] == "ASR" and r["modality"] == "text_audio"]
    assert len(asr_shards) < 4 * 3
    config = StreamConfig(PlanConfig([Source(shards, selection)], batching=Batching(batch_size=1)))
    keys_per_rank = []
    for rank in range(4):
        loader = StreamLoader(ShardStream(config, rank=rank, world_size=4), num_workers=3)
        keys_per_rank.append([k for batch in loader for k in batch["keys"]])
    assert len({len(k) for k in keys_per_rank}) == 1 and keys_per_rank[0]
    flat = [k for keys in keys_per_rank for k in keys]
    assert len(flat) == len(set(flat))


def test_padding_fills_the_remainder_with_declared_repeats(shards):
    total = pq.read_metadata(shards / "index.parquet").num_rows
    batch_size = next(b for b in (4, 5, 7, 11) if total % (3 * b))
    config = PlanConfig([Source(shards, Selection(None))], batching=Batching(batch_size=batch_size, remainder="pad"))
    plans = [plan_rank(config, 0, 3, r) for r in range(3)]
    served = [x for p in plans for x in _served(p)]
    index = pq.read_table(shards / "index.parquet", columns=["shard", "offset"]).to_pylist()
    assert set(served) == {(row["shard"], row["offset"]) for row in index}   # every sample, nothing else
    assert len(set(served)) == total
    assert len(served) - total == sum(p.padded_slots for p in plans) > 0
    assert len({len(p.batches) for p in plans}) == 1


def test_quota_mixing_is_exact_over_an_epoch(shards):
    weights = {"ASR": 0.5, "SGC": 0.3, "ER": 0.2}
    mixing = Mixing("explicit", weights=weights, epoch_samples=60)
    config = PlanConfig([Source(shards, Selection(None))], mixing=mixing, batching=Batching(batch_size=5))
    plans = [plan_rank(config, 0, 2, r) for r in range(2)]
    manifest = {r["shard"]: r["task"] for r in pq.read_table(shards / "manifest.parquet").to_pylist()}
    served = Counter(manifest[shard] for p in plans for shard, _ in _served(p))
    assert served == {"ASR": 30, "SGC": 18, "ER": 12}
    # ASR is up-sampled (more quota than samples): whole passes, declared by repetition only
    asr = [x for p in plans for x in _served(p) if manifest[x[0]] == "ASR"]
    asr_size = sum(r["num_samples"] for r in pq.read_table(shards / "manifest.parquet").to_pylist() if r["task"] == "ASR")
    assert max(Counter(asr).values()) == -(-30 // asr_size)
    # every task: up-sampled by whole passes when its quota exceeds its size, else no repeats
    sizes = Counter()
    for row in pq.read_table(shards / "manifest.parquet").to_pylist():
        sizes[row["task"]] += row["num_samples"]
    for task, quota in (("SGC", 18), ("ER", 12)):
        picked = Counter(x for p in plans for x in _served(p) if manifest[x[0]] == task)
        assert max(picked.values()) == -(-quota // sizes[task]), task
        assert len(picked) == min(quota, sizes[task]), task


def test_quota_modes():
    sizes = {("a", "ASR"): 900, ("a", "SGC"): 90, ("a", "ER"): 10}
    assert stratum_quotas(sizes, Mixing("natural")) == sizes
    assert stratum_quotas(sizes, Mixing("uniform")) == {("a", "ASR"): 334, ("a", "ER"): 333, ("a", "SGC"): 333}
    tempered = stratum_quotas(sizes, Mixing("temperature", temperature=2.0))
    assert sum(tempered.values()) == 1000 and tempered["a", "ER"] > 10 and tempered["a", "ASR"] < 900
    explicit = stratum_quotas(sizes, Mixing("explicit", weights={"ASR": 1, "ER": 1}, epoch_samples=7))
    assert explicit in ({("a", "ASR"): 4, ("a", "ER"): 3, ("a", "SGC"): 0}, {("a", "ASR"): 3, ("a", "ER"): 4, ("a", "SGC"): 0})
    # a source weight multiplies the mode's weight of each of its strata
    two = {("a", "ASR"): 100, ("b", "ASR"): 100, ("b", "ER"): 100}
    assert stratum_quotas(two, Mixing("uniform"), {"a": 2.0, "b": 1.0}) == {
        ("a", "ASR"): 150, ("b", "ASR"): 75, ("b", "ER"): 75}


def test_shuffle_decorrelates_neighbours_and_changes_per_epoch(shards):
    config = PlanConfig([Source(shards, Selection(None))], batching=Batching(batch_size=1), shuffle_block=64)
    first = plan_rank(config, 0, 1, 0)
    emitted = np.array([s for b in first.batches for s in b])
    read_neighbours = np.mean(np.abs(np.diff(emitted)) == 1)  # neighbours also adjacent in the shards
    assert read_neighbours < 0.1
    index = pq.read_table(shards / "index.parquet").to_pylist()
    ordinal = {(r["shard"], r["offset"]): (r["source"], r["ordinal"]) for r in index}
    pairs = [(ordinal[a], ordinal[b]) for a, b in zip(_served(first)[:-1], _served(first)[1:])]
    same_file_neighbours = sum(a[0] == b[0] and abs(a[1] - b[1]) == 1 for a, b in pairs)
    assert same_file_neighbours < 0.05 * len(pairs)
    second = plan_rank(config, 1, 1, 0)
    assert _served(first) != _served(second) and sorted(_served(first)) == sorted(_served(second))


def test_dynamic_batches_keep_equal_counts_and_reduce_padding(shards):
    dynamic = Batching(batch_size=None, max_tokens=600, audio_tokens_per_second=25)
    config = PlanConfig([Source(shards, Selection(None))], batching=dynamic, shuffle_block=128)
    own = [len(plan_rank(config, 0, 3, r, agree=lambda n: n).batches) for r in range(3)]
    plans = [plan_rank(config, 0, 3, r, agree=lambda n: min(own)) for r in range(3)]
    assert {len(p.batches) for p in plans} == {min(own)}
    assert sum(p.dropped_batches for p in plans) == sum(own) - 3 * min(own)
    for plan in plans:
        costs = plan.seconds * 25 + plan.chars / 4
        for batch in plan.batches:
            assert len(batch) == 1 or costs[batch].max() * len(batch) <= 600
    fixed = PlanConfig([Source(shards, Selection(None))], batching=Batching(batch_size=4, audio_tokens_per_second=25))
    assert padding_ratio(plans[0], dynamic) < padding_ratio(plan_rank(fixed, 0, 3, 0), fixed.batching)


@pytest.mark.parametrize("world_size,workers", [(1, 0), (2, 1), (3, 2), (4, 3), (2, 3)])
def test_resume_yields_exactly_the_remaining_samples(shards, world_size, workers):
    config = StreamConfig(PlanConfig([Source(shards, Selection(None))], batching=Batching(batch_size=3)))
    for rank in range(world_size):
        full = [b["keys"] for b in StreamLoader(ShardStream(config, rank, world_size), num_workers=workers)]
        planned = plan_rank(config.plan, 0, world_size, rank)
        assert len(full) == len(planned.batches)
        assert _keys_cut_and_resumed(config, rank, world_size, workers, len(full) // 2 + rank) == full


def test_batches_carry_16khz_windows_of_at_most_30_s(shards):
    config = StreamConfig(PlanConfig([Source(shards, Selection(None))], batching=Batching(batch_size=4)))
    longest = 0
    for batch in StreamLoader(ShardStream(config), num_workers=0):
        for sample_number, length in zip(batch["chunk_sample"].tolist(), batch["chunk_lengths"].tolist()):
            sample = batch["samples"][sample_number]
            assert 0 < length <= 30 * 16000
            longest = max(longest, sum(sample.durations))
        assert batch["chunks"].dtype in (torch.int16, torch.float32)
        assert batch["chunks"].shape[0] == len(batch["chunk_lengths"])
    assert longest > 30  # the synthetic corpus has clips over 30 s, which were windowed


def _clip_bytes(shards: Path) -> dict[tuple[str, int], bytes]:
    """Every clip member of every shard, read with tarfile: (sample key, clip index) -> bytes."""
    clips = {}
    for path in shards.rglob("*.tar"):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, kind = member.name.split(".")[:2]
                if kind.startswith("audio"):
                    clips[key, int(kind[len("audio"):])] = tar.extractfile(member).read()
    return clips


def _float_decode(data: bytes) -> np.ndarray:
    """soundfile's float32 decode, channel mean, soxr HQ to 16 kHz: the float32 waveform."""
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    return soxr.resample(mono, rate, 16000, quality="HQ") if rate != 16000 else mono


@pytest.mark.parametrize("workers", [0, 1])
def test_chunks_are_each_clip_exactly_as_soundfile_decodes_it(shards, workers):
    """16-bit 16 kHz mono clips travel as int16, the rest as float32; either way float_chunks
    gives the float32 waveform bit for bit, cut into 30 s windows, zero-padded."""
    clips = _clip_bytes(shards)
    config = StreamConfig(PlanConfig([Source(shards, Selection(None))], batching=Batching(batch_size=1)))
    dtypes = Counter()
    for batch in StreamLoader(ShardStream(config), num_workers=workers):
        (sample,) = batch["samples"]
        chunks, lengths = batch["chunks"], batch["chunk_lengths"].tolist()
        dtypes[chunks.dtype] += 1
        waveforms = float_chunks(chunks).numpy()
        expected = []
        for clip in range(len(sample.audio)):
            data = clips[sample.key, clip]
            with soundfile.SoundFile(io.BytesIO(data)) as info:
                pcm16 = (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert chunks.dtype == torch.float32 or pcm16
            wave = _float_decode(data)
            expected += [wave[i:i + 30 * 16000] for i in range(0, len(wave), 30 * 16000)][:20]
        assert lengths == [len(w) for w in expected]
        for row, window in enumerate(expected):
            assert np.array_equal(waveforms[row, :len(window)], window)
            assert not waveforms[row, len(window):].any()
    assert dtypes[torch.int16] > 0 and dtypes[torch.float32] > 0


def _plant(shards: Path, tmp_path: Path, mutate) -> tuple[Path, str]:
    """Copy the corpus and rewrite its first shard with ``mutate(members) -> members``."""
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    index = pq.read_table(copy / "index.parquet").to_pylist()
    shard = index[0]["shard"]
    with tarfile.open(copy / shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    members = mutate(members)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (copy / shard).write_bytes(buffer.getvalue())
    return copy, shard


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_planted_pickle_members_are_never_unpickled(shards, tmp_path):
    marker = tmp_path / "pwned"

    def plant(members):
        name, _ = members[1]  # the first sample's audio0 member
        stem = name.split(".")[0]
        return [members[0], (f"{stem}.audio0.pyd", pickle.dumps(_Exploit(str(marker))))] + members[2:]

    copy, shard = _plant(shards, tmp_path, plant)
    config = StreamConfig(PlanConfig([Source(copy, Selection(None))], batching=Batching(batch_size=1)))
    with pytest.raises(CorruptShardError, match=rf"{shard}: member .*\.audio0\.pyd"):
        for _ in StreamLoader(ShardStream(config), num_workers=0):
            pass
    skipping = StreamLoader(ShardStream(StreamConfig(config.plan, on_corrupt="skip")), num_workers=0)
    served = sum(len(b["keys"]) for b in skipping)
    # the planted member shifts the members after it, so the shard's later samples fail too
    assert skipping.skipped["corrupt"] >= 1 and served == len(skipping) - skipping.skipped["corrupt"]
    assert not marker.exists()
    # the payload is live: unpickling it is exactly what would have created the marker
    pickle.loads(pickle.dumps(_Exploit(str(marker))))
    assert marker.exists()


def test_truncated_shard_gives_the_documented_error(shards, tmp_path):
    copy, shard = _plant(shards, tmp_path, lambda members: members)
    data = (copy / shard).read_bytes()
    (copy / shard).write_bytes(data[: len(data) // 3])
    config = StreamConfig(PlanConfig([Source(copy, Selection(None))], batching=Batching(batch_size=2)))
    with pytest.raises(CorruptShardError, match=rf"{shard}: .*(truncated|no valid member header)"):
        for _ in StreamLoader(ShardStream(config), num_workers=1):
            pass
    skipping = StreamLoader(ShardStream(StreamConfig(config.plan, on_corrupt="skip")), num_workers=1)
    list(skipping)
    assert skipping.skipped["corrupt"] >= 1


def test_objects_alive_at_the_workers_fork_stay_out_of_collections_for_that_epoch_only(shards):
    """With workers, the collector skips what the fork shares (no copy-on-write from a full
    collection) while the epoch runs, and collects it again once the epoch ends or is left."""
    import gc

    config = StreamConfig(PlanConfig([Source(shards, Selection(None))], batching=Batching(batch_size=2)))
    assert gc.get_freeze_count() == 0
    during = [gc.get_freeze_count() for _ in StreamLoader(ShardStream(config), num_workers=1)]
    assert min(during) > 10_000 and gc.get_freeze_count() == 0
    epoch = iter(StreamLoader(ShardStream(config), num_workers=1))
    next(epoch)
    assert gc.get_freeze_count() > 10_000
    inner = iter(StreamLoader(ShardStream(config), num_workers=1))  # e.g. an evaluation inside the epoch
    next(inner)
    inner.close()
    assert gc.get_freeze_count() > 10_000  # still frozen for the outer epoch
    epoch.close()  # a trainer that stops mid-epoch
    assert gc.get_freeze_count() == 0
    assert {gc.get_freeze_count() for _ in StreamLoader(ShardStream(config), num_workers=0)} == {0}


def test_rendered_batches_place_every_audio_chunk_on_its_placeholders(shards):
    from llaso_data.stream.chat import ChatFormat, renderer, special_token_ids, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    audio_pad = special_token_ids(tokenizer)[ChatFormat().audio_pad]
    config = StreamConfig(PlanConfig([Source(shards, Selection(None))], batching=Batching(batch_size=4)))
    stream = ShardStream(config, render=renderer(tokenizer), pad_id=tokenizer.pad_token_id)
    batches = 0
    for batch in StreamLoader(stream, num_workers=1):
        ids, labels = batch["input_ids"], batch["labels"]
        covered = torch.zeros_like(ids)
        for sample, start, count in zip(batch["chunk_sample"].tolist(), batch["chunk_start"].tolist(),
                                        batch["chunk_tokens"].tolist()):
            assert (ids[sample, start:start + count] == audio_pad).all()
            covered[sample, start:start + count] += 1
        assert ((ids == audio_pad) == (covered == 1)).all()  # every placeholder filled exactly once
        assert (labels[ids == audio_pad] == -100).all()
        for row, sample in enumerate(batch["samples"]):
            supervised = labels[row][labels[row] != -100].tolist()
            assert tokenizer.decode(supervised) == sample.label + "<|eot_id|>" or sample.task == "CONV"
        batches += 1
    assert batches == len(stream)


def test_plans_read_each_shard_from_its_manifest_row_range_and_refuse_a_reordered_index(shards, tmp_path):
    """The index is read by the row ranges the manifest implies (rows grouped by shard in
    manifest order); an index whose rows are elsewhere is refused, naming the shard."""
    config = PlanConfig([Source(shards, Selection(("train",)))], batching=Batching(batch_size=2))
    index = pq.read_table(shards / "index.parquet").to_pylist()
    by_position = {(r["shard"], r["offset"]): r for r in index}
    plan = plan_rank(config, 0, 1, 0)
    for slot in range(len(plan.offset)):
        row = by_position[plan.shard_names[plan.shard[slot]], int(plan.offset[slot])]
        assert row["split"] == "train" and row["text_chars"] == plan.chars[slot]
        assert np.float32(row["audio_seconds"]) == plan.seconds[slot]
    copy = tmp_path / "reordered"
    shutil.copytree(shards, copy)
    table = pq.read_table(copy / "index.parquet")
    pq.write_table(table.take(np.arange(table.num_rows)[::-1]), copy / "index.parquet")
    with pytest.raises(ValueError, match=r"index\.parquet: row \d+ is not a sample of train/.*manifest order"):
        plan_rank(dataclasses.replace(config, sources=[Source(copy, Selection(("train",)))]), 0, 1, 0)


@pytest.mark.parametrize("world_size,workers", [(1, 0), (2, 3), (3, 2)])
def test_several_sources_stream_prefixed_keys_and_resume_exactly(shards, tmp_path_factory, world_size, workers):
    """Three sources (the corpus, a copy of it restricted to two tasks, and its test split)
    with uneven shard counts: equal batch counts, keys unique across sources, and resume
    yields exactly the remaining batches."""
    copy = tmp_path_factory.getbasetemp() / "second-source"
    if not copy.exists():
        shutil.copytree(shards, copy)
    sources = [Source(shards, Selection(("train",)), 1.0, "a"), Source(copy, Selection(None, None, ("ASR", "SGC")), 2.0, "b"),
               Source(shards, Selection(("test",)), 0.5, "c")]
    config = StreamConfig(PlanConfig(sources, Mixing("natural", epoch_samples=90), Batching(batch_size=3)))
    runs = []
    for rank in range(world_size):
        full = [b["keys"] for b in StreamLoader(ShardStream(config, rank, world_size), num_workers=workers)]
        runs.append(full)
        assert _keys_cut_and_resumed(config, rank, world_size, workers, len(full) // 2) == full
    assert len({len(r) for r in runs}) == 1 and runs[0]
    keys = [k for r in runs for batch in r for k in batch]
    assert {k.split("/")[0] for k in keys} == {"a", "b", "c"}
    plans = [plan_rank(config.plan, 0, world_size, r) for r in range(world_size)]
    assert Counter(k.split("/")[0] for k in keys) == Counter(
        p.strata[s][0] for p in plans for b in p.batches for s in p.stratum[b])
    # repeats only where a stratum is up-sampled (quota over its size)
    sizes = Counter()
    for name, root, selection in (("a", shards, sources[0].selection), ("b", copy, sources[1].selection),
                                  ("c", shards, sources[2].selection)):
        for row in pq.read_table(root / "manifest.parquet").to_pylist():
            if selection.keeps(row["split"], row["modality"], row["task"]):
                sizes[name, row["task"]] += row["num_samples"]
    upsampled = {k for k, q in plans[0].quotas.items() if q > sizes[k]}
    repeated = [k for k, n in Counter(keys).items() if n > 1]
    assert all(any(k.startswith(f"{src}/") for src, _ in upsampled) for k in repeated)


def test_readme_loader_example_takes_str_roots(shards, tmp_path_factory):
    """The README's loader example, verbatim in shape, with ``str`` roots: two sources,
    temperature mixing, dynamic batches agreed over 2 ranks, 2 workers, a renderer; it
    serves the same keys as the same example with ``Path`` roots, and ``preview`` and
    ``plan_rank`` take the same ``str`` roots."""
    from llaso_data.stream.chat import renderer, tiny_tokenizer
    from llaso_data.stream.preview import preview

    align = tmp_path_factory.getbasetemp() / "llaso-align"
    if not align.exists():
        shutil.copytree(shards, align)

    def config(root_type):
        return StreamConfig(PlanConfig(
            sources=[Source(root_type(align), Selection(splits=("train",)), weight=1.0),
                     Source(root_type(shards), Selection(splits=("train",), tasks=None), weight=2.0)],
            mixing=Mixing("temperature", temperature=2.0),
            batching=Batching(batch_size=None, max_tokens=8000, max_length=2048), seed=0))

    tokenizer = tiny_tokenizer()
    served = {}
    for root_type in (str, Path):
        counts = [len(plan_rank(config(root_type).plan, 0, 2, r, agree=lambda n: n).batches) for r in range(2)]
        keys = []
        for rank in range(2):
            loader = StreamLoader(ShardStream(config(root_type), rank=rank, world_size=2,
                                              render=renderer(tokenizer), pad_id=tokenizer.pad_token_id,
                                              agree=lambda n: min(counts)),
                                  num_workers=2)
            loader.set_epoch(0)
            for batch in loader:
                assert float_chunks(batch["chunks"]).dtype == torch.float32
                assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
                keys += batch["keys"]
            assert loader.state_dict()["batches_done"] == min(counts)
        served[root_type] = keys
    assert served[str] == served[Path] and served[str]
    assert {k.split("/")[0] for k in served[str]} == {"llaso-align", shards.name}
    assert preview(config(str).plan, 2).to_dict() == preview(config(Path).plan, 2).to_dict()


def test_shard_reader_takes_str_and_path_for_the_same_shard(shards):
    from llaso_data.stream.shard_reader import ShardReader

    row = pq.read_table(shards / "index.parquet").slice(0, 1).to_pylist()[0]
    reader = ShardReader(4)
    sample, _ = reader.read(str(shards / row["shard"]), row["offset"])
    again, _ = reader.read(shards / row["shard"], row["offset"])
    assert sample == again and reader.open_count == 1
    reader.release(shards / row["shard"])
    assert reader.open_count == 0
