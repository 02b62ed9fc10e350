"""The cluster path on a real S3 endpoint on 127.0.0.1 (moto over HTTP, behind a counting
proxy; see ``tests/loopback_s3.py``): synth -> convert into the bucket (an uninterrupted run,
and a run killed with SIGKILL and resumed) -> verify -> stream with exact resume -> train a
few ZeRO-3 steps from the bucket. The library reaches the bucket only through ``AWS_*`` and
pyarrow's S3 client, as a user's AWS bucket would be reached."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llaso_data.cli import main as llaso_shard
from llaso_data.stream.loader import ShardStream, StreamConfig, StreamLoader
from llaso_data.stream.plan import Batching, PlanConfig, Selection, Source
from llaso_data.stream.shard_reader import READ_AHEAD
from llaso_data.storage import open_store
from llaso_synth.corpus import write_corpus

from conftest import convert_in_process
from loopback_s3 import sample_extents

REPO = Path(__file__).resolve().parents[1]
SHARDS_PER = 3


def _objects(url: str) -> dict[str, bytes]:
    """Every object under ``url`` but the timing report, by relative name."""
    store = open_store(url)
    return {name: store.read_bytes(name) for name in store.list() if name != "report.json"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, seed=7, samples_per_task=2, faults=True)
    return root


@pytest.fixture(scope="module")
def bucket(s3_endpoint) -> str:
    from loopback_s3 import create_bucket

    create_bucket(s3_endpoint.upstream_url, "llaso-object-store")
    return "s3://llaso-object-store"


@pytest.fixture(scope="module")
def reference(corpus, bucket) -> str:
    """An uninterrupted conversion into the bucket."""
    url = f"{bucket}/reference"
    report = convert_in_process(corpus, url, samples_per_shard=SHARDS_PER)
    assert report.identity_holds and report.shards > 5
    return url


def test_conversion_into_the_bucket_is_complete_and_verifies(reference, capsys):
    store = open_store(reference)
    names = store.list()
    assert {"manifest.parquet", "index.parquet", "rejects.parquet", "report.json"} <= set(names)
    assert not [n for n in names if n.endswith(".tmp")]
    report = json.loads(store.read_text("report.json"))["report"]
    assert report["identity_holds"] and report["rejected"] > 0  # the corpus holds faulty records
    shards = [n for n in names if n.endswith(".tar")]
    assert len(shards) == report["shards"]
    assert llaso_shard(["verify", reference]) == 0
    assert llaso_shard(["stats", reference]) == 0
    assert "ASR" in capsys.readouterr().out
    assert llaso_shard(["plan", reference, "--world-size", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)  # planned from the bucket's tables
    assert summary["batches_per_rank"] > 0 and summary["samples_per_rank"] * 2 <= summary["epoch_samples"]


def test_killed_conversion_into_the_bucket_resumes_byte_identical(corpus, bucket, reference):
    target = f"{bucket}/killed"
    store = open_store(target)
    command = [sys.executable, "-m", "llaso_data.cli", "convert", str(corpus), target,
               "--samples-per-shard", str(SHARDS_PER), "--num-cpus", "2"]
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(store.list(".state", suffix=".tar.json")) < 4:
        assert process.poll() is None, "conversion ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not store.exists("manifest.parquet")
    done_before = len(store.list(".state", suffix=".tar.json"))
    assert done_before >= 4

    report = convert_in_process(corpus, target, samples_per_shard=SHARDS_PER)
    assert report.shards_reused >= done_before - 1
    assert _objects(target) == _objects(reference)


def test_verify_names_a_corrupted_object(reference, bucket):
    """A flipped byte in one shard object (and a stray object) are caught by verify."""
    copy = f"{bucket}/corrupted"
    source, target = open_store(reference), open_store(copy)
    for name in source.list():
        target.fs.copy_file(source.path(name), target.path(name))
    shard = next(n for n in target.list(suffix=".tar"))
    data = bytearray(target.read_bytes(shard))
    data[len(data) // 3] ^= 0xFF
    target.write_bytes(shard, bytes(data))
    target.write_bytes("train/stray.tar", b"")
    from llaso_data.convert.verify import verify

    report = verify(copy)
    assert set(report.problems) == {shard, "train/stray.tar"}
    assert any("sha256" in p for p in report.problems[shard])
    assert llaso_shard(["verify", copy]) == 1


def _config(root: str | Path) -> StreamConfig:
    return StreamConfig(PlanConfig((Source(root, Selection(splits=None), name="corpus"),),
                                   batching=Batching(batch_size=3), shuffle_block=8))


def _keys_and_audio(loader: StreamLoader, limit: int | None = None) -> list[tuple[list[str], np.ndarray]]:
    batches = []
    for batch in loader:
        batches.append((batch["keys"], batch["chunks"].numpy().copy()))
        if limit is not None and len(batches) == limit:
            break
    return batches


def test_stream_from_the_bucket_equals_local_and_resumes_exactly(reference, s3_endpoint, tmp_path):
    local = tmp_path / "local"
    store = open_store(reference)
    for name in store.list():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(store.read_bytes(name))
    expected = _keys_and_audio(StreamLoader(ShardStream(_config(local)), num_workers=0))

    s3_endpoint.reset()
    stream = ShardStream(_config(reference))
    plan = stream.prepare()
    loader = StreamLoader(stream, num_workers=2)
    served = _keys_and_audio(loader)
    traffic = s3_endpoint.reset()
    assert [k for k, _ in served] == [k for k, _ in expected]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(served, expected))
    # one ranged GET per sample, plus per shard its opening (HEAD + first header) and the tables
    samples = sum(len(k) for k, _ in served)
    assert traffic.requests["GET"] <= samples + 2 * len(plan.shard_names) + 10, traffic.requests
    extents = sample_extents(local)
    used = sum(extents[(plan.shard_names[int(plan.shard[s])], int(plan.offset[s]))] for b in plan.batches for s in b)
    tables = sum((local / n).stat().st_size for n in ("manifest.parquet", "index.parquet"))
    # per shard and worker: its opening read (READ_AHEAD) and the closing zero padding
    # read with its last sample (< one 10 KiB tar record)
    overhead = tables + 2 * len(plan.shard_names) * (READ_AHEAD + 10240)
    assert traffic.get_bytes <= 1.01 * used + overhead, (traffic.get_bytes, used, overhead)

    # exact resume: a new loader from the state after 2 batches serves exactly the rest
    first = StreamLoader(ShardStream(_config(reference)), num_workers=2)
    _keys_and_audio(first, limit=2)
    state = first.state_dict()
    resumed = StreamLoader(ShardStream(_config(reference)), num_workers=2)
    resumed.load_state_dict(state)
    rest = _keys_and_audio(resumed)
    assert [k for k, _ in rest] == [k for k, _ in expected[2:]]


def test_a_shard_that_keeps_failing_is_named(reference, s3_endpoint, monkeypatch):
    """Throttling that outlasts the retries ends in an error naming URL, shard and offset;
    a missing shard follows on_corrupt."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    stream = ShardStream(_config(reference))
    plan = stream.prepare()
    first = plan.shard_path(int(plan.shard[plan.batches[0][0]]))
    s3_endpoint.fault = lambda method, path: 503 if method == "GET" and path.split("?")[0].endswith(".tar") else None
    from llaso_data.storage import StorageError

    with pytest.raises(StorageError, match=str(first).replace("s3://", "")):
        next(iter(StreamLoader(stream, num_workers=0)))
    s3_endpoint.fault = None


