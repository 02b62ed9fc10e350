"""Against the peers: conversion and one loading epoch of plain WebDataset, Lhotse Shar,
MosaicML Streaming and Lightning litdata next to this toolkit, on one generated corpus, in
one run.

    python bench/peers.py                 # readable table (and the JSON at the end)
    python bench/peers.py --json          # one JSON object

The peers live in their own environment, ``bench/.peers-venv`` (``bench/peers_env.sh``
creates it on first use; pins in ``bench/peers-constraints.txt``: the project's torch,
soundfile, soxr and pyarrow; numpy is the resolver's because mosaicml-streaming 0.13.0
wants numpy<2.2). They are never a dependency of the library. Our own methods run in the
project's environment. Every measured method runs in a FRESH child process (imports before
the clock), which reports its figures as one JSON line.

**Corpus** (``bench/convert.py``'s generator): ``--records`` (default 1,500) records in the
LLaSO-Eval layout (four task files), one clip each of 4 to 15 s (uniform): 90 % 16 kHz mono
16-bit WAV, 6 % FLAC (half 16 kHz mono, half 44.1 kHz stereo), 4 % MP3 (24 kHz mono).

**Conversion**, ``--conversion-repeats`` rounds (default 2, the fastest run of each
method counts), every method once per round in turn, the corpus's audio evicted from the page cache before each run (``sync``, then
``posix_fadvise(DONTNEED)`` on every clip: cold input, while the interpreters' imports stay
cached; if that is refused, the cache is warmed instead and the JSON says so). 250 samples per shard
(or the peer's nearest knob). The peers' writers get the records already parsed (a JSONL
of key, sample JSON and clip path, made by this project's ingest before the clock: their
writers have no LLaSO parser); reading that list is timed. Ours parses and validates the
LLaSO annotation files itself, checks every clip decodes, hashes every shard and writes
the manifest and index, all timed.

* ``webdataset``: one process, ``webdataset.ShardWriter(maxcount=250)``, members ``json``
  and ``audio0.<ext>`` (the original bytes);
* ``lhotse_shar`` / ``lhotse_shar_flac``: ``Recording.from_file`` per clip (reads the
  header), cuts with the JSON in ``custom``, ``CutSet.to_shar(fields={"recording": FORMAT},
  shard_size=250, num_jobs=2)`` with FORMAT ``wav`` / ``flac``: Lhotse decodes every clip
  and re-encodes it (at its own rate and channels; even its ``original`` form re-encodes),
  so it cannot keep the original bytes. The loaders read the ``wav`` form (16-bit PCM, so
  the same decode work as the original WAVs);
* ``mosaic``: one process, ``streaming.MDSWriter`` with ``bytes`` / ``str`` columns
  (original bytes), ``size_limit`` 64 MB (~250 samples);
* ``litdata``: ``litdata.optimize(fn, inputs, chunk_size=250, num_workers=2)``, the item
  a dict with the original bytes;
* ``ours_passthrough`` / ``ours_flac16k``: ``llaso_data.convert.convert`` (what
  ``llaso-shard convert`` runs) on a local Ray with 2 CPUs. Reported apart:
  ``ray_init_s`` (``ray.init``) and ``ray_first_convert_s`` (a first 8-record
  conversion: Ray worker start-up); ``seconds`` is the steady-state conversion of the
  corpus after them, ``cold_seconds`` the sum of all three (what one CLI call costs).

CPU-seconds: user + system of the child, its reaped children and its live descendants
(psutil), so the Ray driver, raylet, GCS and workers, litdata's and Lhotse's worker
processes are all counted. ``out_bytes_per_audio_hour``: everything the writer left in its
output folder, per hour of audio.

**Loading one epoch**, for W in ``--workers`` (default 1,2), ``--repeats`` rounds (default
3; per method the best of them: samples/s from the fastest run, samples per CPU-second from
the run with the fewest CPU-seconds per sample, time to first batch the smallest, peak RSS
the largest), all loaders in turn per round, page cache warm (every output file
read once before each run). The same work per sample everywhere: the sample's JSON parsed
(``json.loads``; ours builds its ``Sample``), its clip bytes decoded by
``llaso_data.stream.windows.decode_clip`` (16 kHz mono: int16 kept for 16-bit 16 kHz mono,
else float32 through soxr HQ), batches of 8 zero-padded into one (8, N) tensor (int16 if
every clip of the batch is int16, else float32, int16 rows divided by 32768), built in
shared memory in a worker as our loader does, and a ``torch.utils.data.DataLoader`` with
W workers. Each peer through its documented loader:

* ``webdataset``: ``WebDataset(shards, shardshuffle=True, workersplitter=split_by_worker)
  .shuffle(64).map(...).batched(8)``, ``WebLoader(batch_size=None)``; no ``.decode()``;
* ``lhotse_shar``: ``CutSet.from_shar(in_dir, split_for_dataloading=True,
  shuffle_shards=True)``, Lhotse's own ``SimpleCutSampler(max_cuts=8)`` run inside the
  workers through ``IterableDatasetWrapper`` (Lhotse's documented Shar setup); the clip
  bytes are the recording's in-memory source;
* ``mosaic``: a ``StreamingDataset(local=..., shuffle=True, batch_size=8)`` subclass whose
  ``__getitem__`` decodes, ``StreamingDataLoader(batch_size=8, collate_fn=pad)``;
* ``litdata``: a ``StreamingDataset(shuffle=True)`` subclass whose ``__getitem__``
  decodes, ``StreamingDataLoader(batch_size=8, collate_fn=pad)``;
* ``ours_fixed``: ``StreamLoader(ShardStream(StreamConfig(PlanConfig([Source(out,
  Selection(None))], batching=Batching(batch_size=8)))), num_workers=W)`` on the
  passthrough shards; ``ours_dynamic``: the same with ``Batching(batch_size=None,
  max_tokens=2000)`` (duration-bucketed, about 8 per batch); ``ours_mixture``: two sources
  over the same shards (ASR + SGC vs ER + AC tasks, weights 1 and 2,
  ``Mixing("temperature", temperature=2.0)``), interleaved at sample granularity.

Samples/s, samples per CPU-second (all processes: the child and its DataLoader workers),
time to first batch (from building the dataset to the first batch: planning, worker
start-up and the batch), peak RSS (sum over the child and its workers, sampled every
0.1 s; pages shared between them count more than once) and the main process's own peak
(``VmHWM``).

**Features**: a table per peer from its documentation, with the rows this run checks
marked ``tested``: exact mid-epoch resume (state after 5 batches, a fresh loader restored
from it, its next batch's keys against an uninterrupted run's) and unpickling (a member /
column holding a pickle whose payload creates a marker file, read through the loader's
documented path).
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
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
PEERS_VENV = BENCH / ".peers-venv"
SAMPLES_PER_SHARD = 250
BATCH = 8
DYNAMIC_MAX_TOKENS = 2000
PEERS = ("webdataset", "lhotse_shar", "mosaic", "litdata")
CONVERTERS = ("webdataset", "lhotse_shar", "lhotse_shar_flac", "mosaic", "litdata")
OURS_CONVERT = ("ours_passthrough", "ours_flac16k")
OURS_LOAD = ("ours_fixed", "ours_dynamic", "ours_mixture")
PEER_PACKAGES = {"webdataset": "webdataset", "lhotse_shar": "lhotse", "mosaic": "mosaicml-streaming",
                 "litdata": "litdata"}


# --------------------------------------------------------------------------------------
# Shared by every child
# --------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, its reaped children and its live
    descendants (with their own reaped children)."""
    import psutil

    total = 0.0
    for process in (psutil.Process(), *psutil.Process().children(recursive=True)):
        try:
            total += sum(process.cpu_times()[:4])
        except psutil.NoSuchProcess:
            pass
    return total


