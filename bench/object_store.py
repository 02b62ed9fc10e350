"""Streaming from an S3 endpoint on loopback against the same shards on local disk, in one run:
ranged reads (what the loader does) and whole-shard fetch (the alternative), measured.

1. **Corpus.** The synthetic corpus (``llaso_synth``, ``--samples-per-task``, default 24) is
   converted in-process on a local Ray (2 CPUs) with ``--audio flac16k`` and
   ``--samples-per-shard`` (default 40) into a local OUT, which is then uploaded object by
   object to ``s3://bench/out`` on a moto S3 server started on 127.0.0.1 (its own process),
   reached through a counting HTTP proxy (``tests/loopback_s3.py``) that counts requests and
   response bytes. The library sees only ``AWS_ENDPOINT_URL`` and the ``AWS_*`` credentials.

2. **Epochs** (train split, all tasks, natural mixing, batches of 8, one rank; best of
   ``--repeats``, default 3, the modes interleaved), for
   ``W`` = 1 and 2 DataLoader workers (``OPENBLAS_NUM_THREADS=1``):

   * ``local``: the stream from the local OUT (the baseline);
   * ``s3 ranged``: the same stream from ``s3://bench/out``: manifest and index by ranged
     Parquet reads, samples by byte ranges at their index offsets;
   * ``s3 whole-shard``: every shard the rank's plan touches downloaded whole (one GET
     each) into a local cache folder, then the stream from the cache; time = download +
     stream (no overlap: an upper bound on its cost).

   Reported per mode: samples/s (wall clock, planning included), HTTP requests per sample
   (all requests of the epoch, planning included, and of them the metadata requests), and
   bytes read per byte used, where a sample's *used* bytes are its extent in the tar (its
   members' headers, data and padding: from its index offset to the next sample's, or to
   the end of its last member).

3. **Client stacks**: milliseconds per ranged GET of 64 KiB (200 GETs at spread offsets
   of one 8 MiB object, straight to moto, no proxy; 3 rounds, each stack in turn, best
   round) through the storage layer (pyarrow's S3 filesystem) and, where ``s3fs`` is
   installed, through fsspec's ``s3fs`` (``cat_file`` with a range).

4. **Whole-shard fetch at more ranks**, from plans alone (no I/O): for world sizes 1, 2,
   4, 8 and 16 (those the corpus has samples for), bytes of the shards rank 0 touches /
   bytes of the samples it uses. A ranged read stays at the ratio measured in (2)
   whatever the world size.

    python bench/object_store.py            # readable summary
    python bench/object_store.py --json     # one JSON object

About 3 minutes on 2 cores; everything lives in a temporary folder under ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

_MOTO = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("%s:%d" % server.get_host_and_port(), flush=True)
sys.stdin.read()  # until terminated
"""


def convert_corpus(work: Path, samples_per_task: int, samples_per_shard: int) -> Path:
    import ray

    from llaso_data.convert.pipeline import ConvertOptions, convert
    from llaso_data.convert.ray_local import init_ray
    from llaso_synth.corpus import write_corpus

    write_corpus(work / "corpus", seed=0, samples_per_task=samples_per_task)
    init_ray(None, num_cpus=2)
    try:
        convert(ConvertOptions(work / "corpus", work / "out", audio_mode="flac16k",
                               samples_per_shard=samples_per_shard))
    finally:
        ray.shutdown()
    return work / "out"


def upload(local: Path, url: str) -> int:
    """Copy every file of ``local`` (not ``.state``) to ``url`` through the storage layer."""
    from llaso_data.storage import open_store

    store = open_store(url)
    files = [p for p in sorted(local.rglob("*")) if p.is_file() and ".state" not in p.parts]
    for path in files:
        store.write_bytes(path.relative_to(local).as_posix(), path.read_bytes())
    return len(files)


def stream_config(root: str | Path):
    from llaso_data.stream.loader import StreamConfig
    from llaso_data.stream.plan import Batching, PlanConfig, Selection, Source

    return StreamConfig(PlanConfig((Source(root, Selection(splits=("train",)), name="bench"),),
                                   batching=Batching(batch_size=8)))


