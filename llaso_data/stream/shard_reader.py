"""Read one sample from a shard at a known byte offset, with explicit decoders only.

Only the sample's ``.json`` member (parsed with ``json``) and its ``audioN.*`` members
(returned as views of the fetched bytes, decoded later) are read. Nothing is unpickled; a member
of any other kind where a clip is expected is an error.

A shard is a local path or an object-store URL, read through the storage layer by byte
ranges (the same code for both). Given where a sample ends (the next sample's index offset,
which the plan carries), a sample costs one ranged read of exactly its bytes; opening a
shard costs one small read of its first header (:data:`READ_AHEAD`), and a sample without a
known end is read header by header with the same read-ahead. The loader fetches a batch's
samples together (:meth:`ShardReader.fetch`, several reads in flight), so a batch waits
about one request's latency (``bench/object_store.py`` measures requests per sample, bytes
read per byte used and samples/s).
"""

from __future__ import annotations

import io
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llaso_data.records import Sample
from llaso_data.storage import RangeFile, StorageError, is_url, open_file

READ_AHEAD = 4096
"""Bytes fetched by a read that misses the buffer, unless the read itself wants more."""
FETCH_CONCURRENCY = 8
"""Ranged reads a reader keeps in flight at once in :meth:`ShardReader.fetch`."""
END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE
"""Zero bytes (at least) after a tar's last member."""
Location = "str | os.PathLike"


class CorruptShardError(ValueError):
    """A shard that cannot be read where the plan says; the message names shard and member."""


class ShardReader:
    """Keeps the shards one worker uses open: ``read(path, offset)`` returns
    ``(sample, [clip, ...])``, each clip's bytes a ``memoryview`` of the sample's fetched
    range (no copy); ``release(path)`` closes a shard the worker is done
    with. At most ``max_open`` stay open (beyond it the least recently used is closed, and
    reopened if read again). Paths may be ``str`` or ``Path`` (both name the same open
    shard), or object-store URLs. Errors name the shard by its path or URL: a shard that is
    missing or not a tar raises :class:`CorruptShardError`; a read that still fails after
    the storage layer's retries raises :class:`~llaso_data.storage.StorageError` naming the
    URL, the shard and the sample's byte offset."""

    def __init__(self, max_open: int = 64):
        if max_open < 1:
            raise ValueError("max_open must be >= 1")
        self._max_open = max_open
        self._open: dict[Location, tarfile.TarFile] = {}
        self._pool: ThreadPoolExecutor | None = None

    def _tar(self, path: Location) -> tarfile.TarFile:
        tar = self._open.pop(path, None)
        if tar is None:
            if len(self._open) >= self._max_open:
                oldest = next(iter(self._open))
                _close(self._open.pop(oldest))
            try:
                tar = tarfile.open(fileobj=RangeReader(open_file(path)), mode="r:")
            except StorageError:
                raise
            except (OSError, tarfile.TarError) as error:
                raise CorruptShardError(f"{path}: cannot open as a tar: {error}") from None
        self._open[path] = tar  # most recently used last
        return tar

    @property
    def open_count(self) -> int:
        return len(self._open)

    def release(self, path: Location) -> None:
        tar = self._open.pop(_key(path), None)
        if tar is not None:
            _close(tar)

    def fetch(self, samples: list[tuple[Location, int, int]]) -> None:
        """Fetch the bytes of several samples (``(path, offset, end)`` as :meth:`read` takes
        them) with up to :data:`FETCH_CONCURRENCY` ranged reads in flight, so that their
        :meth:`read` costs no request: on an object store a batch waits about one request's
        latency, not one per sample. Local shards are left to :meth:`read` (one read each,
        no latency to overlap). A sample whose fetch fails is left to :meth:`read`, which
        reports it."""
        jobs = []
        for path, offset, end in samples:
            if not is_url(path):  # a local read has no latency to hide; threads would only cost CPU
                continue
            try:
                file = self._tar(_key(path)).fileobj
            except (CorruptShardError, OSError):
                continue
            if file.stop(end) > offset:  # else (a truncated shard) read() reports it
                jobs.append((file, offset, file.stop(end)))
        if len(jobs) < 2:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(FETCH_CONCURRENCY)
        for done in [self._pool.submit(file.fetch, start, stop) for file, start, stop in jobs]:
            done.result()

    def read(self, path: Location, offset: int, end: int | None = None) -> tuple[Sample, list[bytes]]:
        """The sample whose ``.json`` header is at byte ``offset``; ``end``, where its bytes
        end (-1: at the archive's closing zero blocks), lets it be fetched in one read."""
        try:
            return self._read(_key(path), offset, end)
        except StorageError as error:
            raise StorageError(f"{path}: sample at byte {offset}: {error}") from error

    def _read(self, path: Location, offset: int, end: int | None) -> tuple[Sample, list[bytes]]:
        tar = self._tar(path)
        if end is not None:
            tar.fileobj.prefetch(offset, tar.fileobj.stop(end))
        shard = str(path)
        member = self._member_at(tar, shard, offset)
        if not member.name.endswith(".json"):
            raise CorruptShardError(f"{shard}: member {member.name}: expected a sample's .json at byte {offset}")
        sample = self._parse_sample(tar, shard, member)
        clips = []
        for index in range(len(sample.audio)):
            clip = self._member_at(tar, shard, tar.offset)
            expected = f"{sample.key}.audio{index}."
            if not clip.name.startswith(expected) or clip.name.endswith((".pyd", ".pth", ".pkl", ".pickle")):
                raise CorruptShardError(f"{shard}: member {clip.name}: expected {expected}<audio extension>")
            clips.append(self._data(tar, shard, clip))
        return sample, clips

    def _member_at(self, tar: tarfile.TarFile, shard: str, offset: int) -> tarfile.TarInfo:
        """Parse the member header (PAX headers included) at ``offset``."""
        tar.fileobj.seek(offset)
        try:
            member = tarfile.TarInfo.fromtarfile(tar)
        except (tarfile.HeaderError, tarfile.TarError, EOFError) as error:
            raise CorruptShardError(f"{shard}: no valid member header at byte {offset} "
                                    f"(truncated or corrupt shard): {error or type(error).__name__}") from None
        if not member.isfile():
            raise CorruptShardError(f"{shard}: member {member.name} at byte {offset} is not a file")
        return member

    def _data(self, tar: tarfile.TarFile, shard: str, member: tarfile.TarInfo) -> memoryview:
        """The member's bytes, a view of the sample's fetched range (no copy)."""
        data = tar.fileobj.view(member.offset_data, member.size)
        if len(data) != member.size:
            raise CorruptShardError(f"{shard}: member {member.name}: truncated ({len(data)} of {member.size} bytes)")
        return data

    def _parse_sample(self, tar: tarfile.TarFile, shard: str, member: tarfile.TarInfo) -> Sample:
        data = self._data(tar, shard, member)
        try:
            sample = Sample.from_json(bytes(data))
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptShardError(f"{shard}: member {member.name}: not a sample's JSON: {error}") from None
        if f"{sample.key}.json" != member.name:
            raise CorruptShardError(f"{shard}: member {member.name}: holds sample {sample.key!r}")
        return sample

    def close(self) -> None:
        for tar in self._open.values():
            _close(tar)
        self._open.clear()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _key(path: Location) -> "str | Path":
    """One key per shard: a URL as it is, a local path as a ``Path``."""
    return path if isinstance(path, Path) or is_url(path) else Path(path)


