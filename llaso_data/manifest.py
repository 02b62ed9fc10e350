"""The on-disk contract between conversion and training: Parquet tables under OUT.

* ``manifest.parquet``: one row per shard (:data:`MANIFEST_SCHEMA`);
* ``index.parquet``: one row per written sample (:data:`INDEX_SCHEMA`), grouped by shard in
  manifest order, so a shard's rows start at the sum of ``num_samples`` of the manifest rows
  before it (the loader reads a rank's shards by these row ranges);
* ``rejects.parquet``: one row per rejected input record (:data:`REJECTS_SCHEMA`);
* ``report.json``: counts, the accounting identity and the options used.

Described for users in ``shards/README.md``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from llaso_data.storage import Store, open_store


MANIFEST_SCHEMA = pa.schema([
    ("shard", pa.string()), ("split", pa.string()), ("modality", pa.string()),
    ("task", pa.string()), ("category", pa.string()), ("num_samples", pa.int64()),
    ("audio_seconds", pa.float64()), ("bytes", pa.int64()), ("sha256", pa.string()),
])
INDEX_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("offset", pa.int64()),
    ("split", pa.string()), ("modality", pa.string()), ("task", pa.string()),
    ("category", pa.string()), ("audio_seconds", pa.float64()), ("num_clips", pa.int32()),
    ("text_chars", pa.int64()), ("source", pa.string()), ("ordinal", pa.int64()),
])
REJECTS_SCHEMA = pa.schema([
    ("source", pa.string()), ("ordinal", pa.int64()), ("reason", pa.string()),
    ("detail", pa.string()), ("raw", pa.string()), ("byte_offset", pa.int64()),
    ("key", pa.string()),
])

MANIFEST_FILE = "manifest.parquet"
INDEX_FILE = "index.parquet"
REJECTS_FILE = "rejects.parquet"
REPORT_FILE = "report.json"


def write_table(out: Store, name: str, rows: list[dict], schema: pa.Schema) -> None:
    """Write ``rows`` as Parquet file ``name`` under ``out``, atomically."""
    with out.writer(name) as stream:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), stream)


class StreamingTableWriter:
    """Append rows to Parquet file ``name`` under ``out`` holding at most one row group in
    memory; it appears, complete, on close (atomic). Rows arrive sorted by shard, so each row
    group's min/max statistics let a reader that filters on ``shard`` skip the groups it does
    not need."""

    def __init__(self, out: Store, name: str, schema: pa.Schema, row_group_rows: int = 65536):
        self._schema, self._limit = schema, row_group_rows
        self._output = out.writer(name)
        self._writer = pq.ParquetWriter(self._output.__enter__(), schema)
        self._pending: list[dict] = []

    def write(self, rows: list[dict]) -> None:
        self._pending.extend(rows)
        while len(self._pending) >= self._limit:
            self._flush(self._pending[:self._limit])
            self._pending = self._pending[self._limit:]

    def _flush(self, rows: list[dict]) -> None:
        self._writer.write_table(pa.Table.from_pylist(rows, schema=self._schema))

    def close(self) -> None:
        if self._pending:
            self._flush(self._pending)
        self._writer.close()
        self._output.__exit__(None, None, None)


def read_manifest(out: str | os.PathLike) -> pa.Table:
    """The shard manifest of a converted corpus (a local folder or a URL), in file order
    (the order of the index's shard groups).

    Read with ``ParquetFile``, not ``read_table``, which imports ``pyarrow.dataset`` and with
    it pandas (~0.5 s and ~40 MB, in every rank)."""
    with open_store(out).open_file(MANIFEST_FILE) as file:
        table = pq.ParquetFile(file.native).read(columns=MANIFEST_SCHEMA.names)
    return table if table.schema.equals(MANIFEST_SCHEMA) else table.cast(MANIFEST_SCHEMA)


@contextmanager
def open_index(out: str | os.PathLike, **options) -> Iterator[pq.ParquetFile]:
    """``index.parquet`` of a converted corpus (a local folder or a URL) as a ``ParquetFile``
    whose reads are ranged: reading some row groups downloads only those (and the footer).
    ``options`` go to ``ParquetFile`` (e.g. ``read_dictionary``)."""
    with open_store(out).open_file(INDEX_FILE) as file:
        yield pq.ParquetFile(file.native, **options)