def test_train_a_few_steps_and_generate_from_the_bucket(reference, tmp_path):
    """Two ZeRO-3 ranks under torchrun train the tiny preset from ``data.sources`` in the
    bucket (the ranks and their loader workers reach it through the inherited ``AWS_*``);
    ``llaso-eval generate --shards s3://...`` answers the bucket's test samples."""
    out = tmp_path / "run"
    command = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "-m", "llaso_train",
               "--config", str(REPO / "llaso_train" / "configs" / "tiny_align.yaml"), f"output_dir={out}",
               "data.shards=null", f"data.sources=[{{shards: '{reference}', weight: 1}}]", "data.splits=null",
               "max_steps=3", "save_every=100", "data.num_workers=1"]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(np.isfinite(m["loss"]) for m in metrics)

    # the exported model answers the bucket's ASR test samples (one rank, full copy)
    predictions = tmp_path / "predictions"
    result = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "1", "-m",
                             "llaso_eval", "generate", "--model", str(out / "export"),
                             "--shards", reference, "--out", str(predictions), "--tasks", "ASR",
                             "--max-new-tokens", "4", "--zero-stage", "0", "--num-workers", "0"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    summary = json.loads((predictions / "generation.json").read_text())
    assert summary["predicted"] == summary["samples"] > 0