class RssSampler:
    """Peak of the summed RSS of this process and its descendants, sampled in a thread."""

    def __init__(self, period: float = 0.1):
        self.period, self.peak, self._stop = period, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in (me, *me.children(recursive=True)):
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def vm_hwm_mb() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def _stub_streaming_vision() -> None:
    """MosaicML's ``streaming`` imports its vision datasets, which import torchvision; the
    peers' environment leaves torchvision out (its registry wheels need the CUDA torch), so
    that one module is replaced by an empty one. At import time of this file, so that
    processes started with ``spawn`` (litdata sets it) get the stub too."""
    import importlib.util
    import types

    if importlib.util.find_spec("torchvision") is None:
        sys.modules.setdefault("streaming.vision", types.ModuleType("streaming.vision"))


_stub_streaming_vision()


def streaming_module():
    """``import streaming`` (MosaicML) without its vision datasets (see above)."""
    import streaming

    return streaming


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _items(items_path: str) -> list[dict]:
    with open(items_path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


# --------------------------------------------------------------------------------------
# Conversion children
# --------------------------------------------------------------------------------------


def convert_webdataset(items_path: str, out: Path) -> dict:
    import webdataset

    out.mkdir(parents=True)
    written = 0
    with webdataset.ShardWriter(str(out / "shard-%06d.tar"), maxcount=SAMPLES_PER_SHARD, verbose=0) as sink:
        for item in _items(items_path):
            path = item["audio"]
            with open(path, "rb") as file:
                data = file.read()
            sink.write({"__key__": item["key"], "json": item["json"].encode("utf-8"),
                        f"audio0.{path.rsplit('.', 1)[-1].lower()}": data})
            written += 1
    return {"written": written}


def convert_lhotse(items_path: str, out: Path, form: str = "wav") -> dict:
    from lhotse import CutSet, Recording

    cuts = []
    for item in _items(items_path):
        recording = Recording.from_file(item["audio"], recording_id=item["key"])
        cut = recording.to_cut()
        cut.custom = {"json": item["json"]}
        cuts.append(cut)
    CutSet.from_cuts(cuts).to_shar(str(out), fields={"recording": form}, shard_size=SAMPLES_PER_SHARD,
                                   num_jobs=2)
    return {"written": len(cuts)}


def convert_mosaic(items_path: str, out: Path) -> dict:
    MDSWriter = streaming_module().MDSWriter

    columns = {"key": "str", "json": "str", "ext": "str", "audio": "bytes"}
    written = 0
    with MDSWriter(out=str(out), columns=columns, size_limit=64 * 2**20) as writer:
        for item in _items(items_path):
            path = item["audio"]
            with open(path, "rb") as file:
                data = file.read()
            writer.write({"key": item["key"], "json": item["json"], "ext": path.rsplit(".", 1)[-1].lower(),
                          "audio": data})
            written += 1
    return {"written": written}


def _litdata_item(item: dict) -> dict:
    path = item["audio"]
    with open(path, "rb") as file:
        data = file.read()
    return {"key": item["key"], "json": item["json"], "ext": path.rsplit(".", 1)[-1].lower(), "audio": data}


def convert_litdata(items_path: str, out: Path) -> dict:
    import litdata

    items = _items(items_path)
    litdata.optimize(fn=_litdata_item, inputs=items, output_dir=str(out), chunk_size=SAMPLES_PER_SHARD,
                     num_workers=2)
    return {"written": len(items)}


def convert_ours(corpus: str, out: Path, mode: str) -> dict:
    import ray

    from llaso_data.convert.pipeline import ConvertOptions, convert
    from llaso_data.convert.ray_local import init_ray
    from bench.convert import write_corpus

    timings = {}
    cpu, start = cpu_seconds(), time.perf_counter()
    init_ray(None, num_cpus=2)
    timings["ray_init_s"] = time.perf_counter() - start
    tiny = out.parent / f"{out.name}-warmup-corpus"
    write_corpus(tiny, 8)
    started = time.perf_counter()
    convert(ConvertOptions(tiny, out.parent / f"{out.name}-warmup", audio_root=None, audio_mode=mode,
                           samples_per_shard=SAMPLES_PER_SHARD, seed=0))
    timings["ray_first_convert_s"] = time.perf_counter() - started
    startup_cpu = cpu_seconds() - cpu
    shutil.rmtree(tiny)
    shutil.rmtree(out.parent / f"{out.name}-warmup")
    cpu, start = cpu_seconds(), time.perf_counter()
    report = convert(ConvertOptions(Path(corpus), out, audio_root=None, audio_mode=mode,
                                    samples_per_shard=SAMPLES_PER_SHARD, seed=0))
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    ray.shutdown()
    if not report.identity_holds or report.rejected:
        raise RuntimeError(f"conversion report looks wrong: {report.to_dict()}")
    return {"written": report.written, "seconds": seconds, "cpu_seconds": cpu, "startup_cpu_seconds": startup_cpu,
            "stage_seconds": report.stage_seconds, **timings}


def convert_child(method: str, items_path: str, corpus: str, out: str) -> None:
    out_path = Path(out)
    if method.startswith("ours_"):  # imports before the clock
        import llaso_data.convert.pipeline  # noqa: F401
    elif method == "mosaic":
        streaming_module()
    else:
        __import__({"webdataset": "webdataset", "lhotse_shar": "lhotse", "lhotse_shar_flac": "lhotse",
                    "litdata": "litdata"}[method])
    if method.startswith("ours_"):
        result = convert_ours(corpus, out_path, method.removeprefix("ours_"))
    else:
        function = {"webdataset": convert_webdataset, "lhotse_shar": convert_lhotse, "mosaic": convert_mosaic,
                    "lhotse_shar_flac": lambda i, o: convert_lhotse(i, o, "flac"),
                    "litdata": convert_litdata}[method]
        cpu, start = cpu_seconds(), time.perf_counter()
        result = function(items_path, out_path)
        result["seconds"], result["cpu_seconds"] = time.perf_counter() - start, cpu_seconds() - cpu
    result["out_bytes"] = _du(out_path)
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------
# Loading children: the same decode and padding for every peer
# --------------------------------------------------------------------------------------


def decode(data: bytes):
    from llaso_data.stream.windows import decode_clip

    return decode_clip(data)


def pad(keys: list[str], waves: list) -> dict:
    """(B, N) zero-padded with our loader's own :func:`~llaso_data.stream.loader.pad_chunks`:
    int16 if every clip is int16, else float32 (int16 / 32768), allocated in shared memory
    when built in a DataLoader worker."""
    import torch

    from llaso_data.stream.loader import pad_chunks

    audio = pad_chunks(waves, max((len(w) for w in waves), default=0))
    return {"keys": keys, "audio": audio, "lengths": torch.tensor([len(w) for w in waves], dtype=torch.int64)}


def collate_decoded(items: list) -> dict:
    """DataLoader collate_fn for datasets whose items are (key, waveform, sample dict)."""
    return pad([key for key, _, _ in items], [wave for _, wave, _ in items])


def _wds_sample(sample: dict):
    audio = next(value for name, value in sample.items() if name.startswith("audio0."))
    return sample["__key__"], decode(audio), json.loads(sample["json"])


def load_webdataset(data: Path, workers: int):
    import webdataset as wds

    urls = sorted(str(p) for p in data.glob("*.tar"))
    dataset = (wds.WebDataset(urls, shardshuffle=True, seed=0, nodesplitter=wds.split_by_node,
                              workersplitter=wds.split_by_worker, empty_check=False)
               .shuffle(64).map(_wds_sample).batched(BATCH, collation_fn=collate_decoded, partial=True))
    return wds.WebLoader(dataset, batch_size=None, num_workers=workers)


class _LhotseBatches:
    """Lhotse's batch-level dataset: a CutSet (one sampler batch) -> a padded batch."""

    def __getitem__(self, cuts):
        keys, waves = [], []
        for cut in cuts:
            data = cut.recording.sources[0].source  # Shar recordings are in-memory: the bytes
            if not isinstance(data, bytes):
                raise TypeError(f"{cut.id}: expected an in-memory recording, got {type(data).__name__}")
            json.loads(cut.custom["json"])
            keys.append(cut.id)
            waves.append(decode(data))
        return pad(keys, waves)


def load_lhotse(data: Path, workers: int):
    import torch
    from lhotse import CutSet
    from lhotse.dataset import SimpleCutSampler
    from lhotse.dataset.iterable_dataset import IterableDatasetWrapper

    cuts = CutSet.from_shar(in_dir=str(data), split_for_dataloading=True, shuffle_shards=True, seed=0)
    sampler = SimpleCutSampler(cuts, max_cuts=BATCH, shuffle=False)
    return torch.utils.data.DataLoader(IterableDatasetWrapper(dataset=_LhotseBatches(), sampler=sampler),
                                       batch_size=None, num_workers=workers)


def load_mosaic(data: Path, workers: int):
    streaming = streaming_module()
    StreamingDataLoader, StreamingDataset = streaming.StreamingDataLoader, streaming.StreamingDataset

    class Decoded(StreamingDataset):
        def __getitem__(self, index):
            sample = super().__getitem__(index)
            return sample["key"], decode(sample["audio"]), json.loads(sample["json"])

    dataset = Decoded(local=str(data), shuffle=True, shuffle_seed=0, batch_size=BATCH)
    return StreamingDataLoader(dataset, batch_size=BATCH, num_workers=workers, collate_fn=collate_decoded)


def load_litdata(data: Path, workers: int):
    import litdata

    class Decoded(litdata.StreamingDataset):
        def __getitem__(self, index):
            sample = super().__getitem__(index)
            return sample["key"], decode(sample["audio"]), json.loads(sample["json"])

    dataset = Decoded(str(data), shuffle=True, seed=0)
    return litdata.StreamingDataLoader(dataset, batch_size=BATCH, num_workers=workers, collate_fn=collate_decoded)


def ours_config(data: Path, method: str):
    from llaso_data.stream.plan import Batching, Mixing, PlanConfig, Selection, Source
    from llaso_data.stream.loader import StreamConfig

    if method == "ours_mixture":
        sources = [Source(data, Selection(None, tasks=("ASR", "SGC")), 1.0, "a"),
                   Source(data, Selection(None, tasks=("ER", "AC")),
                          2.0, "b")]
        return StreamConfig(PlanConfig(sources, mixing=Mixing("temperature", temperature=2.0),
                                       batching=Batching(batch_size=BATCH)))
    batching = Batching(batch_size=None, max_tokens=DYNAMIC_MAX_TOKENS) if method == "ours_dynamic" \
        else Batching(batch_size=BATCH)
    return StreamConfig(PlanConfig([Source(data, Selection(None))], batching=batching))


def load_ours(data: Path, workers: int, method: str):
    from llaso_data.stream.loader import ShardStream, StreamLoader

    return StreamLoader(ShardStream(ours_config(data, method), rank=0, world_size=1), num_workers=workers)


def _batch_keys(batch: dict) -> list[str]:
    return list(batch["keys"])


def load_child(method: str, data: str, workers: int) -> None:
    import torch  # noqa: F401  (imports before the clock)

    builders = {"webdataset": load_webdataset, "lhotse_shar": load_lhotse, "mosaic": load_mosaic,
                "litdata": load_litdata}
    if method in builders:
        if method == "mosaic":
            streaming_module()
        else:
            __import__({"webdataset": "webdataset", "lhotse_shar": "lhotse", "litdata": "litdata"}[method])
        import llaso_data.stream.windows  # noqa: F401
    else:
        import llaso_data.stream.loader  # noqa: F401
    with RssSampler() as rss:
        cpu, start = cpu_seconds(), time.perf_counter()
        loader = builders[method](Path(data), workers) if method in builders else \
            load_ours(Path(data), workers, method)
        samples = batches = 0
        first = None
        int16_batches = 0
        for batch in loader:
            if first is None:
                first = time.perf_counter() - start
            samples += len(batch["keys"])
            batches += 1
            audio = batch["audio"] if "audio" in batch else batch["chunks"]
            int16_batches += audio.dtype == torch.int16
        seconds = time.perf_counter() - start
        del loader
        cpu = cpu_seconds() - cpu
    print(json.dumps({"samples": samples, "batches": batches, "seconds": seconds, "cpu_seconds": cpu,
                      "first_batch_s": first, "peak_rss_mb": rss.peak / 2**20, "main_vm_hwm_mb": vm_hwm_mb(),
                      "int16_batches": int16_batches}), flush=True)


# --------------------------------------------------------------------------------------
# Feature checks (children)
# --------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates the marker file: a stand-in for code planted in a dataset."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _resume_check(make, take: int = 5) -> dict:
    """Uninterrupted run vs a loader restored from a state taken after ``take`` batches:
    does the restored loader's next batch equal the uninterrupted run's batch ``take``?"""
    reference = []
    for batch in make()[0]:
        reference.append(_batch_keys(batch))
        if len(reference) > take:
            break
    loader, state_of, restore = make()
    it = iter(loader)
    for _ in range(take):
        next(it)
    state = state_of(loader)
    del it
    fresh, _, restore = make()
    restore(fresh, state)
    nxt = _batch_keys(next(iter(fresh)))
    return {"exact": nxt == reference[take], "state": str(state)[:200]}


def features_peers(scratch: str, shards: dict) -> None:
    import pickle

    results: dict = {}
    scratch = Path(scratch)
    # --- unpickling: WebDataset's documented .decode() on a planted .pyd member
    import webdataset as wds

    marker = scratch / "wds.marker"
    tar = scratch / "planted.tar"
    with wds.TarWriter(str(tar)) as sink:
        sink.write({"__key__": "x", "json": b"{}", "pyd": pickle.dumps(_Payload(str(marker)))})
    list(wds.WebDataset(str(tar), shardshuffle=False, empty_check=False).decode())
    results.setdefault("webdataset", {})["unpickles_planted_member"] = marker.exists()
    # --- Mosaic: an MDS column declared 'pkl' (the reader unpickles what the index declares)
    streaming = streaming_module()
    MDSWriter, StreamingDataset = streaming.MDSWriter, streaming.StreamingDataset

    marker = scratch / "mosaic.marker"
    with MDSWriter(out=str(scratch / "mds"), columns={"x": "pkl"}) as writer:
        writer.write({"x": _Payload(str(marker))})
    if marker.exists():
        marker.unlink()
    try:
        StreamingDataset(local=str(scratch / "mds"), shuffle=False)[0]
        refused = None
    except ValueError as error:  # refused unless allow_unsafe_types=True
        refused = str(error)[:160]
    results.setdefault("mosaic", {})["unpickles_planted_member"] = marker.exists()
    results["mosaic"]["refused"] = refused
    # --- litdata: an item of a type without a serializer is pickled, and unpickled on read
    import litdata

    marker = scratch / "litdata.marker"
    litdata.optimize(fn=_planted_item, inputs=[str(marker)], output_dir=str(scratch / "lit"), chunk_size=1,
                     num_workers=1)
    if marker.exists():
        marker.unlink()
    litdata.StreamingDataset(str(scratch / "lit"))[0]
    results.setdefault("litdata", {})["unpickles_planted_member"] = marker.exists()
    # --- Lhotse Shar: cuts are JSONL; a custom field holds JSON; arrays are numpy/lilcom. A
    # planted .pkl-like custom field is not a Shar field type: nothing to plant.
    results.setdefault("lhotse_shar", {})["unpickles_planted_member"] = None

    # --- exact mid-epoch resume: Mosaic and litdata document state_dict on their loaders
    StreamingDataLoader = streaming.StreamingDataLoader

    def mosaic():
        dataset = StreamingDataset(local=shards["mosaic"], shuffle=True, shuffle_seed=0, batch_size=BATCH)
        loader = StreamingDataLoader(dataset, batch_size=BATCH, num_workers=1, collate_fn=_key_collate)
        return loader, lambda l: l.state_dict(), lambda l, s: l.load_state_dict(s)

    def lit():
        dataset = litdata.StreamingDataset(shards["litdata"], shuffle=True, seed=0)
        loader = litdata.StreamingDataLoader(dataset, batch_size=BATCH, num_workers=1, collate_fn=_key_collate)
        return loader, lambda l: l.state_dict(), lambda l, s: l.load_state_dict(s)

    for name, make in (("mosaic", mosaic), ("litdata", lit)):
        try:
            results[name]["mid_epoch_resume"] = _resume_check(make)
        except Exception as error:  # a peer's resume that fails is a figure too
            results[name]["mid_epoch_resume"] = {"exact": False, "error": f"{type(error).__name__}: {error}"[:300]}
    results["webdataset"]["mid_epoch_resume"] = {"exact": False, "error": "no loader state (documented)"}
    print(json.dumps(results), flush=True)


def _planted_item(marker: str):
    return {"x": _Payload(marker)}


def _key_collate(items: list) -> dict:
    return {"keys": [item["key"] for item in items]}


def features_ours(scratch: str, shards: str) -> None:
    """Our resume (state after 5 batches, 1 worker) and a planted .pyd member in a copy of a
    shard (the loader reads members at their index offsets only)."""
    import pickle
    import tarfile

    from llaso_data.stream.loader import ShardStream, StreamLoader

    def make():
        loader = StreamLoader(ShardStream(ours_config(Path(shards), "ours_fixed")), num_workers=1)
        return loader, lambda l: l.state_dict(), lambda l, s: l.load_state_dict(s)

    results = {"mid_epoch_resume": _resume_check(make)}
    scratch = Path(scratch)
    copy = scratch / "ours-planted"
    shutil.copytree(shards, copy)
    marker = scratch / "ours.marker"
    tar_path = sorted(copy.rglob("*.tar"))[0]
    with tarfile.open(tar_path, "a") as tar:  # appended after the last sample: a member no index row names
        import io

        data = pickle.dumps(_Payload(str(marker)))
        info = tarfile.TarInfo("planted.pyd")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    for _ in StreamLoader(ShardStream(ours_config(copy, "ours_fixed")), num_workers=0):
        pass
    results["unpickles_planted_member"] = marker.exists()
    print(json.dumps(results), flush=True)


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def peers_python() -> str:
    subprocess.run([str(BENCH / "peers_env.sh")], check=True)
    return str(PEERS_VENV / "bin" / "python")


def child(python: str, *args: str, timeout: int = 1800) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run([python, str(Path(__file__).resolve()), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(REPO))
    if done.returncode:
        raise RuntimeError(f"child {args[:2]} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def evict(paths) -> bool:
    """Drop these files' pages from the page cache (``posix_fadvise(DONTNEED)`` after a
    sync), so a conversion reads its input cold without emptying the whole machine's cache
    (which would also make every child's imports cold). False when that is not possible."""
    os.sync()
    try:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return True
    except (OSError, AttributeError):
        return False


def warm(paths) -> None:
    files = [str(p) for p in paths]
    if files:
        subprocess.run(["xargs", "-0", "cat"], input="\0".join(files).encode(), stdout=subprocess.DEVNULL, check=True)


def versions(python: str) -> dict:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "['webdataset', 'lhotse', 'mosaicml-streaming', 'litdata', 'torch', 'numpy', 'soundfile', 'soxr']}))")
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


FEATURES_DOC = {
    # equal batches per rank with duration bucketing / exact mid-epoch resume / weighted mixing /
    # no unpickling of data / checksums-verify; with where each is documented.
    "webdataset": {
        "equal_batches_per_rank_with_bucketing": "no (no rank equalisation; with_epoch/repeat to force a count)",
        "mid_epoch_resume": "no (no loader state)",
        "weighted_mixing": "yes (RandomMix / wds.mix)",
        "no_unpickling": "no (.decode() unpickles .pyd/.pickle, torch.loads .pth)",
        "checksums_verify": "no"},
    "lhotse_shar": {
        "equal_batches_per_rank_with_bucketing": "partial (DynamicBucketingSampler; equal counts only by an "
                                                  "infinite stream, e.g. .repeat() + step limit)",
        "mid_epoch_resume": "yes for samplers in the main process (sampler.state_dict, same world size); "
                            "not through IterableDatasetWrapper in workers",
        "weighted_mixing": "yes (CutSet.mux / infinite_mux with weights)",
        "no_unpickling": "yes (cuts JSONL, fields as audio / numpy / lilcom / jsonl)",
        "checksums_verify": "no"},
    "mosaic": {
        "equal_batches_per_rank_with_bucketing": "fixed batch sizes only (equal samples per rank, "
                                                  "no duration bucketing)",
        "mid_epoch_resume": "yes (StreamingDataLoader.state_dict; elastic across world sizes)",
        "weighted_mixing": "yes (Stream(proportion / repeat / choose))",
        "no_unpickling": "yes by default ('pkl' columns refused unless allow_unsafe_types=True)",
        "checksums_verify": "yes, optional (MDSWriter(hashes=...), StreamingDataset(validate_hash=...))"},
    "litdata": {
        "equal_batches_per_rank_with_bucketing": "fixed batch sizes only (drop_last / equal splits; "
                                                  "no duration bucketing)",
        "mid_epoch_resume": "yes (StreamingDataLoader.state_dict; same world size, workers and batch size)",
        "weighted_mixing": "yes (CombinedStreamingDataset(weights=...))",
        "no_unpickling": "no (types without a serializer are pickled and unpickled on read)",
        "checksums_verify": "no"},
    "ours": {
        "equal_batches_per_rank_with_bucketing": "yes (plan gives every rank the same batch count; "
                                                  "dynamic batches agree on it through `agree`)",
        "mid_epoch_resume": "yes (StreamLoader.state_dict: epoch + batches done, no replay; any worker count)",
        "weighted_mixing": "yes (Source weights x Mixing natural / uniform / temperature / explicit, "
                           "interleaved per sample)",
        "no_unpickling": "yes (members read at index offsets with JSON and audio decoders)",
        "checksums_verify": "yes (sha256 per shard in the manifest; llaso-shard verify)"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--records", type=int, default=1500)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeats", type=int, default=3, help="loading rounds (best run of each method)")
    parser.add_argument("--conversion-repeats", type=int, default=2)
    parser.add_argument("--only", default=None, help="comma-separated methods to run (default: all)")
    parser.add_argument("--skip-features", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--child-convert", nargs=4, metavar=("METHOD", "ITEMS", "CORPUS", "OUT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--child-load", nargs=3, metavar=("METHOD", "DATA", "W"), help=argparse.SUPPRESS)
    parser.add_argument("--child-features-peers", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-features-ours", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_convert:
        convert_child(*args.child_convert)
        return 0
    if args.child_load:
        method, data, w = args.child_load
        load_child(method, data, int(w))
        return 0
    if args.child_features_peers:
        features_peers(args.child_features_peers[0], json.loads(args.child_features_peers[1]))
        return 0
    if args.child_features_ours:
        features_ours(*args.child_features_ours)
        return 0

    sys.path.insert(0, str(REPO))
    from bench.convert import write_corpus
    from llaso_data.ingest.corpus import iter_corpus
    from llaso_data.records import Sample

    quiet = args.json
    only = set(args.only.split(",")) if args.only else None
    chosen = lambda name: only is None or name in only  # noqa: E731
    workers = [int(w) for w in args.workers.split(",")]
    ours_python, peer_python = sys.executable, peers_python()
    load_start = [round(x, 2) for x in os.getloadavg()]
    result: dict = {"date": time.strftime("%Y-%m-%d"), "machine": {"cpus": os.cpu_count(), "load_avg_start": load_start},
                    "versions": versions(peer_python)}
    work = Path(tempfile.mkdtemp(prefix="bench-peers-", dir=args.workdir))
    try:
        corpus, outs = work / "corpus", work / "out"
        outs.mkdir()
        _log(f"writing {args.records} records under {corpus}", quiet)
        info = write_corpus(corpus, args.records, seconds_range=(4.0, 15.0))
        hours = info["seconds"] / 3600
        items = work / "items.jsonl"
        with open(items, "w", encoding="utf-8") as file:
            for sample in iter_corpus(corpus):
                if isinstance(sample, Sample):
                    file.write(json.dumps({"key": sample.key, "json": sample.to_json(),
                                           "audio": str(corpus / sample.audio[0])}) + "\n")
        result["corpus"] = {"records": args.records, "audio_hours": round(hours, 3),
                            "audio_mb": round(info["bytes"] / 2**20, 1), "samples_per_shard": SAMPLES_PER_SHARD}

        # ---- conversion
        methods = [m for m in (*CONVERTERS, *OURS_CONVERT) if chosen(m) or (m == "ours_passthrough" and only is not None
                                                                      and any(x in only for x in OURS_LOAD))]
        conv_runs: dict[str, list[dict]] = {m: [] for m in methods}
        cold = True
        for round_ in range(args.conversion_repeats):
            for method in methods:
                out = outs / method
                if out.exists():
                    shutil.rmtree(out)
                if not evict([corpus / f for f in info["files"]]):
                    cold = False
                    warm(corpus / f for f in info["files"])
                python = ours_python if method.startswith("ours_") else peer_python
                run = child(python, "--child-convert", method, str(items), str(corpus), str(out))
                run["load_avg_1min"] = round(os.getloadavg()[0], 2)
                _log(f"convert {method}: {run}", quiet)
                conv_runs[method].append(run)
        conversion = {}
        for method, runs in conv_runs.items():
            best = min(runs, key=lambda r: r["seconds"])
            entry = {"samples_per_s": round(best["written"] / best["seconds"], 1), "seconds": round(best["seconds"], 2),
                     "all_seconds": [round(r["seconds"], 2) for r in runs], "cpu_seconds": round(best["cpu_seconds"], 2),
                     "samples_per_cpu_s": round(best["written"] / best["cpu_seconds"], 1),
                     "out_mb_per_audio_hour": round(best["out_bytes"] / 2**20 / hours, 1),
                     "written": best["written"], "load_avg_1min": best["load_avg_1min"]}
            if method.startswith("ours_"):
                cold_s = best["ray_init_s"] + best["ray_first_convert_s"] + best["seconds"]
                entry.update({"ray_init_s": round(best["ray_init_s"], 2),
                              "ray_first_convert_s": round(best["ray_first_convert_s"], 2),
                              "ray_startup_cpu_seconds": round(best["startup_cpu_seconds"], 2),
                              "cold_seconds": round(cold_s, 2),
                              "cold_samples_per_s": round(best["written"] / cold_s, 1),
                              "stage_seconds": best["stage_seconds"]})
            conversion[method] = entry
        result["conversion"] = conversion
        result["conversion_page_cache"] = "cold audio (evicted before every run)" if cold else "warm (drop refused)"

        # ---- loading
        data = {m: outs / m for m in PEERS}
        data.update({m: outs / "ours_passthrough" for m in OURS_LOAD})
        loaders = [m for m in (*PEERS, *OURS_LOAD) if chosen(m) and data[m].exists()]
        loading: dict = {}
        for w in workers:
            runs: dict[str, list[dict]] = {m: [] for m in loaders}
            for _ in range(args.repeats):
                for method in loaders:
                    warm(p for p in data[method].rglob("*") if p.is_file())
                    python = ours_python if method.startswith("ours_") else peer_python
                    run = child(python, "--child-load", method, str(data[method]), str(w))
                    run["load_avg_1min"] = round(os.getloadavg()[0], 2)
                    _log(f"load {method} W={w}: {run}", quiet)
                    runs[method].append(run)
            for method, method_runs in runs.items():
                best = min(method_runs, key=lambda r: r["seconds"])
                frugal = min(method_runs, key=lambda r: r["cpu_seconds"] / r["samples"])
                loading.setdefault(method, {})[str(w)] = {
                    "samples": best["samples"], "batches": best["batches"],
                    "samples_per_s": round(best["samples"] / best["seconds"], 1),
                    "samples_per_cpu_s": round(frugal["samples"] / frugal["cpu_seconds"], 1),
                    "all_samples_per_cpu_s": [round(r["samples"] / r["cpu_seconds"], 1) for r in method_runs],
                    "first_batch_s": round(min(r["first_batch_s"] for r in method_runs), 3),
                    "peak_rss_mb": round(max(r["peak_rss_mb"] for r in method_runs), 1),
                    "main_vm_hwm_mb": round(max(r["main_vm_hwm_mb"] for r in method_runs), 1),
                    "int16_batches": best["int16_batches"],
                    "all_seconds": [round(r["seconds"], 2) for r in method_runs],
                    "load_avg_1min": best["load_avg_1min"]}
        result["loading"] = loading
        result["loading_page_cache"] = "warm (every output file read once before each run)"

        # ---- features
        features = {name: dict(rows) for name, rows in FEATURES_DOC.items()}
        if not args.skip_features and only is None:
            _log("feature checks", quiet)
            scratch = work / "features"
            scratch.mkdir()
            tested = child(peer_python, "--child-features-peers", str(scratch),
                           json.dumps({"mosaic": str(data["mosaic"]), "litdata": str(data["litdata"])}))
            tested["ours"] = child(ours_python, "--child-features-ours", str(scratch), str(outs / "ours_passthrough"))
            result["feature_checks"] = tested
        result["features"] = features

        # ---- goals
        goals = {}
        peers_loading = [m for m in PEERS if m in loading]
        if "ours_fixed" in loading and peers_loading:
            for w in workers:
                best_peer = max(loading[m][str(w)]["samples_per_cpu_s"] for m in peers_loading)
                ours = loading["ours_fixed"][str(w)]["samples_per_cpu_s"]
                goals[f"loader_samples_per_cpu_s_W{w}_over_best_peer"] = round(ours / best_peer, 3)
        peers_conv = [m for m in CONVERTERS if m in conversion]
        if "ours_passthrough" in conversion and peers_conv:
            best_peer = max(conversion[m]["samples_per_s"] for m in peers_conv)
            goals["passthrough_steady_samples_per_s_over_best_peer"] = round(
                conversion["ours_passthrough"]["samples_per_s"] / best_peer, 3)
            goals["passthrough_cold_samples_per_s_over_best_peer"] = round(
                conversion["ours_passthrough"]["cold_samples_per_s"] / best_peer, 3)
        result["ratios"] = goals
        result["goals_met"] = {k: v >= 1.0 for k, v in goals.items() if "cold" not in k}
        result["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if args.keep:
            _log(f"kept {work}", quiet)
        else:
            shutil.rmtree(work, ignore_errors=True)

    if not args.json:
        print_table(result)
    print(json.dumps(result, indent=None if args.json else 1))
    return 0


def print_table(result: dict) -> None:
    conversion, loading = result.get("conversion", {}), result.get("loading", {})
    print(f"# {result['date']}, {result['machine']['cpus']} cores, load average "
          f"{result['machine']['load_avg_start'][0]} -> {result['machine']['load_avg_end'][0]}; "
          f"versions {result['versions']}")
    print(f"\n## conversion ({result['corpus']['records']} records, {result['corpus']['audio_hours']} h; "
          f"{result['conversion_page_cache']})")
    print(f"{'method':<18}{'samples/s':>10}{'CPU-s':>8}{'samples/CPU-s':>14}{'MB/audio-h':>11}{'load':>6}")
    for method, e in conversion.items():
        print(f"{method:<18}{e['samples_per_s']:>10}{e['cpu_seconds']:>8}{e['samples_per_cpu_s']:>14}"
              f"{e['out_mb_per_audio_hour']:>11}{e['load_avg_1min']:>6}"
              + (f"   (Ray init {e['ray_init_s']} s + first convert {e['ray_first_convert_s']} s;"
                 f" cold {e['cold_samples_per_s']} samples/s)" if "ray_init_s" in e else ""))
    print("\n## loading one epoch (warm cache)")
    print(f"{'method':<14}{'W':>2}{'samples/s':>10}{'samples/CPU-s':>14}{'first batch s':>14}{'RSS MB':>8}{'load':>6}")
    for method, per_w in loading.items():
        for w, e in per_w.items():
            print(f"{method:<14}{w:>2}{e['samples_per_s']:>10}{e['samples_per_cpu_s']:>14}{e['first_batch_s']:>14}"
                  f"{e['peak_rss_mb']:>8}{e['load_avg_1min']:>6}")
    print(f"\n## ratios {result.get('ratios')}\n## goals met {result.get('goals_met')}")
    if "feature_checks" in result:
        print(f"## feature checks {json.dumps(result['feature_checks'])}")
    print()


if __name__ == "__main__":
    sys.exit(main())
