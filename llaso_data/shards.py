"""Deterministic, atomic WebDataset tar shards.

A shard holds the samples of one stratum (split / modality / task). Each sample is a
``<key>.json`` member (the normalised :class:`~llaso_data.records.Sample`, durations filled
in) followed by one ``<key>.audio<i>.<ext>`` member per clip, so plain ``webdataset`` and
``tar tf`` read it. Which shard a sample goes to, and its place inside the shard, are
seeded hashes of its key: the same input and options always give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from .audio import AudioError, encode_clip
from .paths import AudioPathError, resolve_audio_path
from .records import Rejection, Sample

_COPY_BUFSIZE = 8 << 20  # copy a member with one write, not 16 KiB Python-level chunks
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


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append one regular file with fixed metadata; returns its header's byte offset."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    offset = tar.offset
    tar.addfile(info, io.BytesIO(data))
    return offset


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
    hasher = hashlib.sha256()
    seconds_total = 0.0
    with open(temporary, "wb") as raw_file:
        writer = _HashingWriter(raw_file, hasher)
        with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT,
                          copybufsize=_COPY_BUFSIZE) as tar:
            for sample in sorted(samples, key=lambda s: order_within_shard(s.key, seed)):
                try:
                    clips = [encode_clip(resolve_audio_path(audio_root, p), audio_mode) for p in sample.audio]
                except (AudioError, AudioPathError) as error:
                    result.rejections.append(Rejection(sample.source, sample.ordinal, error.reason,
                                                       str(error), sample.to_json(), None, sample.key))
                    continue
                stored = replace(sample, durations=tuple(round(c.seconds, 6) for c in clips))
                offset = _add_member(tar, f"{sample.key}.json", stored.to_json().encode("utf-8"))
                for i, clip in enumerate(clips):
                    _add_member(tar, f"{sample.key}.{audio_member(i, clip.extension)}", clip.data)
                seconds = sum(stored.durations)
                seconds_total += seconds
                result.index.append({
                    "key": sample.key, "shard": name, "offset": offset,
                    "split": split, "modality": modality, "task": task, "category": category,
                    "audio_seconds": seconds, "num_clips": len(clips),
                    "text_chars": sum(len(t.text) for t in sample.turns),
                    "source": sample.source, "ordinal": sample.ordinal,
                })
        size = writer.size
    if result.index:
        os.replace(temporary, target)
    else:
        temporary.unlink()
    result.manifest = {
        "shard": name, "split": split, "modality": modality, "task": task, "category": category,
        "num_samples": len(result.index), "audio_seconds": seconds_total,
        "bytes": size if result.index else 0,
        "sha256": hasher.hexdigest() if result.index else "",
    }
    return result


class _HashingWriter(io.RawIOBase):
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, target, hasher):
        self._target, self._hasher, self.size = target, hasher, 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data) -> int:
        self._hasher.update(data)
        self.size += len(data)
        return self._target.write(data)