def epoch(root: str | Path, workers: int, proxy) -> dict:
    """One epoch of rank 0 of 1 from ``root``: seconds, samples, requests (planning and
    samples) and GET bytes as the proxy counted them."""
    from llaso_data.stream.loader import ShardStream, StreamLoader

    proxy.reset()
    started = time.perf_counter()
    stream = ShardStream(stream_config(root))
    plan = stream.prepare()
    planning = proxy.reset()
    samples = 0
    for batch in StreamLoader(stream, num_workers=workers):
        samples += len(batch["keys"])
    seconds = time.perf_counter() - started
    data = proxy.reset()
    return {"seconds": seconds, "samples": samples, "plan": plan,
            "meta_requests": planning.total, "meta_bytes": planning.get_bytes,
            "data_requests": data.total, "data_bytes": data.get_bytes}


def used_bytes(plan, extents) -> int:
    return sum(extents[(plan.shard_names[int(plan.shard[slot])], int(plan.offset[slot]))]
               for batch in plan.batches for slot in batch)


def whole_shard_epoch(url: str, cache: Path, workers: int, proxy, sizes: dict[str, int]) -> dict:
    """Download every shard rank 0 touches (plan from the bucket), then stream from the cache."""
    from llaso_data.stream.loader import ShardStream
    from llaso_data.storage import open_store

    proxy.reset()
    started = time.perf_counter()
    plan = ShardStream(stream_config(url)).prepare()
    store = open_store(url)
    touched = sorted({plan.shard_names[int(plan.shard[slot])] for batch in plan.batches for slot in batch})
    shutil.rmtree(cache, ignore_errors=True)
    for name in ["manifest.parquet", "index.parquet", *touched]:
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_bytes(store.read_bytes(name))
    fetched = proxy.reset()
    download = time.perf_counter() - started
    local = epoch(cache, workers, proxy)
    return {"seconds": download + local["seconds"], "download_seconds": download, "samples": local["samples"],
            "requests": fetched.total, "bytes": fetched.get_bytes,
            "shard_bytes": sum(sizes[name] for name in touched)}


def whole_shard_ratios(out: Path, extents, sizes: dict[str, int], world_sizes=(1, 2, 4, 8, 16)) -> dict:
    from llaso_data.stream.plan import ShardTable, plan_rank

    config = stream_config(out).plan
    table = ShardTable.load(config.sources)
    ratios = {}
    for world in world_sizes:
        try:
            plan = plan_rank(config, 0, world, 0, shards=table)
        except ValueError:  # too few samples for this many ranks
            continue
        slots = [slot for batch in plan.batches for slot in batch]
        if not slots:
            continue
        touched = {plan.shard_names[int(plan.shard[s])] for s in slots}
        ratios[world] = round(sum(sizes[n] for n in touched) / used_bytes(plan, extents), 3)
    return ratios


