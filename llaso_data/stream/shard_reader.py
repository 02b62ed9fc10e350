"""Read one sample from a shard at a known byte offset, with explicit decoders only.

Only the sample's ``.json`` member (parsed with ``json``) and its ``audioN.*`` members
(returned as bytes, decoded later with soundfile) are read. Nothing is unpickled; a member
of any other kind where a clip is expected is an error.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from llaso_data.records import Sample


class CorruptShardError(ValueError):
    """A shard that cannot be read where the plan says; the message names shard and member."""


class ShardReader:
    """Keeps the shards one worker uses open: ``read(path, offset)`` returns
    ``(sample, [clip bytes, ...])``; ``release(path)`` closes a shard the worker is done
    with. At most ``max_open`` stay open (beyond it the least recently used is closed, and
    reopened if read again). Paths may be ``str`` or ``Path``; both name the same open
    shard. Errors name the shard by its path."""

    def __init__(self, max_open: int = 64):
        if max_open < 1:
            raise ValueError("max_open must be >= 1")
        self._max_open = max_open
        self._open: dict[Path, tarfile.TarFile] = {}

    def _tar(self, path: Path) -> tarfile.TarFile:
        tar = self._open.pop(path, None)
        if tar is None:
            if len(self._open) >= self._max_open:
                oldest = next(iter(self._open))
                self._open.pop(oldest).close()
            try:
                tar = tarfile.open(path, mode="r:")
            except (OSError, tarfile.TarError) as error:
                raise CorruptShardError(f"{path}: cannot open as a tar: {error}") from None
        self._open[path] = tar  # most recently used last
        return tar

    @property
    def open_count(self) -> int:
        return len(self._open)

    def release(self, path: str | Path) -> None:
        tar = self._open.pop(Path(path), None)
        if tar is not None:
            tar.close()

    def read(self, path: str | Path, offset: int) -> tuple[Sample, list[bytes]]:
        path = Path(path)
        tar = self._tar(path)
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

    def _data(self, tar: tarfile.TarFile, shard: str, member: tarfile.TarInfo) -> bytes:
        tar.fileobj.seek(member.offset_data)
        data = tar.fileobj.read(member.size)
        if len(data) != member.size:
            raise CorruptShardError(f"{shard}: member {member.name}: truncated ({len(data)} of {member.size} bytes)")
        return data

    def _parse_sample(self, tar: tarfile.TarFile, shard: str, member: tarfile.TarInfo) -> Sample:
        data = self._data(tar, shard, member)
        try:
            sample = Sample.from_json(data)
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptShardError(f"{shard}: member {member.name}: not a sample's JSON: {error}") from None
        if f"{sample.key}.json" != member.name:
            raise CorruptShardError(f"{shard}: member {member.name}: holds sample {sample.key!r}")
        return sample

    def close(self) -> None:
        for tar in self._open.values():
            tar.close()
        self._open.clear()
