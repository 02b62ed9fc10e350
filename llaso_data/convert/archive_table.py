"""The member table of a set of zip parts, built in parallel Ray tasks and cached.

Layout under the cache folder (``OUT/.archives/``):

* ``<part file name>.<size>.<mtime_ns>.parquet``: one per part, keyed by its name, size and
  mtime: one row per member (``name`` = normalised member path, then ``key``, ``offset``,
  ``compressed``, ``size``, ``crc``, ``method``, ``flags`` as in
  :data:`~llaso_data.ingest.zipparts.MEMBER_DTYPE`); schema metadata ``root`` (the part's
  shared leading folders, absent for a part with no member) and ``unsafe`` (entries left
  out for an absolute or ``..`` name). A part whose size or mtime changed gets a new file
  and its old one is removed; a re-run reads no central directory again.
* ``index-<digest of the set's identity>/``: the merged
  :class:`~llaso_data.ingest.archives.MemberIndex` (``.npy`` files the write tasks
  memory-map).

Ray must be initialised by the caller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llaso_data.ingest.archives import ArchiveSet, MemberIndex, PartInfo, shared_root
from llaso_data.ingest.zipparts import MEMBER_DTYPE, ArchiveError, read_central_directory

CACHE_DIR = ".archives"
_NUMERIC = list(MEMBER_DTYPE.names)


@dataclass
class TableReport:
    """What building the table did: parts read now vs found cached, members, unsafe
    entries left out, seconds spent reading central directories (summed over tasks)."""

    parts_read: int = 0
    parts_cached: int = 0
    members: int = 0
    unsafe: int = 0
    read_seconds: float = 0.0


def cache_file(cache: Path, part: PartInfo) -> Path:
    return cache / f"{part.name}.{part.size}.{part.mtime_ns}.parquet"


def write_part_table(part_path: str, target: str) -> dict:
    """Read one part's central directory and write its Parquet table atomically to
    ``target``; returns ``{"members", "unsafe", "seconds"}``, or ``{"error"}`` (naming the
    part) for a part that is missing, not a zip or truncated."""
    import time

    started = time.perf_counter()
    try:
        directory = read_central_directory(part_path)
    except ArchiveError as error:  # returned, not raised: the driver names the part
        return {"error": str(error)}
    columns = {"name": pa.array(directory.names, pa.string())}
    for field in _NUMERIC:
        columns[field] = pa.array(directory.rows[field])
    metadata = {"unsafe": str(directory.unsafe)}
    if directory.names:
        metadata["root"] = shared_root(directory.names)
    table = pa.table(columns).replace_schema_metadata(metadata)
    temporary = target + ".tmp"
    pq.write_table(table, temporary, compression="zstd")
    os.replace(temporary, target)
    return {"members": len(directory.names), "unsafe": directory.unsafe, "seconds": time.perf_counter() - started}


def build_member_index(archives: ArchiveSet, cache: Path, max_in_flight: int = 64) -> tuple[MemberIndex, TableReport]:
    """The set's member index, from the cache where it is current, else built: one Ray
    task per part whose table is missing (at most ``max_in_flight`` at once), then one
    merge in the caller (44 bytes per member, read from the tables' numeric columns).
    Raises ValueError naming every part that is missing, not a zip or truncated."""
    import ray

    cache.mkdir(parents=True, exist_ok=True)
    report = TableReport()
    wanted = {cache_file(cache, p).name for p in archives.parts}
    names = {p.name for p in archives.parts}
    for stale in cache.glob("*.parquet"):  # an older table of a part that changed
        if stale.name not in wanted and stale.name.rsplit(".", 3)[0] in names:
            stale.unlink()
    missing = [p for p in archives.parts if not cache_file(cache, p).exists()]
    report.parts_cached = len(archives.parts) - len(missing)
    task = ray.remote(num_cpus=1)(write_part_table)
    pending, results = [], []
    for part in missing:
        if len(pending) >= max_in_flight:
            done, pending = ray.wait(pending, num_returns=1)
            results.extend(ray.get(done))
        pending.append(task.remote(part.path, str(cache_file(cache, part))))
    results.extend(ray.get(pending))
    errors = sorted(r["error"] for r in results if "error" in r)
    if errors:
        raise ValueError(f"{len(errors)} archive part(s) cannot be read: " + "; ".join(errors))
    report.parts_read = len(results)
    report.read_seconds = sum(r["seconds"] for r in results)

    folder = cache / f"index-{archives.digest()}"
    if (folder / "meta.json").exists():
        index = MemberIndex.load(folder)
    else:
        rows, roots = [], []
        for part in archives.parts:
            table = pq.read_table(cache_file(cache, part), columns=_NUMERIC)
            part_rows = np.zeros(table.num_rows, MEMBER_DTYPE)
            for field in _NUMERIC:
                part_rows[field] = table[field].to_numpy()
            rows.append(part_rows)
            meta = table.schema.metadata or {}
            roots.append(meta[b"root"].decode() if b"root" in meta else None)
        for old in cache.glob("index-*"):  # the index of an earlier set
            for file in old.iterdir():
                file.unlink()
            old.rmdir()
        staging = cache / f".{folder.name}.staging"
        if staging.exists():  # left by a crash
            for file in staging.iterdir():
                file.unlink()
        MemberIndex.assemble(tuple(p.path for p in archives.parts), rows, roots).save(staging)
        staging.replace(folder)
        index = MemberIndex.load(folder)
    for part in archives.parts:
        meta = pq.read_schema(cache_file(cache, part)).metadata or {}
        report.unsafe += int(meta.get(b"unsafe", b"0"))
    report.members = len(index)
    return index, report
