"""Check a converted corpus against its own manifest and index, one shard at a time.

For every row of ``manifest.parquet`` the shard must exist inside OUT, have the recorded
size (bytes) and sha256, and be a tar whose members form WebDataset samples: one
``<key>.json`` member (a :class:`~llaso_data.records.Sample` with that key and one
duration per clip) followed by ``<key>.audio0.*`` ... ``<key>.audio<n-1>.*``, where ``n`` is
the number of clips of the sample. The samples, their order, header byte offsets, clip
counts and audio seconds must match ``index.parquet`` and the manifest row, and every key
must appear once in the index (its key column is read whole, by Arrow). Tar files under
OUT that the manifest does not list are reported too.

Each shard file is read once, sequentially, through a hashing reader (tarfile's stream
mode: nothing is extracted, nothing is unpickled; only ``.json`` members are held in
memory, one at a time). The index is streamed in batches; only one shard's rows are held.
"""

from __future__ import annotations

import hashlib
import math
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from llaso_data.manifest import INDEX_FILE, MANIFEST_FILE, read_manifest
from llaso_data.storage import RangeFile, Store, open_store
from llaso_data.records import Sample

_READ_CHUNK = 8 * 2**20
"""Bytes per read from a shard file (one request on an object store)."""
_INDEX_BATCH = 65536
"""Index rows per Parquet batch."""
_JSON_LIMIT = 16 * 2**20
"""Largest ``.json`` member (bytes) that is read; a bigger one is reported, not read."""
_END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE
"""Bytes of zeros that end a tar archive."""
_MAX_PROBLEMS = 20
"""Problems listed per shard; further ones are counted in a last line."""


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`.

    ``problems`` maps a shard path (relative to OUT) to human-readable problems, each naming
    the shard (and the member, where there is one) and what is wrong. Problems of the corpus
    as a whole are filed under the table they concern (``manifest.parquet``, ``index.parquet``).
    """

    shards_checked: int = 0
    samples_checked: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, where: str, problems: list[str]) -> None:
        """File ``problems`` under ``where`` (nothing when the list is empty)."""
        if problems:
            self.problems.setdefault(where, []).extend(problems)


@dataclass(frozen=True)
class _Entry:
    """One sample of a shard, as the index records it or as found in the tar."""

    key: str
    offset: int
    """Byte offset of the ``.json`` member's header (its PAX header, if it has one)."""
    num_clips: int
    seconds: float | None
    """Audio seconds of the sample; None when its JSON could not be read."""


def verify(out: Path | str) -> VerifyReport:
    """Verify the converted corpus in ``out`` (a folder or an ``s3://`` prefix); see the
    module docstring for what is checked."""
    out = open_store(out)
    report = VerifyReport()
    manifest = _load_manifest(out, report)
    if manifest is None:
        return report
    report.add(INDEX_FILE, _duplicate_keys(out))
    indexed = _verify_indexed_shards(out, manifest, report)
    for shard in [s for s in manifest if s not in indexed]:
        report.add(shard, [f"{shard}: listed in {MANIFEST_FILE} but has no rows in {INDEX_FILE}"])
        _verify_shard(out, manifest[shard], None, report)
    for shard in _stray_shards(out, manifest):
        report.add(shard, [f"{shard}: tar file on disk but not listed in {MANIFEST_FILE}"])
    return report


def _duplicate_keys(out: Store) -> list[str]:
    """A problem per key the index lists more than once (the first few, then a count).
    The key column is counted by Arrow, outside Python objects."""
    import pyarrow.compute as pc

    try:
        with out.open_file(INDEX_FILE) as file:
            keys = pq.ParquetFile(file.native).read(columns=["key"])["key"]
    except (OSError, pa.ArrowException):
        return []  # reported where the index is read
    counts = pc.value_counts(keys).flatten()
    repeated = pc.filter(counts[0], pc.greater(counts[1], 1)).to_pylist()
    problems = [f"{INDEX_FILE}: key {key!r} is listed more than once" for key in repeated[:_MAX_PROBLEMS]]
    if len(repeated) > _MAX_PROBLEMS:
        problems.append(f"{INDEX_FILE}: ... and {len(repeated) - _MAX_PROBLEMS} more repeated keys")
    return problems


def _load_manifest(out: Store, report: VerifyReport) -> dict[str, dict] | None:
    """Manifest rows by shard path, or None (with a problem filed) when unreadable."""
    try:
        rows = read_manifest(out.url).to_pylist()
    except (OSError, pa.ArrowException) as error:
        report.add(MANIFEST_FILE, [f"{MANIFEST_FILE}: cannot be read: {error}"])
        return None
    manifest: dict[str, dict] = {}
    for row in rows:
        if row["shard"] in manifest:
            report.add(row["shard"], [f"{row['shard']}: listed more than once in {MANIFEST_FILE}"])
        manifest[row["shard"]] = row
    return manifest


def _verify_indexed_shards(out: Store, manifest: dict[str, dict], report: VerifyReport) -> set[str]:
    """Verify each shard named in the index against its rows; check the sample total.
    Returns the shards the index names."""
    seen: set[str] = set()
    rows = 0
    try:
        for shard, entries in _index_runs(out):
            rows += len(entries)
            if shard in seen:
                report.add(shard, [f"{shard}: its rows in {INDEX_FILE} are not contiguous"])
            elif shard not in manifest:
                report.add(shard, [f"{shard}: has {len(entries)} rows in {INDEX_FILE} but is not "
                                   f"listed in {MANIFEST_FILE}"])
            else:
                _verify_shard(out, manifest[shard], entries, report)
            seen.add(shard)
    except (OSError, pa.ArrowException) as error:
        report.add(INDEX_FILE, [f"{INDEX_FILE}: cannot be read: {error}"])
        return seen
    expected = sum(row["num_samples"] for row in manifest.values())
    if rows != expected:
        report.add(INDEX_FILE, [f"{INDEX_FILE}: has {rows} rows but {MANIFEST_FILE} counts {expected} samples"])
    return seen


def _index_runs(out: Store) -> Iterator[tuple[str, list[_Entry]]]:
    """Stream the index as runs of consecutive rows of the same shard."""
    columns = ["key", "shard", "offset", "num_clips", "audio_seconds"]
    shard, run = None, []
    with out.open_file(INDEX_FILE) as file:
        for batch in pq.ParquetFile(file.native).iter_batches(batch_size=_INDEX_BATCH, columns=columns):
            data = batch.to_pydict()
            for key, name, offset, clips, seconds in zip(*(data[c] for c in columns)):
                if name != shard:
                    if run:
                        yield shard, run
                    shard, run = name, []
                run.append(_Entry(key, offset, clips, seconds))
    if run:
        yield shard, run


def _verify_shard(out: Store, row: dict, index: list[_Entry] | None, report: VerifyReport) -> None:
    """Check one shard file against its manifest row and its index rows (unless None, or
    no sample could be read from the file)."""
    shard = row["shard"]
    report.shards_checked += 1
    if Path(shard).is_absolute() or ".." in Path(shard).parts:
        problems = [f"{shard}: path leaves the corpus folder"]
    elif not out.exists(shard):
        problems = [f"{shard}: missing on disk"]
    else:
        try:
            found, problems = _check_file(out, row)
        except OSError as error:
            found, problems = [], [f"{shard}: cannot be read: {error}"]
        report.samples_checked += len(found)
        if index is not None and found:
            problems += _compare_index(shard, found, index)
    report.add(shard, _capped(problems))


def _check_file(out: Store, row: dict) -> tuple[list[_Entry], list[str]]:
    """Read the shard once, front to back (on an object store one ranged GET per
    :data:`_READ_CHUNK`): its samples, plus problems with size, hash, tar structure and the
    manifest's counts."""
    shard = row["shard"]
    with out.open_file(shard) as raw:
        reader = _HashingReader(raw)
        found, problems, end = _scan_tar(reader, row)
        reader.drain()
    if end is not None:
        problems += _check_end(shard, reader, end)
    file_problems = []
    if reader.size != row["bytes"]:
        file_problems.append(f"{shard}: size is {reader.size} bytes, {MANIFEST_FILE} says {row['bytes']}")
    if reader.sha256.hexdigest() != row["sha256"]:
        file_problems.append(f"{shard}: sha256 is {reader.sha256.hexdigest()}, {MANIFEST_FILE} says {row['sha256']}")
    return found, file_problems + problems + _compare_manifest(shard, found, row)


class _HashingReader:
    """A read-only file object that hashes and counts what is read through it and tracks
    where the last non-zero byte ends (to tell a tar's end-of-archive zeros from garbage)."""

    def __init__(self, raw: RangeFile):
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0
        """Bytes read so far."""
        self.data_end = 0
        """Byte position just after the last non-zero byte read so far."""

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read_at(self.size, self._raw.size - self.size if size < 0 else size)
        self.sha256.update(chunk)
        nonzero = len(chunk.rstrip(b"\0"))
        if nonzero:
            self.data_end = self.size + nonzero
        self.size += len(chunk)
        return chunk

    def drain(self) -> None:
        """Read (and hash) the rest of the file."""
        while self.read(_READ_CHUNK):
            pass


class _OpenSample:
    """The sample whose ``.json`` member was read last, while its clip members follow.

    ``wanted`` (clips) and ``seconds`` (audio) are None when its JSON could not be read.
    """

    def __init__(self, key: str, offset: int, wanted: int | None, seconds: float | None):
        self.key, self.offset, self.wanted, self.seconds, self.clips = key, offset, wanted, seconds, 0

    def next_clip_prefix(self) -> str:
        return f"audio{self.clips}."

    def close(self, shard: str) -> tuple[_Entry, list[str]]:
        """The finished sample, and a problem when its clip members are too few or too many."""
        problems = [] if self.wanted in (None, self.clips) else [
            f"{shard}: member {self.key}.json: the sample has {self.wanted} clips but {self.clips} "
            f"audio members follow it"]
        return _Entry(self.key, self.offset, self.clips, self.seconds), problems


def _scan_tar(reader: _HashingReader, row: dict) -> tuple[list[_Entry], list[str], int | None]:
    """Stream the tar's members and group them into WebDataset samples. Also returns the
    byte offset where the members end, or None when the tar could not be read to its end."""
    shard = row["shard"]
    found: list[_Entry] = []
    problems: list[str] = []
    current: _OpenSample | None = None
    last = "the start"
    try:
        with tarfile.open(fileobj=reader, mode="r|", bufsize=_READ_CHUNK) as tar:
            for member in tar:
                last = f"member {member.name}"
                key, _, suffix = member.name.partition(".")
                if not member.isreg():
                    problems.append(f"{shard}: member {member.name}: not a regular file")
                elif suffix == "json":
                    if current is not None:
                        _close(current, shard, found, problems)
                    sample, seconds, sample_problems = _read_sample(tar, member, key, row)
                    current = _OpenSample(key, member.offset, sample and len(sample.audio), seconds)
                    problems += sample_problems
                elif current is not None and key == current.key and _is_clip(suffix, current):
                    current.clips += 1
                else:
                    problems.append(f"{shard}: member {member.name}: {_unexpected(current)}")
            end = tar.offset
    except (tarfile.TarError, EOFError) as error:
        problems.append(f"{shard}: unreadable tar at {last}: {error}")
        end = None
    if current is not None:
        _close(current, shard, found, problems)
    return found, problems, end


def _close(current: _OpenSample, shard: str, found: list[_Entry], problems: list[str]) -> None:
    entry, clip_problems = current.close(shard)
    found.append(entry)
    problems += clip_problems


def _unexpected(current: _OpenSample | None) -> str:
    """Why a member that is neither a ``.json`` nor the next clip is out of place."""
    if current is None:
        return "comes before any .json member"
    return f"is not the next clip of the sample before it ({current.key}.{current.next_clip_prefix()}*)"


def _is_clip(suffix: str, current: _OpenSample) -> bool:
    """Whether ``suffix`` (the member name after the key) is the next clip, ``audio<i>.<ext>``."""
    prefix = current.next_clip_prefix()
    return suffix.startswith(prefix) and len(suffix) > len(prefix)


def _read_sample(tar: tarfile.TarFile, member: tarfile.TarInfo, key: str,
                 row: dict) -> tuple[Sample | None, float | None, list[str]]:
    """Parse a ``.json`` member as a Sample and check it against its member key and the
    shard's stratum. Returns the sample, its audio seconds and problems; the sample and
    the seconds are None when it cannot be parsed."""
    where = f"{row['shard']}: member {member.name}"
    if member.size > _JSON_LIMIT:
        return None, None, [f"{where}: {member.size} bytes, too large for a sample's JSON"]
    try:
        sample = Sample.from_json(tar.extractfile(member).read())
        seconds = sum(sample.durations)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        return None, None, [f"{where}: not a sample's JSON: {type(error).__name__}: {error}"]
    problems = []
    if sample.key != key:
        problems.append(f"{where}: holds sample key {sample.key!r}, not the member's key {key!r}")
    if len(sample.durations) != len(sample.audio):
        problems.append(f"{where}: {len(sample.durations)} durations for {len(sample.audio)} clips")
    stratum = (row["split"], row["modality"], row["task"])
    if sample.stratum != stratum:
        problems.append(f"{where}: sample of {'/'.join(sample.stratum)} in a shard of {'/'.join(stratum)}")
    return sample, seconds, problems


def _check_end(shard: str, reader: _HashingReader, end: int) -> list[str]:
    """Problems when the members stop at byte ``end`` without only end-of-archive zeros after
    them (tarfile ends iteration quietly at a truncated or damaged header). ``reader`` must
    have read the whole file."""
    if reader.data_end > end:
        return [f"{shard}: no valid member header at byte {end} but non-zero data follows "
                f"(damaged or truncated header)"]
    if reader.size - end < _END_OF_ARCHIVE:
        return [f"{shard}: ends at byte {reader.size} without an end-of-archive marker (truncated)"]
    return []


def _compare_manifest(shard: str, found: list[_Entry], row: dict) -> list[str]:
    """Problems when the samples found disagree with the manifest's sample count or seconds."""
    problems = []
    if len(found) != row["num_samples"]:
        problems.append(f"{shard}: holds {len(found)} samples, {MANIFEST_FILE} says {row['num_samples']}")
    seconds = [e.seconds for e in found]
    if None not in seconds and not math.isclose(sum(seconds), row["audio_seconds"], rel_tol=1e-9, abs_tol=1e-6):
        problems.append(f"{shard}: holds {sum(seconds):.6f} s of audio, {MANIFEST_FILE} says "
                        f"{row['audio_seconds']:.6f} s")
    return problems


def _compare_index(shard: str, found: list[_Entry], index: list[_Entry]) -> list[str]:
    """Problems when the samples found in the tar disagree with the shard's index rows."""
    in_tar = {e.key: e for e in found}
    in_index = {e.key: e for e in index}
    problems = [f"{shard}: member {key}.json: sample not in {INDEX_FILE}" for key in in_tar if key not in in_index]
    problems += [f"{shard}: sample {key} in {INDEX_FILE} but not in the tar" for key in in_index if key not in in_tar]
    for key in in_tar.keys() & in_index.keys():
        problems += _compare_entry(shard, in_tar[key], in_index[key])
    if len(index) != len(in_index):
        problems.append(f"{shard}: {INDEX_FILE} lists {len(index) - len(in_index)} keys more than once")
    return problems


def _compare_entry(shard: str, tar: _Entry, index: _Entry) -> list[str]:
    """Problems when one sample's place, clip count or seconds differ between tar and index."""
    where = f"{shard}: member {tar.key}.json"
    problems = []
    if tar.offset != index.offset:
        problems.append(f"{where}: header at byte {tar.offset}, {INDEX_FILE} says {index.offset}")
    if tar.num_clips != index.num_clips:
        problems.append(f"{where}: {tar.num_clips} audio members, {INDEX_FILE} says {index.num_clips}")
    if tar.seconds is not None and not math.isclose(tar.seconds, index.seconds, rel_tol=1e-9, abs_tol=1e-6):
        problems.append(f"{where}: {tar.seconds:.6f} s of audio, {INDEX_FILE} says {index.seconds:.6f} s")
    return problems


def _capped(problems: list[str]) -> list[str]:
    """At most :data:`_MAX_PROBLEMS` problems, then a line counting the rest."""
    if len(problems) <= _MAX_PROBLEMS:
        return problems
    return problems[:_MAX_PROBLEMS] + [f"... and {len(problems) - _MAX_PROBLEMS} more problems"]


def _stray_shards(out: Store, manifest: dict[str, dict]) -> list[str]:
    """Tar files under ``out`` (paths relative to it) that the manifest does not list."""
    return [name for name in out.list(suffix=".tar") if name not in manifest]
