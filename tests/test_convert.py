"""Ray conversion end to end on the synthetic corpus: accounting, determinism, resume,
the ``ray job submit`` path, and reading the shards back with plain webdataset."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
import webdataset as wds

from llaso_data.convert.pipeline import ConversionError, ConvertOptions, ShardPlan, convert
from llaso_data.ingest.corpus import iter_corpus
from llaso_data.records import Sample
from llaso_data.convert.shard_writer import TarStream
from llaso_synth.corpus import write_corpus

from conftest import convert_in_process

REPO = Path(__file__).resolve().parents[1]
LLASO_SHARD = [sys.executable, "-m", "llaso_data.cli"]
SHARDS_PER = 3


def _output_bytes(out: Path) -> dict[str, bytes]:
    """Every output file except the timing report, by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "report.json"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    summary = write_corpus(root, seed=3, samples_per_task=3, faults=True)
    return root, summary


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """One conversion through the CLI (local Ray started and stopped by the command)."""
    root, _ = corpus
    out = tmp_path_factory.mktemp("reference")
    result = subprocess.run([*LLASO_SHARD, "convert", str(root), str(out), "--samples-per-shard", str(SHARDS_PER),
                             "--num-cpus", "2"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_every_record_is_written_or_rejected_with_its_reason(corpus, reference):
    root, summary = corpus
    out, result = reference
    report = json.loads((out / "report.json").read_text())["report"]
    assert report["identity_holds"] and report["read"] == summary.records
    assert report["written"] == summary.valid
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    counts: dict[str, int] = {}
    for row in rejects:
        counts[row["reason"]] = counts.get(row["reason"], 0) + 1
        assert row["source"] and row["detail"]
    assert counts == summary.expected_rejects
    assert f"accounting: read {summary.records:,} = written {summary.valid:,}" in result.stdout

    manifest = pq.read_table(out / "manifest.parquet")
    assert {"shard", "split", "modality", "task", "num_samples", "sha256"} <= set(manifest.column_names)
    rows = manifest.to_pylist()
    assert sum(r["num_samples"] for r in rows) == summary.valid
    for row in rows:
        assert row["shard"].startswith(f"{row['split']}/{row['modality']}/")
        assert (out / row["shard"]).stat().st_size == row["bytes"]
    strata = {(r["split"], r["modality"], r["task"]) for r in rows}
    assert ("train", "audio_text", "AQA") in strata and ("train", "pure_audio", "AQA") in strata
    assert ("train", "text_audio", "ALIGN") in strata and any(t == "CONV" for _, _, t in strata)

    index = pq.read_table(out / "index.parquet").to_pylist()
    assert len(index) == summary.valid == len({r["key"] for r in index})
    assert all(r["audio_seconds"] > 0 and r["text_chars"] > 0 for r in index)


def test_shards_read_back_through_plain_webdataset_equal_the_records(corpus, reference):
    root, _ = corpus
    out, _ = reference
    expected = {s.key: s for s in iter_corpus(root) if isinstance(s, Sample)}
    urls = sorted(str(p) for p in out.rglob("*.tar"))
    seen = 0
    for item in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        stored = Sample.from_json(item["json"])
        original = expected[item["__key__"]]
        assert stored.durations and len(stored.durations) == len(original.audio)
        assert stored.to_dict() | {"durations": []} == original.to_dict()
        for i, path in enumerate(original.audio):
            member = next(k for k in item if k.startswith(f"audio{i}."))
            assert item[member] == (root / path).read_bytes()
            assert stored.durations[i] == pytest.approx(soundfile.info(root / path).duration, abs=1e-3)
        seen += 1
    assert seen == len(expected) - 3  # the three samples whose audio is missing, corrupt or empty


def test_same_input_and_options_give_byte_identical_output(corpus, reference, tmp_path):
    root, _ = corpus
    out, _ = reference
    from llaso_data.convert.ray_local import init_ray
    import ray

    init_ray(None, num_cpus=2)
    try:
        again = convert(ConvertOptions(root, tmp_path / "again", samples_per_shard=SHARDS_PER))
        assert again.identity_holds and again.shards_reused == 0
        rerun = convert(ConvertOptions(root, tmp_path / "again", samples_per_shard=SHARDS_PER))
        states = list((tmp_path / "again" / ".state").rglob("*.tar.json"))
        assert rerun.shards_reused == len(states) >= rerun.shards  # every shard was found done
        with pytest.raises(ConversionError, match="other options|options"):
            convert(ConvertOptions(root, tmp_path / "again", samples_per_shard=SHARDS_PER + 1))
    finally:
        ray.shutdown()
    assert _output_bytes(tmp_path / "again") == _output_bytes(out)


def test_tar_stream_writes_what_tarfile_writes(tmp_path):
    # ustar headers (ASCII names up to 100 bytes) and PAX ones (longer or non-ASCII names)
    members = [("a.json", b"{}"), ("k" * 150 + ".audio0.wav", bytes(range(256)) * 7),
               ("clé-ü.audio1.flac", b"x" * 512), ("empty.json", b""), ("n" * 100, b"y" * 513),
               ("m" * 101, b"z")]
    with open(tmp_path / "ours.tar", "wb") as file:
        stream = TarStream(file)
        offsets = [stream.add(name, data) for name, data in members]
        stream.close()
    with tarfile.open(tmp_path / "tarfile.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
                len(data), 0, 0o644, 0, 0, "", "")
            tar.addfile(info, io.BytesIO(data))
    ours = (tmp_path / "ours.tar").read_bytes()
    assert ours == (tmp_path / "tarfile.tar").read_bytes()
    assert stream.size == len(ours) and stream.sha256.hexdigest() == hashlib.sha256(ours).hexdigest()
    with tarfile.open(tmp_path / "ours.tar") as tar:
        assert [(m.name, m.offset) for m in tar.getmembers()] == [(n, o) for (n, _), o in zip(members, offsets)]


def test_shard_plan_numbers_slots_by_stratum_and_cuts_whole_shards():
    plan = ShardPlan.from_counts({("test", "text_audio", "SER"): 1200, ("test", "text_audio", "ASR"): 2500,
                                  ("train", "pure_audio", "AQA"): 1}, samples_per_shard=1000)
    assert plan.strata[0] == ("test", "text_audio", "ASR") and plan.shards_per_stratum == (3, 2, 1)
    assert plan.samples == 3701 and plan.shards == 6
    assert plan.first_slots() == {("test", "text_audio", "ASR"): (0, 3), ("test", "text_audio", "SER"): (3, 2),
                                  ("train", "pure_audio", "AQA"): (5, 1)}
    assert plan.partitions(256) == [1, 2, 3, 4, 5]  # one write task per shard
    runs = plan.partitions(2)  # two runs of about 1,850 expected samples each
    assert runs == [2] or runs == [3]
    assert ShardPlan.from_counts({}, 1000).partitions(8) == [0]


def test_output_does_not_depend_on_how_shards_are_spread_over_write_tasks(corpus, reference, tmp_path):
    root, _ = corpus
    out, _ = reference
    from llaso_data.convert.ray_local import init_ray
    import ray

    init_ray(None, num_cpus=2)
    try:
        # The reference ran with the default (a few tasks, many shards each); here every
        # shard gets its own task.
        report = convert(ConvertOptions(root, tmp_path / "one-per-shard", samples_per_shard=SHARDS_PER),
                         write_tasks=10_000)
    finally:
        ray.shutdown()
    assert report.identity_holds and report.shards > 4
    assert _output_bytes(tmp_path / "one-per-shard") == _output_bytes(out)


def test_killed_conversion_resumes_to_the_same_output(corpus, reference, tmp_path):
    root, _ = corpus
    out, _ = reference
    target = tmp_path / "killed"
    command = [*LLASO_SHARD, "convert", str(root), str(target), "--samples-per-shard", str(SHARDS_PER), "--num-cpus", "2"]
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    states = target / ".state"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(states.rglob("*.tar.json"))) < 5:
        assert process.poll() is None, "conversion ended before it could be killed"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (target / "manifest.parquet").exists()
    done_before = len(list(states.rglob("*.tar.json")))
    assert done_before >= 5

    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((target / "report.json").read_text())["report"]
    assert report["shards_reused"] >= done_before - 1
    assert _output_bytes(target) == _output_bytes(out)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_http(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_ray_job_submit_on_loopback(corpus, reference, tmp_path):
    root, _ = corpus
    out, _ = reference
    venv_bin = Path(sys.executable).parent
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_USAGE_STATS_ENABLED="0", PATH=f"{venv_bin}{os.pathsep}{os.environ['PATH']}")
    gcs_port, dashboard_port = _free_port(), _free_port()
    # Ray's Unix sockets live under --temp-dir; pytest's tmp paths are too long for them.
    ray_temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    head = subprocess.Popen(
        [str(venv_bin / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(gcs_port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
         "--num-cpus", "2", "--temp-dir", ray_temp],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_http(f"http://127.0.0.1:{dashboard_port}/api/version", 90)
        submit = [str(venv_bin / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}",
                  "--working-dir", ".", "--", "python", "pipelines/shard_corpus.py", str(root),
                  str(tmp_path / "submitted"), "--samples-per-shard", str(SHARDS_PER)]
        deadline = time.monotonic() + 480
        while True:  # the job agent registers seconds (minutes on a loaded machine) after the dashboard answers
            result = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            if "No available agent" not in result.stderr or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        assert "accounting: read" in result.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(ray_temp, ignore_errors=True)
    assert _output_bytes(tmp_path / "submitted") == _output_bytes(out)


def test_flac16k_stores_mono_16khz_flac(corpus, tmp_path):
    root, _ = corpus
    source = root / "LLaSO-Eval"
    from llaso_data.convert.ray_local import init_ray
    import ray

    init_ray(None, num_cpus=2)
    try:
        report = convert(ConvertOptions(source, tmp_path / "flac", audio_root=root, audio_mode="flac16k",
                                        samples_per_shard=50))
    finally:
        ray.shutdown()
    assert report.identity_holds and report.written > 0
    originals = {s.key: s for s in iter_corpus(source) if isinstance(s, Sample)}
    checked = 0
    for item in wds.WebDataset(sorted(str(p) for p in (tmp_path / "flac").rglob("*.tar")),
                               shardshuffle=False, empty_check=False):
        for name, data in item.items():
            if name.startswith("audio"):
                assert name.endswith(".flac")
                audio, rate = soundfile.read(__import__("io").BytesIO(data))
                assert rate == 16000 and audio.ndim == 1
                clip = int(name[len("audio"):].split(".")[0])
                original = soundfile.info(root / originals[item["__key__"]].audio[clip])
                assert len(audio) / 16000 == pytest.approx(original.duration, abs=0.01)
                assert np.abs(audio).max() > 0.01
                checked += 1
    assert checked >= report.written


def test_a_file_holding_one_object_converts_as_one_record_and_is_reported(tmp_path):
    """A ``.json`` file holding one object (as LLaSO's data_merge.py accepts) is one record;
    the report names it (the CLI prints it as a warning), an array file is not named."""
    corpus = tmp_path / "corpus"
    write_corpus(corpus, seed=2, samples_per_task=2)
    source = tmp_path / "src" / "text_audio"
    source.mkdir(parents=True)
    records = json.loads((corpus / "LLaSO-Instruct" / "text_audio" / "meld_ER_classification_train.json").read_text())
    (source / "meld_ER_classification_train.json").write_text(json.dumps(records[0], ensure_ascii=False))
    (source / "meld_SV_classification_train.json").write_text(json.dumps(records, ensure_ascii=False))
    report = convert_in_process(source.parent, tmp_path / "out", audio_root=corpus)
    assert report.single_objects == ["text_audio/meld_ER_classification_train.json"]
    assert (report.read, report.written, report.rejected) == (1 + len(records), 1 + len(records), 0)
