"""``verify`` catches damaged, missing and stray shards; ``stats`` agrees with manifest and index.

One small corpus is synthesised and converted (in-process Ray) per module; tests that
damage it work on a copy.
"""

from __future__ import annotations

import math
import os
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llaso_data.manifest import INDEX_FILE, INDEX_SCHEMA, MANIFEST_FILE, read_manifest
from llaso_data.convert.stats import corpus_stats, format_stats_table, write_chart
from llaso_synth.corpus import write_corpus
from llaso_data.convert.verify import verify

from conftest import convert_in_process


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """OUT of a converted synthetic corpus (3 samples per task, 4 samples per shard)."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root / "src", samples_per_task=3)
    report = convert_in_process(root / "src", root / "out", samples_per_shard=4)
    assert report.identity_holds and report.written > 0
    return root / "out"


@pytest.fixture
def copy(converted, tmp_path) -> Path:
    """A private copy of the converted corpus, free to damage."""
    return Path(shutil.copytree(converted, tmp_path / "out"))


def _shards(out: Path) -> list[str]:
    return read_manifest(out).column("shard").to_pylist()


def _multi_sample_shard(out: Path) -> str:
    """A shard holding at least two samples."""
    return next(r["shard"] for r in read_manifest(out).to_pylist() if r["num_samples"] >= 2)


def test_clean_conversion_verifies(converted):
    report = verify(converted)
    assert report.ok, report.problems
    assert report.shards_checked == len(_shards(converted))
    assert report.samples_checked == pq.read_metadata(converted / INDEX_FILE).num_rows


def test_flipped_audio_byte_names_only_that_shard(copy):
    shard = _multi_sample_shard(copy)
    with tarfile.open(copy / shard) as tar:
        clip = next(m for m in tar.getmembers() if ".audio" in m.name and m.size > 2)
    with open(copy / shard, "r+b") as f:
        f.seek(clip.offset_data + clip.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    report = verify(copy)
    assert list(report.problems) == [shard]
    assert any("sha256" in p and shard in p for p in report.problems[shard])


def test_truncated_shard_is_caught(copy):
    shard = _multi_sample_shard(copy)
    os.truncate(copy / shard, (copy / shard).stat().st_size // 2)
    problems = verify(copy).problems
    assert list(problems) == [shard]
    text = "\n".join(problems[shard])
    assert "size is" in text and "sha256" in text
    assert "samples, manifest.parquet says" in text


def test_truncated_at_member_boundary_is_caught(copy):
    """Cut right before a sample: tarfile itself ends quietly there."""
    shard = _multi_sample_shard(copy)
    offsets = [r["offset"] for r in pq.read_table(copy / INDEX_FILE).to_pylist() if r["shard"] == shard]
    os.truncate(copy / shard, offsets[1])
    problems = verify(copy).problems[shard]
    assert any("without an end-of-archive marker" in p for p in problems)


def test_deleted_shard_is_caught(copy):
    shard = _shards(copy)[-1]
    (copy / shard).unlink()
    report = verify(copy)
    assert report.problems == {shard: [f"{shard}: missing on disk"]}


def test_stray_tar_is_reported(copy):
    shard = _shards(copy)[0]
    stray = Path(shard).parent / "stray-000000-of-000001.tar"
    shutil.copy(copy / shard, copy / stray)
    report = verify(copy)
    assert list(report.problems) == [stray.as_posix()]
    assert "not listed in manifest.parquet" in report.problems[stray.as_posix()][0]


def test_wrong_index_offset_is_caught(copy):
    index = pq.read_table(copy / INDEX_FILE).to_pylist()
    index[1]["offset"] += 512
    pq.write_table(pa.Table.from_pylist(index, schema=INDEX_SCHEMA), copy / INDEX_FILE)
    problems = verify(copy).problems
    assert list(problems) == [index[1]["shard"]]
    assert f"member {index[1]['key']}.json: header at byte" in problems[index[1]["shard"]][0]


def test_shard_missing_from_manifest_is_caught(copy):
    manifest = read_manifest(copy)
    dropped = manifest["shard"][0].as_py()
    pq.write_table(manifest.slice(1), copy / MANIFEST_FILE)
    problems = verify(copy).problems
    assert "not listed in manifest.parquet" in problems[dropped][0]
    assert "index.parquet" in problems and "counts" in problems["index.parquet"][0]


def test_stats_totals_match_manifest_and_index(converted):
    rows = corpus_stats(converted)
    manifest = read_manifest(converted).to_pylist()
    index = pq.read_table(converted / INDEX_FILE, columns=["audio_seconds"]).column("audio_seconds").to_pylist()
    assert sum(r["samples"] for r in rows) == sum(m["num_samples"] for m in manifest) == len(index)
    assert sum(r["shards"] for r in rows) == len(manifest)
    assert math.isclose(sum(r["hours"] for r in rows) * 3600, sum(index), rel_tol=1e-9)
    keys = [(r["split"], r["modality"], r["task"], r["category"]) for r in rows]
    assert keys == sorted(set(keys))
    assert f"{len(index):>10,}" in format_stats_table(rows).splitlines()[-1]


def test_charts_are_written(converted, tmp_path):
    rows = corpus_stats(converted)
    png, page = tmp_path / "stats.png", tmp_path / "stats.html"
    write_chart(rows, png)
    write_chart(rows, page, metric="samples")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1024
    text = page.read_text("utf-8")
    assert page.stat().st_size > 1024 and "<svg" in text and "<table>" in text and "<script" not in text
    assert text.count("<rect") == len({(r["split"], r["modality"], r["task"]) for r in rows})
