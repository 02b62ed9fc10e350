"""Loader benchmark: the shard stream against LLaSO's merged-JSON loader, and the planner at
LLaSO scale.

Everything runs in one call, in a temporary folder under ``--workdir`` (deleted at the end):

1. **Corpus.** ``--records`` (default 1,500) LLaSO ASR records in the LLaSO JSON layout
   (``text_audio/ASR_train.json``, records shaped like
   ``tests/fixtures/llaso_eval_sample/text_audio/ASR_test.json``), each with its own clip:
   16 kHz mono 16-bit wav of 5-15 s (uniform), a slice of a speech-like signal, written
   with soundfile. It is converted in-process on a local Ray (2 CPUs) with
   ``samples_per_shard=100`` (the realistic corpus) and, for part 2, its first 1,000
   records are converted again with ``samples_per_shard=1000`` (one shard of exactly
   ``S = 1000`` samples).

2. **Throughput per worker core** (best of ``--repeats``, default 2, for the stream; the
   baseline runs ``--baseline-repeats`` times, default 1, since it is slow):

   * stream: ``StreamLoader(ShardStream(StreamConfig(out, PlanConfig(Selection(None),
     batching=Batching(batch_size=8))), rank=0, world_size=1), num_workers=W)`` over one
     epoch, the clock started before ``ShardStream`` is built (manifest + planning
     included);
   * merged JSON (LLaSO): ``json.load`` of one merged JSON of all records (clock started
     before it), then a map-style torch ``Dataset`` in a ``DataLoader(batch_size=8,
     num_workers=W)`` whose ``__getitem__`` reads the record's original clip with
     soundfile, makes it 16 kHz mono (soxr when the rate differs) and computes Whisper
     log-mel features on CPU with ``WhisperFeatureExtractor(feature_size=128)(audio,
     sampling_rate=16000, return_tensors="np")`` (padded to 30 s, as LLaSO does).
     ``--baseline-records N`` limits the loop to the first N records (the json.load of
     the whole merged file still counts); by default all records.

   * reference: the same stream epoch run with the code of git revision ``--reference``
     (default ``49ef4b6``, the block-shuffle planner that laid ranks out as whole shards),
     extracted with ``git archive``, on the same corpus (``stream_over_reference_per_cpu_s``,
     goal >= 1);

   for W = 1 and 2, each epoch in a fresh child process (imports before the clock;
   ``OPENBLAS_NUM_THREADS=1`` so that a worker is one core). Samples/s divided by W =
   samples/s per worker core (``speedup`` = stream / merged JSON, goal >= 10). As the
   wall clock depends on what else the machine runs, the child also reports its CPU
   seconds (its own plus its joined DataLoader workers', ``getrusage``), giving samples
   per CPU-second and ``speedup_per_cpu_s``, a figure that load on the machine barely
   moves. The page cache is warmed (every audio file and shard read once) before each
   timed run.

3. **Time to first batch and peak RSS at LLaSO scale** (``--sizes``, default 2.55M and
   25.5M samples): a simulated converted corpus is built WITHOUT converting: the
   1,000-sample real shard is hard-linked (``os.link``) as ``size / 1000`` shards under
   ~25 realistic strata (``train/<modality>/<task>/<task>-NNNNNN.tar``, LLaSO-Align's
   12M ALIGN samples plus the 20 LLaSO-Instruct tasks over three modalities) in two
   sources (``align/``: ALIGN; ``instruct/``: the rest), the stream mixing both, each with
   the real shard's 1,000 index rows (same offsets, so every row points at a real sample;
   keys made unique per shard). ``manifest.parquet`` and ``index.parquet`` are written with
   the schemas of ``llaso_data.manifest`` (index streamed by ``pyarrow.parquet.ParquetWriter``
   in row groups of 65,536 rows, grouped by shard in sorted shard order, as the converter
   writes it). Then, for world sizes 8 and 64 (rank 0), a FRESH child process measures the
   seconds of its imports, then from building ``ShardStream`` to the first batch of
   ``iter(StreamLoader(ShardStream(...), num_workers=0))`` (split into manifest load,
   planning and the batch itself), and its peak RSS (``VmHWM``); after the clock, the
   mixture of its batches (mean distinct tasks per batch against an i.i.d. shuffle's,
   longest run of one-task batches) and the shards a worker keeps open. Best of
   ``--repeats`` (time: minimum; RSS: maximum). Goals: < 5 s and < 1 GB per rank.

4. **Padding ratio** (``llaso_data.stream.plan.padding_ratio``) of dynamic batches
   (``Batching(batch_size=None, max_tokens=4000)``) against fixed batches of 8 on the
   realistic corpus (one rank).

    python bench/loader.py                    # readable summary
    python bench/loader.py --json             # one JSON object
    python bench/loader.py --sizes 2550000 --baseline-records 240   # quick
    python bench/loader.py --profile          # also cProfile + tracemalloc the largest
                                              # first-batch child (world size 8), to stderr
    python bench/loader.py --scale-only       # part 3 only (plus the one real shard it needs)

Disk: ~0.5 GB of audio, ~0.8 GB of shards, and per simulated size its index
(~12 bytes/row: 312 MB at 25.5M); hard links cost nothing. About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_STARTED = time.perf_counter()  # the child's clock: imports count from here

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "llaso_eval_sample" / "text_audio" / "ASR_test.json"
REAL_SHARD_SAMPLES = 1000
ROW_GROUP_ROWS = 65536
GOALS = {"speedup": 10.0, "first_batch_s": 5.0, "peak_rss_mb": 1024.0}

# LLaSO-like strata: (modality, task, millions of samples). LLaSO-Align: 12M ASR
# (ALIGN); LLaSO-Instruct: 13.5M over 20 tasks and three modalities. Scaled to the size.
STRATA = (
    ("text_audio", "ALIGN", 12.0),
    ("text_audio", "ASR", 1.6), ("text_audio", "PR", 0.5), ("text_audio", "AR", 0.5),
    ("text_audio", "SGC", 0.6), ("text_audio", "AC", 0.6), ("text_audio", "IP", 0.5),
    ("text_audio", "SCR", 0.4), ("text_audio", "SSD", 0.4), ("text_audio", "EE", 0.4),
    ("text_audio", "ER", 0.8), ("text_audio", "EIE", 0.3), ("text_audio", "SV", 0.4),
    ("text_audio", "PSWL", 0.3), ("text_audio", "PSSL", 0.3), ("text_audio", "VSC", 0.3),
    ("text_audio", "IC", 0.3), ("text_audio", "ISC", 0.3), ("text_audio", "PP", 0.3),
    ("text_audio", "VC", 0.3), ("text_audio", "AQA", 1.0),
    ("audio_text", "AQA", 1.2), ("audio_text", "ER", 0.3), ("audio_text", "SGC", 0.2),
    ("pure_audio", "AQA", 1.5),
)


def _llaso_imports():
    try:
        import llaso_data  # noqa: F401
    except ImportError:  # not installed: use the checkout
        sys.path.insert(0, str(REPO))


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def rss_mb() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Realistic corpus
# --------------------------------------------------------------------------------------


def _speech_like(seconds: float, rate: int, rng):
    """A speech-like mono signal: voiced harmonics plus shaped noise, syllable envelope."""
    import numpy as np

    n = int(seconds * rate)
    t = np.arange(n, dtype=np.float64) / rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 9))
    noise = np.convolve(rng.standard_normal(n), np.ones(6) / 6, mode="same")
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 2
    pauses = (np.sin(2 * np.pi * 0.25 * t) > -0.7).astype(np.float64)
    signal = (0.25 * voiced + 0.05 * noise) * (0.1 + envelope) * pauses + 0.002 * rng.standard_normal(n)
    return (0.6 * signal / max(np.abs(signal).max(), 1e-9)).astype(np.float32)


def write_corpus(root: Path, records: int, seed: int = 0) -> list[dict]:
    """``root/text_audio/ASR_train.json`` with ``records`` ASR records, one 5-15 s 16 kHz
    mono wav each under ``root/mls_bench/``; returns the records."""
    import numpy as np
    import soundfile

    rng = np.random.default_rng(seed)
    source = _speech_like(60.0, 16000, rng)
    templates = json.loads(FIXTURE.read_text("utf-8"))
    out = []
    for i in range(records):
        seconds = float(rng.uniform(5.0, 15.0))
        n = int(seconds * 16000)
        start = int(rng.integers(0, len(source) - n))
        wave = source[start:start + n] * float(rng.uniform(0.3, 1.0))
        relative = f"mls_bench/train_16000/{i // 250:03d}/bench_{i:06d}.wav"
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, wave, 16000, subtype="PCM_16")
        template = templates[i % len(templates)]
        folder, name = relative.rsplit("/", 1)
        out.append({**template, "index": i, "voice": [f"{folder}\\{name}"]})
    (root / "text_audio").mkdir(parents=True, exist_ok=True)
    (root / "text_audio" / "ASR_train.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    return out


def warm_cache(paths: list[Path]) -> None:
    """Read every file once (``cat > /dev/null``)."""
    subprocess.run(["xargs", "-0", "cat"], input="\0".join(map(str, paths)).encode(),
                   stdout=subprocess.DEVNULL, check=True)


# --------------------------------------------------------------------------------------
# Part 1: throughput
# --------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its reaped children (the
    DataLoader workers, once joined)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def stream_epoch(out: Path, workers: int) -> dict:
    """One epoch of the stream, planning included: samples, seconds, CPU seconds."""
    from llaso_data.stream.plan import Batching, PlanConfig, Selection, Source
    from llaso_data.stream.loader import ShardStream, StreamConfig, StreamLoader

    cpu, started = cpu_seconds(), time.perf_counter()
    config = StreamConfig(PlanConfig([Source(out, Selection(None))], batching=Batching(batch_size=8)))
    loader = StreamLoader(ShardStream(config, rank=0, world_size=1), num_workers=workers)
    samples = 0
    for batch in loader:
        samples += len(batch["keys"])
    seconds = time.perf_counter() - started
    del loader, batch
    return {"samples": samples, "seconds": seconds, "cpu_s": cpu_seconds() - cpu}


class MergedJsonDataset:
    """LLaSO's way: records from one merged JSON, audio read and featurised per item."""

    def __init__(self, records: list[dict], audio_root: Path):
        from transformers import WhisperFeatureExtractor

        self.records, self.audio_root = records, audio_root
        self.extractor = WhisperFeatureExtractor(feature_size=128)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        import numpy as np
        import soundfile
        import soxr
        import torch

        record = self.records[i]
        path = self.audio_root / record["voice"][0].replace("\\", "/")
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
        if rate != 16000:
            mono = soxr.resample(mono, rate, 16000, quality="HQ")
        features = self.extractor(np.ascontiguousarray(mono), sampling_rate=16000,
                                  return_tensors="np")["input_features"][0]
        return {"input_features": torch.from_numpy(features),
                "text": record["conversations"][-1]["value"]}


