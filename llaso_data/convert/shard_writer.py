"""Deterministic, atomic WebDataset tar shards.

A shard holds the samples of one stratum (split / modality / task). Each sample is a
``<key>.json`` member (the normalised :class:`~llaso_data.records.Sample`, durations filled
in) followed by one ``<key>.audio<i>.<ext>`` member per clip, so plain ``webdataset`` and
``tar tf`` read it. Which shard a sample goes to, and its place inside the shard, are
seeded hashes of its key: the same input and options always give the same bytes.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from llaso_data.convert.clips import CLIP_ERRORS, ClipReader
from llaso_data.convert.transcode import encode_data
from llaso_data.ingest.archives import AudioSource
from llaso_data.records import Rejection, Sample
from llaso_data.storage import Store

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


class _NothingToWrite(Exception):
    """Every sample of a shard was rejected: its tar is not published."""


def write_shard(out_root: Store, name: str, samples: list[Sample], audio: AudioSource,
                audio_mode: str, seed: int) -> ShardResult:
    """Read the audio of ``samples`` from ``audio`` (a folder of loose files or a set of
    zip parts), write ``name`` under ``out_root`` (a local folder or a bucket prefix)
    atomically, return its rows. The tar streams out as it is built (on S3 a multipart
    upload) and appears under its name only when complete.

    Samples whose audio is missing, not a regular file, undecodable, empty or invalid, or
    (from zip parts) ambiguous or unreadable, become rejections, as does a sample for which
    anything else raises (``record_error``). When every sample is rejected no tar is
    written and ``manifest["num_samples"]`` is 0. An error writing the tar (a full disk, a
    bucket that keeps failing) propagates; the temporary file is removed.
    """
    first = samples[0]
    split, modality, task, category = first.split, first.modality, first.task, first.category
    result = ShardResult(manifest={})
    seconds_total = 0.0
    tar = None
    try:
        with out_root.writer(name) as file, ClipReader(audio) as reader:
            tar = TarStream(file)
            for sample in sorted(samples, key=lambda s: order_within_shard(s.key, seed)):
                encoded = _encode_sample(sample, reader, audio_mode)
                if isinstance(encoded, Rejection):
                    result.rejections.append(encoded)
                    continue
                stored, text, clips = encoded
                offset = tar.add(f"{sample.key}.json", text)
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
            if not result.index:
                raise _NothingToWrite
    except _NothingToWrite:
        pass
    result.manifest = {
        "shard": name, "split": split, "modality": modality, "task": task, "category": category,
        "num_samples": len(result.index), "audio_seconds": seconds_total,
        "bytes": tar.size if result.index else 0,
        "sha256": tar.sha256.hexdigest() if result.index else "",
    }
    return result


def _encode_sample(sample: Sample, reader: ClipReader, audio_mode: str
                   ) -> tuple[Sample, bytes, list] | Rejection:
    """``(sample with durations, its JSON as UTF-8, its encoded clips)``, or the sample's
    rejection: for its audio (the reason the audio check names), or ``record_error`` for
    any other exception raised by this one record (the exception is named in the detail).
    Errors of the output (writing the tar) are not caught here."""
    try:
        clips = [encode_data(*reader.read(p), audio_mode) for p in sample.audio]
        stored = replace(sample, durations=tuple(round(c.seconds, 6) for c in clips))
        return stored, stored.to_json().encode("utf-8"), clips
    except CLIP_ERRORS as error:
        reason, detail = error.reason, str(error)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:  # one record's bad luck must not end the run
        reason, detail = "record_error", f"{type(error).__name__}: {error}"
    raw = _safe_json(sample)
    return Rejection(sample.source, sample.ordinal, reason, detail, raw, None, sample.key)


def _safe_json(sample: Sample) -> str:
    try:
        return sample.to_json()
    except Exception:  # e.g. provenance nested too deeply to serialise
        return ""


class TarStream:
    """Append regular files to an uncompressed tar on ``file``, hashing what it writes.

    Headers are those of :class:`tarfile.TarInfo` (PAX format, fixed owner, mode and
    mtime); each member's data goes out in one write, with no intermediate copy. The bytes
    equal those of ``tarfile.open(mode="w", format=PAX_FORMAT)`` + ``addfile`` + ``close``.
    ``size`` counts bytes written, ``sha256`` hashes them.

    A member whose name is ASCII and at most 100 bytes and whose size fits the 11 octal
    digits of a ustar header (under 8 GiB) needs no PAX record: its header is tarfile's
    header of an empty, unnamed member with name, size and checksum filled in (~3 us
    instead of ~80 us through ``TarInfo.tobuf``). Any other member goes through
    ``TarInfo.tobuf``.
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
        self._write(_ustar_header(name, len(data)) or _pax_header(name, len(data)))
        self._write(data)
        if len(data) % tarfile.BLOCKSIZE:
            self._write(tarfile.NUL * (tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE))
        return offset

    def close(self) -> None:
        """End the archive: two zero blocks, then zeros up to a whole 10 KiB record."""
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        if self.size % tarfile.RECORDSIZE:
            self._write(tarfile.NUL * (tarfile.RECORDSIZE - self.size % tarfile.RECORDSIZE))


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _pax_header(name: str, size: int) -> bytes:
    return _member_info(name, size).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


# tarfile's header of an empty member with an empty name: bytes 0-100 are the name, 124-136
# the size (11 octal digits + NUL), 148-156 the checksum (6 octal digits, NUL, space), which
# counts as 8 spaces while it is computed.
_TEMPLATE = _pax_header("", 0)
_NAME_END, _SIZE, _CHECKSUM = 100, slice(124, 136), slice(148, 156)
_TEMPLATE_SUM = sum(_TEMPLATE) - sum(_TEMPLATE[_CHECKSUM]) + 8 * ord(" ") - sum(_TEMPLATE[_SIZE])
_MAX_USTAR_SIZE = 8 ** 11


def _ustar_header(name: str, size: int) -> bytes | None:
    """The header ``_pax_header`` gives for a member that needs no PAX record, or None."""
    if not (name.isascii() and size < _MAX_USTAR_SIZE):
        return None
    encoded = name.encode("ascii")
    if len(encoded) > _NAME_END:
        return None
    size_field = b"%011o\0" % size
    checksum = _TEMPLATE_SUM + sum(encoded) + sum(size_field)
    return b"".join((encoded, bytes(_NAME_END - len(encoded)), _TEMPLATE[_NAME_END:_SIZE.start], size_field,
                     _TEMPLATE[_SIZE.stop:_CHECKSUM.start], b"%06o\0 " % checksum, _TEMPLATE[_CHECKSUM.stop:]))