def ranged_get_ms(upstream: str) -> dict:
    """Milliseconds per 64 KiB ranged GET, per client stack available (see the docstring)."""
    import random

    from loopback_s3 import aws_environment, create_bucket

    from llaso_data.storage import open_store

    create_bucket(upstream, "latency")
    data = os.urandom(8 * 2**20)
    offsets = [random.Random(0).randrange(0, len(data) - 65536) for _ in range(200)]
    results = {}
    with aws_environment(upstream):
        store = open_store("s3://latency")
        store.write_bytes("object", data)
        file = store.open_file("object")
        stacks = {"pyarrow": lambda o: file.read_at(o, 65536)}
        try:
            import s3fs
        except ImportError:
            results["s3fs"] = "not installed"
        else:
            fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": upstream})
            stacks["s3fs"] = lambda o: fs.cat_file("latency/object", start=o, end=o + 65536)
        for _ in range(3):  # rounds, each stack in turn; best round per stack
            for name, get in stacks.items():
                get(0)
                started = time.perf_counter()
                assert all(get(o) == data[o:o + 65536] for o in offsets)
                ms = round((time.perf_counter() - started) / len(offsets) * 1000, 2)
                results[name] = min(ms, results.get(name, ms))
        file.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples-per-task", type=int, default=24)
    parser.add_argument("--samples-per-shard", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--repeats", type=int, default=3, help="epochs per mode and worker count (best of)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from loopback_s3 import CountingProxy, aws_environment, create_bucket, sample_extents

    work = Path(tempfile.mkdtemp(prefix="bench-s3-", dir=args.workdir))
    moto = subprocess.Popen([sys.executable, "-c", _MOTO], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    try:
        upstream = "http://" + moto.stdout.readline().strip()
        out = convert_corpus(work, args.samples_per_task, args.samples_per_shard)
        extents = sample_extents(out)
        from llaso_data.manifest import read_manifest
        manifest = read_manifest(out).to_pylist()
        sizes = {row["shard"]: row["bytes"] for row in manifest}
        with CountingProxy(upstream) as proxy, aws_environment(proxy.url):
            create_bucket(upstream, "bench")
            url = "s3://bench/out"
            objects = upload(out, url)
            results = {"corpus": {"samples": sum(r["num_samples"] for r in manifest), "shards": len(manifest),
                                  "bytes": sum(sizes.values()), "objects": objects}, "modes": []}
            for workers in (1, 2):
                runs, whole = {}, None
                for _ in range(args.repeats):  # interleaved, best of (the machine is shared)
                    for mode, root in (("local", out), ("s3 ranged", url)):
                        run = epoch(root, workers, proxy)
                        if mode not in runs or run["seconds"] < runs[mode]["seconds"]:
                            runs[mode] = run
                    run = whole_shard_epoch(url, work / "cache", workers, proxy, sizes)
                    if whole is None or run["seconds"] < whole["seconds"]:
                        whole = run
                for mode, run in runs.items():
                    used = used_bytes(run["plan"], extents)
                    results["modes"].append({
                        "mode": mode, "workers": workers, "samples": run["samples"],
                        "samples_per_s": round(run["samples"] / run["seconds"], 1),
                        "requests_per_sample": round((run["meta_requests"] + run["data_requests"]) / run["samples"], 3),
                        "metadata_requests": run["meta_requests"],
                        "bytes_read_per_byte_used": round(run["data_bytes"] / used, 4) if mode != "local" else None,
                        "metadata_bytes": run["meta_bytes"]})
                used = used_bytes(runs["local"]["plan"], extents)
                results["modes"].append({
                    "mode": "s3 whole-shard", "workers": workers, "samples": whole["samples"],
                    "samples_per_s": round(whole["samples"] / whole["seconds"], 1),
                    "download_seconds": round(whole["download_seconds"], 2),
                    "requests_per_sample": round(whole["requests"] / whole["samples"], 3),
                    "bytes_read_per_byte_used": round(whole["shard_bytes"] / used, 4)})
            for row in results["modes"]:
                base = next(r for r in results["modes"] if r["mode"] == "local" and r["workers"] == row["workers"])
                row["speed_vs_local"] = round(row["samples_per_s"] / base["samples_per_s"], 3)
            results["whole_shard_bytes_per_byte_used_by_world_size"] = whole_shard_ratios(out, extents, sizes)
        results["ms_per_ranged_get"] = ranged_get_ms(upstream)
    finally:
        moto.terminate()
        moto.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    c = results["corpus"]
    print(f"corpus: {c['samples']} samples in {c['shards']} shards, {c['bytes'] / 2**20:.1f} MiB (flac16k)")
    print(f"{'mode':<16}{'W':>3}{'samples/s':>11}{'vs local':>10}{'req/sample':>12}{'bytes read/used':>17}")
    for r in results["modes"]:
        ratio = "-" if r["bytes_read_per_byte_used"] is None else f"{r['bytes_read_per_byte_used']:.3f}"
        print(f"{r['mode']:<16}{r['workers']:>3}{r['samples_per_s']:>11.1f}{r['speed_vs_local']:>10.3f}"
              f"{r['requests_per_sample']:>12.3f}{ratio:>17}")
    print("whole-shard fetch, bytes read per byte used by rank 0 at world size:",
          results["whole_shard_bytes_per_byte_used_by_world_size"])
    print("ms per 64 KiB ranged GET (moto on loopback):", results["ms_per_ranged_get"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