def merged_json_epoch(merged: Path, audio_root: Path, workers: int, limit: int | None) -> dict:
    """One epoch of the merged-JSON loader, json.load included: samples, seconds, CPU
    seconds, the shape of a feature batch."""
    import torch
    from torch.utils.data import DataLoader, Subset

    cpu, started = cpu_seconds(), time.perf_counter()
    with open(merged, encoding="utf-8") as file:
        records = json.load(file)
    dataset = MergedJsonDataset(records, audio_root)  # map-style: __len__ + __getitem__
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    samples, shape = 0, None
    for batch in loader:
        samples += batch["input_features"].shape[0]
        shape = shape or list(batch["input_features"].shape)
    seconds = time.perf_counter() - started
    del loader, batch
    return {"samples": samples, "seconds": seconds, "cpu_s": cpu_seconds() - cpu, "batch_shape": shape}


def epoch_child(kind: str, path: str, audio_root: str, workers: int, limit: int) -> None:
    """In a fresh process: one epoch of ``stream`` or ``merged_json``; prints one JSON line."""
    _llaso_imports()
    import torch  # noqa: F401  (imports before the clock)

    import llaso_data.stream.loader  # noqa: F401
    if kind == "stream":
        result = stream_epoch(Path(path), workers)
    else:
        import transformers  # noqa: F401

        result = merged_json_epoch(Path(path), Path(audio_root), workers, limit or None)
    print(json.dumps(result), flush=True)


