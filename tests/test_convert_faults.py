"""Conversion under faults: non-regular audio, NaN audio, edited and added records, a busy
OUT, a full disk, duplicate index keys and CLI usage mistakes. Real files, real Ray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile

from llaso_data.convert.lock import out_lock
from llaso_data.convert.pipeline import ConversionError, ConvertOptions, convert
from llaso_data.convert.verify import verify
from llaso_data.ingest.corpus import scan
from llaso_data.ingest.paths import AudioRoot
from llaso_synth.corpus import write_corpus

REPO = Path(__file__).resolve().parents[1]
LLASO_SHARD = [sys.executable, "-m", "llaso_data.cli"]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from llaso_data.convert.ray_local import init_ray

    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def _record(voice: str, answer: str = "Yes.") -> dict:
    return {"voice": [voice], "conversations": [{"from": "human", "value": "Transcribe.<audio>"},
                                                 {"from": "gpt", "value": answer}]}


def _output_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "report.json"}


def test_fifo_device_nul_and_nan_audio_are_rejections_within_seconds(tmp_path, ray_local):
    root = tmp_path / "corpus"
    (root / "text_audio").mkdir(parents=True)
    soundfile.write(root / "good.wav", np.zeros(1600, np.int16), 16000)
    nan = np.zeros(1600, np.float32)
    nan[800] = np.nan
    soundfile.write(root / "nan.wav", nan, 16000, subtype="FLOAT")
    os.mkfifo(root / "fifo.wav")
    voices = ["good.wav", "fifo.wav", "nan.wav", "bad\0name.wav"]
    expected = {"audio_not_a_file": 1, "audio_invalid": 1, "bad_field_type": 1}
    try:
        os.mknod(root / "zero.wav", 0o644 | 0o020000, os.makedev(1, 5))  # a character device: /dev/zero
        voices.append("zero.wav")
        expected["audio_not_a_file"] += 1
    except PermissionError:
        pass  # mknod needs CAP_MKNOD; the FIFO still covers a non-regular file
    (root / "text_audio" / "ASR_test.json").write_text(json.dumps([_record(v) for v in voices]))

    report = scan(str(root), audio=AudioRoot(str(root)))
    assert report.rejected["audio_not_a_file"] == expected["audio_not_a_file"]
    started = time.monotonic()
    result = convert(ConvertOptions(str(root), str(tmp_path / "out"), samples_per_shard=10))
    assert time.monotonic() - started < 60
    assert result.identity_holds and result.written == 1
    assert result.rejected_by_reason == expected


def _small_corpus(root: Path) -> None:
    write_corpus(root, seed=7, samples_per_task=2)


def _edit_answers(path: Path, count: int) -> None:
    records = json.loads(path.read_text("utf-8"))
    for record in records[:count]:
        record["conversations"][-1]["value"] += " (edited)"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), "utf-8")


def _add_records(path: Path, count: int) -> None:
    records = json.loads(path.read_text("utf-8"))
    records += [json.loads(json.dumps(records[0])) for _ in range(count)]
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), "utf-8")


@pytest.mark.parametrize("change", [_edit_answers, _add_records], ids=["edit", "add"])
def test_changed_sources_give_what_a_fresh_conversion_gives(tmp_path, ray_local, change):
    root = tmp_path / "corpus"
    _small_corpus(root)
    options = ConvertOptions(root, tmp_path / "out", samples_per_shard=2)
    first = convert(options)
    unchanged = convert(options)
    assert unchanged.shards_reused == unchanged.shards and unchanged.sources_changed == []
    target = sorted(root.rglob("*_train.json"))[0]
    change(target, 3)
    updated = convert(options)
    assert updated.identity_holds, updated
    assert updated.sources_changed == [target.relative_to(root).as_posix()]
    assert 0 < updated.shards - updated.shards_reused < first.shards  # only the shards it feeds
    fresh = convert(ConvertOptions(root, tmp_path / "fresh", samples_per_shard=2))
    assert (fresh.written, fresh.rejected) == (updated.written, updated.rejected)
    assert _output_bytes(tmp_path / "out") == _output_bytes(tmp_path / "fresh")
    assert verify(tmp_path / "out").ok


def test_busy_out_is_refused_naming_its_holder_and_a_stale_lock_is_taken(tmp_path, ray_local):
    root = tmp_path / "corpus"
    _small_corpus(root)
    out = tmp_path / "out"
    (out / ".state").mkdir(parents=True)
    with out_lock(out / ".state"):
        with pytest.raises(ConversionError, match=f"PID {os.getpid()}"):
            convert(ConvertOptions(root, out, samples_per_shard=4))
    # a lock file left by a killed run (its flock died with it) names a dead PID
    (out / ".state" / "lock").write_text("PID 999999999 on elsewhere\n")
    assert convert(ConvertOptions(root, out, samples_per_shard=4)).identity_holds


def test_full_disk_stops_with_one_line_and_leaves_no_temporary_files(tmp_path, ray_local):
    root = tmp_path / "corpus"
    _small_corpus(root)
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs CAP_SYS_ADMIN)")
    try:
        with pytest.raises(ConversionError) as caught:
            convert(ConvertOptions(root, mount / "out", samples_per_shard=4))
        message = str(caught.value)
        assert "\n" not in message and "No space left on device" in message and str(mount) in message
        assert not list(mount.rglob("*.tmp"))
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_verify_reports_a_repeated_index_key(tmp_path, ray_local):
    root = tmp_path / "corpus"
    _small_corpus(root)
    out = tmp_path / "out"
    convert(ConvertOptions(root, out, samples_per_shard=4))
    index = pq.read_table(out / "index.parquet")
    doubled = pa.concat_tables([index, index.slice(0, 1)])
    pq.write_table(doubled, out / "index.parquet")
    report = verify(out)
    assert any("listed more than once" in p for p in report.problems["index.parquet"])


@pytest.mark.parametrize("arguments, message", [
    (["convert", "{src}", "{out}", "--samples-per-shard", "0"], "must be at least 1"),
    (["convert", "{src}", "{file}"], "exists and is not a folder"),
    (["convert", "{src}", "{out}", "--audio-root", "/nonexistent"], "no such folder"),
    (["stats", "{src}", "--chart", "/missing/dir/x.png"], None),
])
def test_cli_usage_mistakes_are_one_line_with_status_2(tmp_path, arguments, message):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ASR_test.json").write_text("[]")
    (tmp_path / "file").write_text("x")
    argv = [a.format(src=tmp_path / "src", out=tmp_path / "out", file=tmp_path / "file") for a in arguments]
    result = subprocess.run([*LLASO_SHARD, *argv], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    if message:
        assert message in result.stderr
