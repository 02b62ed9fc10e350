"""The storage layer (``llaso_data.storage``) against a real S3 endpoint on 127.0.0.1 (moto
over HTTP, reached through pyarrow's S3 client configured only by ``AWS_*``) and against a
local folder, through the same calls."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llaso_data.storage import StorageError, open_store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(tmp_path / "out")
    return open_store(request.getfixturevalue("s3_bucket") + "/corpus/out")


def test_write_list_read_ranges(store):
    data = os.urandom(3 * 2**20 + 17)
    store.write_bytes("train/a/x.tar", data)
    store.write_text("manifest.json", "{}")
    assert store.list() == ["manifest.json", "train/a/x.tar"]
    assert store.list("train", suffix=".tar") == ["train/a/x.tar"]
    assert store.list("nowhere") == []
    assert store.exists("train/a/x.tar") and not store.exists("train/a/y.tar")
    assert store.size("train/a/x.tar") == len(data)
    assert store.read_bytes("train/a/x.tar") == data
    with store.open_file("train/a/x.tar") as file:
        assert file.size == len(data)
        assert file.read_at(2**20 + 5, 1000) == data[2**20 + 5: 2**20 + 1005]
        assert file.read_at(len(data) - 10, 100) == data[-10:]  # short at the end
    with pytest.raises(FileNotFoundError, match="y.tar"):
        store.read_bytes("train/a/y.tar")


def test_failed_write_leaves_nothing(store):
    store.write_bytes("shard.tar", b"old")
    with pytest.raises(KeyError):
        with store.writer("shard.tar") as stream:
            stream.write(b"new bytes, never completed")
            raise KeyError("interrupted")
    with pytest.raises(KeyError):
        with store.writer("other.tar") as stream:
            stream.write(b"partial")
            raise KeyError("interrupted")
    assert store.list() == ["shard.tar"]
    assert store.read_bytes("shard.tar") == b"old"


def test_temporaries_are_invisible_then_removed(store):
    """A writer's bytes live under a ``.tmp`` name until complete; what a killed writer left
    is listed and removed by ``remove_temporaries``."""
    writer = store.writer("x.tar")
    stream = writer.__enter__()
    stream.write(b"abc")
    assert not store.exists("x.tar")
    writer.__exit__(None, None, None)
    assert store.read_bytes("x.tar") == b"abc"
    with store.fs.open_output_stream(store.path("y.tar.0123.tmp")) as leftover:  # a killed writer's
        leftover.write(b"partial")
    assert store.remove_temporaries() == ["y.tar.0123.tmp"]
    assert store.list() == ["x.tar"]


def test_parquet_reads_are_ranged(s3_endpoint, s3_bucket):
    """Reading one row group of a Parquet object downloads a small part of it."""
    store = open_store(s3_bucket)
    table = pa.table({"key": [f"k{i:07d}" for i in range(200_000)], "offset": list(range(200_000))})
    with store.writer("index.parquet") as stream:
        pq.write_table(table, stream, row_group_size=20_000)
    size = store.size("index.parquet")
    s3_endpoint.reset()
    with store.open_file("index.parquet") as file:
        rows = pq.ParquetFile(file.native).read_row_group(3)
    traffic = s3_endpoint.reset()
    assert rows["offset"].to_pylist() == list(range(60_000, 80_000))
    assert traffic.get_bytes < size / 4, (traffic.get_bytes, size)


def test_transient_errors_are_retried(s3_endpoint, s3_bucket):
    store = open_store(s3_bucket)
    store.write_bytes("x.bin", b"payload")
    failures = []

    def two_throttles(method, path):
        if method == "GET" and len(failures) < 2:
            failures.append(path)
            return 503
        return None

    s3_endpoint.reset()
    s3_endpoint.fault = two_throttles
    assert store.read_bytes("x.bin") == b"payload"
    traffic = s3_endpoint.reset()
    assert traffic.injected == 2 and traffic.requests["GET"] == 3


def test_persistent_errors_name_the_url(s3_endpoint, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    store = open_store(s3_bucket + "/out")
    store.write_bytes("x.bin", b"payload")
    s3_endpoint.reset()
    s3_endpoint.fault = lambda method, path: 500
    started = time.perf_counter()
    with pytest.raises(StorageError, match=f"{s3_bucket}/out/x.bin"):
        store.read_bytes("x.bin")
    traffic = s3_endpoint.reset()
    attempts = int(os.environ["AWS_MAX_ATTEMPTS"])
    # the SDK's attempts for each of ours, then the error
    assert attempts < traffic.total <= attempts * attempts, traffic.requests
    assert time.perf_counter() - started > 0.05  # with backoff between attempts


def test_url_forms():
    local = open_store("relative/dir")
    assert local.local_path is not None and local.local_path.is_absolute()
    assert open_store("file:///tmp/x").url == "/tmp/x"
    with pytest.raises(ValueError, match="unsupported"):
        open_store("gs://bucket/x")
    with pytest.raises(ValueError, match="no bucket"):
        open_store("s3://")