def run_epoch(kind: str, path: Path, audio_root: Path, workers: int, limit: int | None,
              checkout: Path | None = None) -> dict:
    """One epoch in a fresh child; ``checkout``: run it with that tree's code (its own
    ``bench/loader.py`` and packages) instead of this one's."""
    root = checkout or REPO
    command = [sys.executable, str(root / "bench" / "loader.py"), "--child-epoch", kind, str(path), str(audio_root),
               str(workers), str(limit or 0)]
    # one BLAS thread: a DataLoader worker is one core (numpy's OpenBLAS would otherwise
    # spread the baseline's mel projection over the other core too)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, env=env)
    if done.returncode:
        raise RuntimeError(f"{kind} epoch child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------
# Part 2: simulated LLaSO-scale corpus
# --------------------------------------------------------------------------------------


def _quotas(total: int, weights: list[float]) -> list[int]:
    import numpy as np

    exact = np.array(weights) / sum(weights) * total
    floors = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - floors))[:total - floors.sum()]:
        floors[i] += 1
    return floors.tolist()


SOURCES = {"align": lambda task: task == "ALIGN", "instruct": lambda task: task != "ALIGN"}


def build_simulated(real: Path, target: Path, samples: int) -> dict:
    """Two converted corpora under ``target`` (``align``: the ALIGN stratum; ``instruct``: the
    others), ``samples`` samples in all, made of hard links of ``real``'s one shard."""
    shards = samples // REAL_SHARD_SAMPLES
    counts = _quotas(shards, [w for _, _, w in STRATA])
    built = {}
    for name, keeps in SOURCES.items():
        mine = [(m, t, c) for (m, t, _), c in zip(STRATA, counts) if keeps(t)]
        built[name] = build_source(real, target / name, mine)
    return {"samples": sum(b["samples"] for b in built.values()), "shards": shards, "sources": built,
            "build_s": round(sum(b["build_s"] for b in built.values()), 1)}


