"""Deterministic, atomic WebDataset tar shards.

A shard holds the samples of one stratum (split / modality / task). Each sample is a
``<key>.json`` member (the normalised :class:`~llaso_data.records.Sample`, durations filled
in) followed by one ``<key>.audio<i>.<ext>`` member per clip, so plain ``webdataset`` and
``tar tf`` read it. Which shard a sample goes to, and its place inside the shard, are
seeded hashes of its key: the same input and options always give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from .audio import AudioError, encode_clip
from .paths import AudioPathError, resolve_under_real_root
from .records import Rejection, Sample

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def shard_name(split: str, modality: str, task: str, index: int) -> str:
    """Relative shard path, e.g. ``train/text_audio/ASR/ASR-000003.tar``.

    A task name with characters unsafe in paths (possible for unknown stems) is cleaned
    and suffixed with a hash of the raw name, so two tasks never share a folder. Shard
    numbers can have gaps (a hash slot that drew no sample); the manifest lists what exists.
    """
    folder = _UNSAFE.sub("-", task)
    if folder != task:
        folder += "-" + hashlib.sha1(task.encode("utf-8")).hexdigest()[:8]
    return f"{split}/{modality}/{folder}/{folder}-{index:06d}.tar"


def _digest(seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{key}".encode("utf-8"), digest_size=8).digest()


def shard_index(key: str, seed: int, num_shards: int) -> int:
    """Seeded pseudo-random shard of a sample, uniform over ``range(num_shards)``."""
    return int.from_bytes(_digest(seed, key), "big") % num_shards


def order_within_shard(key: str, seed: int) -> bytes:
    """Sort key that fixes a sample's position inside its shard (independent of input order)."""
    return _digest(seed + 1, key)


def audio_member(index: int, extension: str) -> str:
    """Member suffix of the ``index``-th clip, e.g. ``audio0.wav``."""
    return f"audio{index}.{extension}"


@dataclass
class ShardResult:
    """What writing one shard produced: its manifest row, one index row per written
    sample (in shard order) and the samples rejected because of their audio."""

    manifest: dict
    index: list[dict] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def write_shard(out_root: Path, name: str, samples: list[Sample], audio_root: Path,
                audio_mode: str, seed: int) -> ShardResult:
    """Read the audio of ``samples``, write ``out_root/name`` atomically, return its rows.

    Samples whose audio is missing, undecodable or empty become rejections. When every
    sample is rejected no tar is written and ``manifest["num_samples"]`` is 0.
    """
    first = samples[0]
    split, modality, task, category = first.split, first.modality, first.task, first.category
    target = out_root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    result = ShardResult(manifest={})
    seconds_total = 0.0
    real_root = os.path.realpath(audio_root)
    with open(temporary, "wb") as file:
        tar = TarStream(file)
        for sample in sorted(samples, key=lambda s: order_within_shard(s.key, seed)):
            try:
                clips = [encode_clip(resolve_under_real_root(real_root, p), audio_mode) for p in sample.audio]
            except (AudioError, AudioPathError) as error:
                result.rejections.append(Rejection(sample.source, sample.ordinal, error.reason,
                                                   str(error), sample.to_json(), None, sample.key))
                continue
            stored = replace(sample, durations=tuple(round(c.seconds, 6) for c in clips))
            offset = tar.add(f"{sample.key}.json", stored.to_json().encode("utf-8"))
            for i, clip in enumerate(clips):
                tar.add(f"{sample.key}.{audio_member(i, clip.extension)}", clip.data)
            seconds = sum(stored.durations)
            seconds_total += seconds
            result.index.append({
                "key": sample.key, "shard": name, "offset": offset,
                "split": split, "modality": modality, "task": task, "category": category,
                "audio_seconds": seconds, "num_clips": len(clips),
                "text_chars": sum(len(t.text) for t in sample.turns),
                "source": sample.source, "ordinal": sample.ordinal,
            })
        tar.close()
    if result.index:
        os.replace(temporary, target)
    else:
        temporary.unlink()
    result.manifest = {
        "shard": name, "split": split, "modality": modality, "task": task, "category": category,
        "num_samples": len(result.index), "audio_seconds": seconds_total,
        "bytes": tar.size if result.index else 0,
        "sha256": tar.sha256.hexdigest() if result.index else "",
    }
    return result


class TarStream:
    """Append regular files to an uncompressed tar on ``file``, hashing what it writes.

    Headers come from :class:`tarfile.TarInfo` (PAX format, fixed owner, mode and mtime);
    each member's data goes out in one write, with no intermediate copy. The bytes equal
    those of ``tarfile.open(mode="w", format=PAX_FORMAT)`` + ``addfile`` + ``close``.
    ``size`` counts bytes written, ``sha256`` hashes them.
    """

    def __init__(self, file: BinaryIO):
        self._file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def _write(self, data: bytes) -> None:
        self.sha256.update(data)
        self._file.write(data)
        self.size += len(data)

    def add(self, name: str, data: bytes) -> int:
        """Append member ``name`` holding ``data``; returns its header's byte offset."""
        offset = self.size
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._write(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))
        self._write(data)
        if len(data) % tarfile.BLOCKSIZE:
            self._write(tarfile.NUL * (tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE))
        return offset

    def close(self) -> None:
        """End the archive: two zero blocks, then zeros up to a whole 10 KiB record."""
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        if self.size % tarfile.RECORDSIZE:
            self._write(tarfile.NUL * (tarfile.RECORDSIZE - self.size % tarfile.RECORDSIZE))