def _close(tar: tarfile.TarFile) -> None:
    """Close ``tar`` and the ranged file under it (tarfile leaves a given file open)."""
    tar.close()
    tar.fileobj.close()


class RangeReader(io.RawIOBase):
    """A seekable, read-only file over a :class:`~llaso_data.storage.RangeFile` that keeps
    the last fetched range: a read inside it costs nothing; one past it fetches what is
    missing, at least :data:`READ_AHEAD` bytes (one request on an object store). Ranges
    fetched ahead (:meth:`fetch`, thread-safe) wait by start offset until
    :meth:`prefetch` asks for them."""

    def __init__(self, file: RangeFile):
        self._file, self.size = file, file.size
        self._position, self._start, self._buffer = 0, 0, b""
        self._fetched: dict[int, bytes] = {}

    def stop(self, end: int) -> int:
        """Where a sample whose index end is ``end`` stops (-1: at the closing zero blocks)."""
        return end if end >= 0 else self.size - END_OF_ARCHIVE

    def fetch(self, start: int, stop: int) -> None:
        """Read bytes ``start .. stop - 1`` now and keep them for :meth:`prefetch`; a failed
        read is dropped (the later :meth:`prefetch` reads, and reports, again)."""
        try:
            self._fetched[start] = self._file.read_at(start, stop - start)
        except OSError:
            pass

    def prefetch(self, start: int, stop: int) -> None:
        """Hold bytes ``start .. stop - 1`` (one read unless already held or fetched)."""
        fetched = self._fetched.pop(start, None)
        if fetched is not None and len(fetched) >= min(stop, self.size) - start:
            self._start, self._buffer = start, fetched
        elif stop > start and not self._holds(start, stop):
            self._start, self._buffer = start, self._file.read_at(start, stop - start)

    def _holds(self, start: int, stop: int) -> bool:
        """Whether the held range covers bytes ``start .. stop - 1``."""
        return self._start <= start and stop <= self._start + len(self._buffer)

    def view(self, start: int, size: int) -> memoryview:
        """Bytes ``start .. start + size - 1`` (fewer at the end of the file) without a copy:
        a view of the held range, which is fetched first unless it holds them."""
        stop = min(start + size, self.size)
        if not self._holds(start, stop):
            self._start, self._buffer = start, self._file.read_at(start, max(stop - start, 0))
        return memoryview(self._buffer)[start - self._start:stop - self._start]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = base + offset
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self._position + size)
        if end <= self._position:
            return b""
        inside = self._start <= self._position < self._start + len(self._buffer)
        head = self._buffer[self._position - self._start:end - self._start] if inside else b""
        missing = self._position + len(head)
        if missing < end:
            fetched = self._file.read_at(missing, max(end - missing, READ_AHEAD))
            self._start, self._buffer = missing, fetched
            head += fetched[:end - missing]
        self._position += len(head)
        return head

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()