def build_source(real: Path, target: Path, strata_counts: list[tuple[str, str, int]]) -> dict:
    """A converted corpus with ``count`` hard links of ``real``'s one shard per (modality, task)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from llaso_data.manifest import INDEX_FILE, INDEX_SCHEMA, MANIFEST_FILE, MANIFEST_SCHEMA, read_manifest
    from llaso_data.tasks import TASKS

    started = time.perf_counter()
    manifest = read_manifest(real).to_pylist()
    if len(manifest) != 1 or manifest[0]["num_samples"] != REAL_SHARD_SAMPLES:
        raise RuntimeError(f"{real}: expected one shard of {REAL_SHARD_SAMPLES} samples, got {manifest}")
    real_row = manifest[0]
    rows = pq.read_table(real / INDEX_FILE).filter(pc.field("shard") == real_row["shard"])
    if rows.num_rows != REAL_SHARD_SAMPLES:
        raise RuntimeError("real shard's index rows do not match its manifest row")
    size = REAL_SHARD_SAMPLES
    shards = sum(c for _, _, c in strata_counts)
    strata = []  # (name, modality, task)
    for modality, task, count in strata_counts:
        strata.extend((f"train/{modality}/{task}/{task}-{k:06d}.tar", modality, task) for k in range(count))
    strata.sort()
    target.mkdir(parents=True)
    real_tar = real / real_row["shard"]
    for folder in sorted({str(Path(name).parent) for name, _, _ in strata}):
        (target / folder).mkdir(parents=True)
    for name, _, _ in strata:
        os.link(real_tar, target / name)
    linked = time.perf_counter()

    names = pa.array([n for n, _, _ in strata], pa.string())
    modalities = pa.array([m for _, m, _ in strata], pa.string())
    tasks = pa.array([t for _, _, t in strata], pa.string())
    categories = pa.array([TASKS[t].category for _, _, t in strata], pa.string())
    sources = pa.array([f"{'LLaSO-Align' if t == 'ALIGN' else 'LLaSO-Instruct'}/{m}/{t}_train.json"
                        for _, m, t in strata], pa.string())
    suffixes = pa.array([f"-s{k:06d}" for k in range(shards)], pa.string())
    real_keys = rows["key"].combine_chunks()
    columns = {c: rows[c].to_numpy() for c in ("offset", "audio_seconds", "num_clips", "text_chars")}
    writer = pq.ParquetWriter(target / INDEX_FILE, INDEX_SCHEMA)
    total = shards * size
    for begin in range(0, total, ROW_GROUP_ROWS):
        row = np.arange(begin, min(begin + ROW_GROUP_ROWS, total), dtype=np.int64)
        shard, position = row // size, row % size
        shard_arr, position_arr = pa.array(shard), pa.array(position)
        table = pa.table({
            "key": pc.binary_join_element_wise(real_keys.take(position_arr), suffixes.take(shard_arr), ""),
            "shard": names.take(shard_arr),
            "offset": pa.array(columns["offset"][position], pa.int64()),
            "split": pa.array(np.full(len(row), "train", dtype=object), pa.string()),
            "modality": modalities.take(shard_arr), "task": tasks.take(shard_arr),
            "category": categories.take(shard_arr),
            "audio_seconds": pa.array(columns["audio_seconds"][position], pa.float64()),
            "num_clips": pa.array(columns["num_clips"][position], pa.int32()),
            "text_chars": pa.array(columns["text_chars"][position], pa.int64()),
            "source": sources.take(shard_arr),
            "ordinal": pa.array(row, pa.int64()),
        }, schema=INDEX_SCHEMA)
        writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
    writer.close()
    manifest_rows = [{"shard": n, "split": "train", "modality": m, "task": t, "category": TASKS[t].category,
                      "num_samples": size, "audio_seconds": real_row["audio_seconds"],
                      "bytes": real_row["bytes"], "sha256": real_row["sha256"]} for n, m, t in strata]
    pq.write_table(pa.Table.from_pylist(manifest_rows, schema=MANIFEST_SCHEMA), target / MANIFEST_FILE)
    metadata = pq.ParquetFile(target / INDEX_FILE).metadata
    return {"samples": total, "shards": shards, "strata": len(strata_counts), "samples_per_shard": size,
            "index_row_groups": metadata.num_row_groups,
            "index_mb": round((target / INDEX_FILE).stat().st_size / 2**20, 1),
            "build_s": round(time.perf_counter() - started, 1), "link_s": round(linked - started, 1)}


def first_batch_child(out: str, world_size: int, profile: str | None) -> None:
    """In a fresh process: imports, then ShardStream -> first batch; prints one JSON line."""
    import_started = time.perf_counter()
    _llaso_imports()
    import torch  # noqa: F401

    from llaso_data.stream.plan import Batching, PlanConfig, Selection, Source
    from llaso_data.stream.loader import ShardStream, StreamConfig, StreamLoader
    from llaso_data.stream.preview import summarize

    imported = time.perf_counter()
    result = {"interpreter_s": round(import_started - _STARTED, 3), "import_s": round(imported - import_started, 3),
              "rss_after_imports_mb": round(rss_mb(), 1)}
    profiler = None
    if profile and profile.endswith(".tracemalloc.txt"):
        import tracemalloc

        tracemalloc.start(10)
    elif profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    begin = time.perf_counter()
    sources = [Source(Path(out) / name, Selection(None)) for name in SOURCES]
    config = StreamConfig(PlanConfig(sources, batching=Batching(batch_size=8)))
    stream = ShardStream(config, rank=0, world_size=world_size)
    built = time.perf_counter()
    plan = stream.plan  # what iter() would compute first; timed apart
    planned = time.perf_counter()
    batch = next(iter(StreamLoader(stream, num_workers=0)))
    done = time.perf_counter()
    if profiler is not None:
        import pstats

        profiler.disable()
        with open(profile, "w") as report:
            stats = pstats.Stats(profiler, stream=report)
            stats.sort_stats("cumulative").print_stats(35)
            stats.sort_stats("tottime").print_stats(25)
    elif profile:
        import tracemalloc

        snapshot = tracemalloc.take_snapshot()
        _, traced_peak = tracemalloc.get_traced_memory()
        with open(profile, "w") as report:
            report.write(f"tracemalloc: peak traced {traced_peak / 2**20:.1f} MiB; live at the first batch:\n")
            for stat in snapshot.statistics("lineno")[:15]:
                report.write(f"  {stat}\n")
    result.update({
        "first_batch_s": round(done - begin, 3), "manifest_s": round(built - begin, 3),
        "plan_s": round(planned - built, 3), "batch_s": round(done - planned, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1), "slots": int(len(plan.shard)),
        "batches": len(plan.batches), "shards_touched": len(plan.shard_names),
        "batch_samples": len(batch["keys"]), "open_shards": plan.open_shards,
    })
    summary = summarize([plan], config.plan)  # after the clock: the mixture of rank 0's batches
    result.update({"distinct_tasks_per_batch": summary.distinct_tasks_per_batch,
                   "iid_tasks_per_batch": summary.iid_tasks_per_batch,
                   "longest_one_task_run": summary.longest_one_task_run})
    print(json.dumps(result), flush=True)


def run_first_batch(out: Path, world_size: int, repeats: int, profile: str | None = None) -> dict:
    runs = []
    for _ in range(repeats):
        command = [sys.executable, str(Path(__file__).resolve()), "--child-first-batch", str(out), str(world_size)]
        if profile:
            command += ["--child-profile", profile]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if done.returncode:
            raise RuntimeError(f"first-batch child failed:\n{done.stderr[-4000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["first_batch_s"])
    return {**best, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "first_batch_s_runs": [r["first_batch_s"] for r in runs]}


# --------------------------------------------------------------------------------------
# Part 3: padding
# --------------------------------------------------------------------------------------


def padding(out: Path) -> dict:
    import numpy as np

    from llaso_data.stream.plan import Batching, PlanConfig, Selection, Source, padding_ratio, plan_rank

    result = {}
    for label, batching in (("dynamic_max_tokens_4000", Batching(batch_size=None, max_tokens=4000)),
                            ("fixed_batch_8", Batching(batch_size=8))):
        plan = plan_rank(PlanConfig([Source(out, Selection(None))], batching=batching), 0, 1, 0)
        sizes = np.array([len(b) for b in plan.batches])
        result[label] = {"padding_ratio": round(padding_ratio(plan, batching), 4), "batches": len(plan.batches),
                         "mean_batch_samples": round(float(sizes.mean()), 2),
                         "samples": int(sizes.sum())}
    return result


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def _throughput_summary(throughput: dict) -> dict:
    """Part 1's figures per worker count, gathered by figure."""
    speedup = {w: v["speedup"] for w, v in throughput.items()}
    return {"stream_samples_per_s_per_worker": {w: v["stream_samples_per_s_per_worker"] for w, v in throughput.items()},
            "merged_json_samples_per_s_per_worker": {w: v["merged_json_samples_per_s_per_worker"]
                                                     for w, v in throughput.items()},
            "speedup": speedup, "speedup_min": min(speedup.values()),
            "speedup_per_cpu_s": {w: v["speedup_per_cpu_s"] for w, v in throughput.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--records", type=int, default=1500)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument("--baseline-records", type=int, default=None,
                        help="limit the merged-JSON loop to the first N records (default: all)")
    parser.add_argument("--sizes", default="2550000,25500000", help="simulated index sizes, in samples")
    parser.add_argument("--world-sizes", default="8,64")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--reference", default="49ef4b6",
                        help="git revision whose stream is timed too, on the same corpus (default: the "
                             "block-shuffle planner, before the interleaved order); '' to skip")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--scale-only", action="store_true",
                        help="only the time to first batch at LLaSO scale (converts just the one real shard)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile + tracemalloc the largest size's first-batch child (world size 8)")
    parser.add_argument("--child-first-batch", nargs=2, metavar=("OUT", "WORLD_SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-epoch", nargs=5, metavar=("KIND", "PATH", "AUDIO_ROOT", "W", "LIMIT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_epoch:
        kind, path, root, w, limit = args.child_epoch
        epoch_child(kind, path, root, int(w), int(limit))
        return 0
    if args.child_first_batch:
        first_batch_child(args.child_first_batch[0], int(args.child_first_batch[1]), args.child_profile)
        return 0

    _llaso_imports()
    quiet = args.json
    workers = [int(w) for w in args.workers.split(",")]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    world_sizes = [int(w) for w in args.world_sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-loader-", dir=args.workdir))
    result: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": list(os.getloadavg())}}
    try:
        src, out, src_one, out_one = work / "corpus", work / "shards", work / "corpus1000", work / "shards1000"
        _log(f"writing {args.records} records under {src}", quiet)
        t = time.perf_counter()
        records = write_corpus(src, REAL_SHARD_SAMPLES if args.scale_only else args.records)
        (src_one / "text_audio").mkdir(parents=True)
        (src_one / "text_audio" / "ASR_train.json").write_text(json.dumps(records[:REAL_SHARD_SAMPLES]))
        merged = work / "merged_train.json"  # outside the corpus: LLaSO's merged file
        merged.write_text(json.dumps(records, indent=2, ensure_ascii=False))
        audio_files = sorted(src.rglob("*.wav"))
        import soundfile

        seconds = [soundfile.info(str(p)).duration for p in audio_files]
        result["corpus"] = {"records": len(records), "audio_seconds_mean": round(sum(seconds) / len(seconds), 2),
                            "audio_mb": round(sum(p.stat().st_size for p in audio_files) / 2**20, 1),
                            "write_s": round(time.perf_counter() - t, 1)}

        _log("converting (local Ray, 2 CPUs)", quiet)
        import ray

        from llaso_data.convert.pipeline import ConvertOptions, convert
        from llaso_data.convert.ray_local import init_ray

        init_ray(None, num_cpus=2)
        try:
            t = time.perf_counter()
            report = convert(ConvertOptions(src, out, samples_per_shard=100)) if not args.scale_only else None
            result["corpus"]["convert_s"] = round(time.perf_counter() - t, 1)
            result["corpus"]["shards"] = report.shards if report else 0
            report_one = convert(ConvertOptions(src_one, out_one, audio_root=src,
                                                samples_per_shard=REAL_SHARD_SAMPLES))
        finally:
            ray.shutdown()
        if (report and report.written != len(records)) or report_one.written != REAL_SHARD_SAMPLES:
            raise RuntimeError(f"conversion lost samples: {report.to_dict()} / {report_one.to_dict()}")
        tars = sorted(out.rglob("*.tar"))
        reference = None
        if args.reference and not args.scale_only:
            reference = work / "reference"
            reference.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.reference], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(reference)], input=archive.stdout, check=True)

        # ---- part 1 (each epoch in a fresh child process)
        throughput = {}
        for w in ([] if args.scale_only else workers):
            runs = []
            for _ in range(args.repeats):
                warm_cache(tars)
                runs.append(run_epoch("stream", out, src, w, None))
            best = min(runs, key=lambda r: r["seconds"])
            _log(f"stream W={w}: {best}", quiet)
            reference_rate = None
            if reference is not None:
                reference_runs = []
                for _ in range(args.repeats):
                    warm_cache(tars)
                    reference_runs.append(run_epoch("stream", out, src, w, None, checkout=reference))
                reference_best = min(reference_runs, key=lambda r: r["seconds"])
                reference_rate = reference_best["samples"] / reference_best["cpu_s"]
                _log(f"reference stream W={w}: {reference_best}", quiet)
            base_runs = []
            for _ in range(args.baseline_repeats):
                warm_cache(audio_files)
                base_runs.append(run_epoch("merged_json", merged, src, w, args.baseline_records))
            base = min(base_runs, key=lambda r: r["seconds"])
            _log(f"merged json W={w}: {base}", quiet)
            stream_rate = best["samples"] / best["seconds"] / w
            base_rate = base["samples"] / base["seconds"] / w
            stream_cpu_rate = best["samples"] / best["cpu_s"]
            base_cpu_rate = base["samples"] / base["cpu_s"]
            throughput[str(w)] = {
                "stream_samples": best["samples"], "stream_s": round(best["seconds"], 3),
                "stream_s_runs": [round(r["seconds"], 3) for r in runs], "stream_cpu_s": round(best["cpu_s"], 2),
                "stream_samples_per_s_per_worker": round(stream_rate, 1),
                "merged_json_samples": base["samples"], "merged_json_s": round(base["seconds"], 3),
                "merged_json_cpu_s": round(base["cpu_s"], 2), "merged_json_batch_shape": base["batch_shape"],
                "merged_json_samples_per_s_per_worker": round(base_rate, 2),
                "speedup": round(stream_rate / base_rate, 1),
                "stream_samples_per_cpu_s": round(stream_cpu_rate, 1),
                "merged_json_samples_per_cpu_s": round(base_cpu_rate, 2),
                "speedup_per_cpu_s": round(stream_cpu_rate / base_cpu_rate, 1),
            }
            if reference_rate is not None:
                throughput[str(w)].update({
                    "reference_samples_per_cpu_s": round(reference_rate, 1),
                    "stream_over_reference_per_cpu_s": round(stream_cpu_rate / reference_rate, 2)})
        result["throughput"] = throughput
        goals = {}
        if throughput:
            result.update(_throughput_summary(throughput))
            goals = {"speedup_ge_10": result["speedup_min"] >= GOALS["speedup"],
                     "not_slower_than_reference_per_cpu_s": all(
                         v.get("stream_over_reference_per_cpu_s", 1.0) >= 1.0 for v in throughput.values()),
                     "speedup_per_cpu_s_ge_10": min(result["speedup_per_cpu_s"].values()) >= GOALS["speedup"]}
            # ---- part 3 (cheap, on the realistic corpus)
            result["padding"] = padding(out)

        # ---- part 2
        scale = {}
        for size in sizes:
            target = work / f"sim-{size}"
            _log(f"building simulated corpus of {size} samples", quiet)
            built = build_simulated(out_one, target, size)
            _log(f"  {built}", quiet)
            entry = {"build": built}
            for ws in world_sizes:
                entry[f"world_size_{ws}"] = run_first_batch(target, ws, args.repeats)
                _log(f"  world size {ws}: {entry[f'world_size_{ws}']}", quiet)
            if args.profile and size == max(sizes):
                texts = []
                for name in ("cprofile.txt", "tracemalloc.txt"):  # separate runs: tracemalloc slows all
                    profile_path = work / f"profile.{name}"
                    run_first_batch(target, min(world_sizes), 1, str(profile_path))
                    texts.append(profile_path.read_text())
                print(f"\n--- profile: {size} samples, world size {min(world_sizes)} ---\n" + "\n".join(texts),
                      file=sys.stderr, flush=True)
            scale[str(size)] = entry
            shutil.rmtree(target)
        result["scale"] = scale

        # ---- goals
        for size, entry in scale.items():
            for ws in world_sizes:
                run = entry[f"world_size_{ws}"]
                goals[f"first_batch_lt_5s_{size}_ws{ws}"] = run["first_batch_s"] < GOALS["first_batch_s"]
                goals[f"peak_rss_lt_1gb_{size}_ws{ws}"] = run["peak_rss_mb"] < GOALS["peak_rss_mb"]
        if len(scale) >= 2:
            small, large = scale[str(min(sizes))], scale[str(max(sizes))]
            result["scaling_large_over_small"] = {
                f"ws{ws}": {"first_batch_s": round(large[f"world_size_{ws}"]["first_batch_s"]
                                                   / max(small[f"world_size_{ws}"]["first_batch_s"], 1e-9), 2),
                            "peak_rss_mb": round(large[f"world_size_{ws}"]["peak_rss_mb"]
                                                 / small[f"world_size_{ws}"]["peak_rss_mb"], 2)}
                for ws in world_sizes}
        result["goals"] = goals
        result["machine"]["load_avg_at_end"] = list(os.getloadavg())
    finally:
        if args.keep:
            _log(f"kept {work}", quiet)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
