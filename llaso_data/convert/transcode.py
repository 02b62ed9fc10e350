"""Read, check and (optionally) re-encode one audio clip for a shard.

Two modes:

* ``passthrough`` keeps the original bytes once they are known to decode:

  - a PCM WAV (format tag 1, 1 to 4 bytes a sample, 1 to 1,024 channels) is checked in
    full from its header: Python's ``wave`` module parses it, and the data chunk that the
    header declares must be present in the file. Every byte pattern of PCM data is a valid
    sample, so this is as strict as decoding the whole clip, at ~0.01 ms whatever its
    length (libsndfile's own parse costs ~0.06 ms through ``soundfile``);
  - any other clip (FLAC, MP3, Ogg, float or compressed WAV, a WAV with no declared data
    size) is opened by libsndfile, which parses its header, and its first and last
    blocks are decoded: a truncated file or a corrupt header fails. Corruption between
    the two blocks of a compressed stream is not detected: finding it means decoding
    every frame, which costs as much as ``flac16k`` (~1/3,000 s per second of 16 kHz FLAC).

* ``flac16k`` decodes the whole clip, downmixes to mono, resamples to 16 kHz with soxr
  (``HQ``, on float32) and writes 16-bit FLAC with libFLAC (through ``pyflac``) at
  compression level 0 in frames of 4,096 samples: fixed predictors, files ~2 % larger
  than libsndfile's default level 5 on the conversion benchmark's speech-like corpus, and
  a quarter of the frames (and per-frame work) of level 0's usual 1,152. Measured on the
  benchmark's clips, one core: ~4,800 audio-seconds encoded per CPU-second against
  ~4,100 for libsndfile at level 0 (``soundfile.write``, which cannot set the frame
  size) and ~3,700 at its default level. 16-bit sources are decoded to int16 (exact,
  and cheaper than float32 for FLAC; a 16-bit PCM WAV's samples are read straight from
  its data chunk); a 16 kHz mono 16-bit clip is encoded as it is, except a 16 kHz mono
  16-bit FLAC (LibriSpeech's format), whose original bytes are kept once the whole clip
  has decoded (decoding costs about half of re-encoding).

Failures raise :class:`AudioError` with a rejection reason: ``audio_missing``,
``audio_not_a_file``, ``audio_too_large``, ``audio_unreadable``, ``audio_undecodable``,
``audio_empty`` or ``audio_invalid``.
"""

from __future__ import annotations

import io
import os
import stat
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyflac
import soundfile
import soxr

from llaso_data.frontend import SAMPLE_RATE, downmix

AUDIO_MODES = ("passthrough", "flac16k")
MAX_CLIP_BYTES = 2**31
"""Largest audio file read (2 GiB: over 18 h of 16 kHz 16-bit mono PCM)."""
_CHECK_FRAMES = 4096
_MAX_CHANNELS = 1024  # libsndfile refuses more
_FLOAT_TO_INT16 = np.float32(32768)  # libsndfile's float -> 16-bit scale (1 / PCM16_SCALE)
_FLAC_LEVEL = 0  # fixed predictors: see the module docstring
_FLAC_BLOCK = 4096  # samples a frame (256 ms at 16 kHz): level 0 alone would use 1,152


class AudioError(ValueError):
    """An audio clip that cannot go into a shard; ``reason`` is the rejection reason."""

    def __init__(self, reason: str, path: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class EncodedClip:
    """Bytes to store, their file extension (no dot) and the clip's duration in seconds."""

    data: bytes
    extension: str
    seconds: float


def encode_clip(path: Path, mode: str) -> EncodedClip:
    """Read the clip at ``path`` and return what a shard stores for it in ``mode``."""
    return encode_data(read_clip(path), path, mode)


def encode_data(data: bytes, path: Path, mode: str) -> EncodedClip:
    """What a shard stores in ``mode`` for the clip bytes ``data``; ``path`` names the clip
    in errors and gives its format suffix (for a zip member: ``<part>/<member name>``)."""
    if mode == "passthrough":
        return EncodedClip(data, path.suffix.lstrip(".").lower(), check_decodes(data, path))
    if mode == "flac16k":
        return _to_flac16k(data, path)
    raise ValueError(f"unknown audio mode {mode!r}; choose one of {AUDIO_MODES}")


def read_clip(path: Path, max_bytes: int = MAX_CLIP_BYTES) -> bytes:
    """The bytes of the regular file at ``path`` (links already resolved by the caller),
    read with a size bound. Raises :class:`AudioError`: ``audio_missing`` when absent,
    ``audio_not_a_file`` for a folder, FIFO, socket or device (never opened for reading,
    so it can neither block nor stream without end), ``audio_too_large`` over
    ``max_bytes``, ``audio_unreadable`` when the file cannot be read (permissions, I/O).

    The file is opened non-blocking and checked again on the open descriptor, so a FIFO
    swapped in after the first check cannot block; at most the size seen then is read."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise AudioError("audio_not_a_file", str(path), _kind(os.stat(path).st_mode))
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise AudioError("audio_missing", str(path), "file not found") from None
    except OSError as error:
        raise AudioError("audio_unreadable", str(path), f"cannot open: {error.strerror}") from None
    with os.fdopen(descriptor, "rb", buffering=0) as file:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise AudioError("audio_not_a_file", str(path), _kind(status.st_mode))
        if status.st_size > max_bytes:
            raise AudioError("audio_too_large", str(path), f"{status.st_size} bytes, over the {max_bytes}-byte bound")
        try:
            return file.read(status.st_size) if status.st_size else b""
        except OSError as error:
            raise AudioError("audio_unreadable", str(path), f"cannot read: {error.strerror}") from None


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return f"is {name}, not a regular file"
    return "is not a regular file"


def check_decodes(data: bytes, path: Path) -> float:
    """Check that the clip ``data`` (read from ``path``) decodes, as the module docstring
    describes for ``passthrough``; return its duration in seconds."""
    wav = _pcm_wav(data, path)
    if wav is not None:
        return wav.frames / wav.rate
    with _open(data, path) as clip:
        frames, rate = clip.frames, clip.samplerate
        if clip.subtype in _FLOAT_SUBTYPES:  # float samples can be NaN or infinite: check them all
            _check_finite(_read_all(clip, path, "float32"), path)
            clip.seek(0)
        try:
            head = clip.read(_CHECK_FRAMES, dtype="float32")
            if frames > _CHECK_FRAMES and clip.seekable():
                clip.seek(max(frames - _CHECK_FRAMES, 0))
                tail = clip.read(_CHECK_FRAMES, dtype="float32")
            else:
                tail = head
        except (soundfile.LibsndfileError, RuntimeError) as error:
            raise AudioError("audio_undecodable", str(path), f"cannot decode: {_describe(error)}") from None
    if frames <= 0 or len(head) == 0:
        raise AudioError("audio_empty", str(path), "no audio frames")
    if len(tail) == 0:
        raise AudioError("audio_undecodable", str(path), f"header says {frames} frames but the end cannot be read")
    return frames / rate


_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


def _read_all(clip: soundfile.SoundFile, path: Path, dtype: str) -> np.ndarray:
    try:
        return clip.read(dtype=dtype, always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise AudioError("audio_undecodable", str(path), f"cannot decode: {_describe(error)}") from None


def _check_finite(samples: np.ndarray, path: Path) -> None:
    """Raise ``audio_invalid`` when a float clip holds NaN or infinite samples."""
    if samples.size and not np.isfinite(samples).all():
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise AudioError("audio_invalid", str(path), f"{bad} of {samples.size} samples are NaN or infinite")


def _describe(error: Exception) -> str:
    """libsndfile's own message, without the in-memory file object's address (which
    would make rejection details differ between runs)."""
    return getattr(error, "error_string", None) or type(error).__name__


@dataclass(frozen=True)
class _PcmWav:
    """Header fields of a complete PCM WAV; its samples start at byte ``start``."""

    channels: int
    rate: int
    width: int  # bytes per sample
    frames: int
    start: int


def _pcm_wav(data: bytes, path: Path) -> _PcmWav | None:
    """The header of a complete PCM WAV with at least one frame, parsed by ``wave``;
    None for any other clip (libsndfile then decides). Raises for a truncated WAV."""
    chunk = _check_wav_length(data, path)
    if chunk is None:
        return None
    try:
        with wave.open(io.BytesIO(data)) as clip:
            channels, rate, width, frames = (clip.getnchannels(), clip.getframerate(),
                                             clip.getsampwidth(), clip.getnframes())
    except (wave.Error, EOFError):
        return None
    if 1 <= channels <= _MAX_CHANNELS and rate >= 1 and 1 <= width <= 4 and frames >= 1:
        return _PcmWav(channels, rate, width, frames, chunk[0])
    return None


def _check_wav_length(data: bytes, path: Path) -> tuple[int, int] | None:
    """``(start, size)`` of a RIFF/WAVE clip's data chunk (None if not known); raises
    ``audio_undecodable`` when the file is shorter. libsndfile clamps a WAV's frame count
    to the bytes present, so a WAV cut short would otherwise decode cleanly to its end."""
    chunk = _wav_data_chunk(data)
    if chunk is not None and sum(chunk) > len(data):
        raise AudioError("audio_undecodable", str(path),
                         f"truncated: the header declares {sum(chunk)} bytes, the file has {len(data)}")
    return chunk


def _open(data: bytes, path: Path) -> soundfile.SoundFile:
    if not data:
        raise AudioError("audio_empty", str(path), "file is empty (0 bytes)")
    _check_wav_length(data, path)
    try:
        return soundfile.SoundFile(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError("audio_undecodable", str(path), f"cannot decode: {_describe(error)}") from None


def _wav_data_chunk(data: bytes) -> tuple[int, int] | None:
    """``(start, size)`` of a RIFF/WAVE file's first ``data`` chunk according to its
    header, or None (not RIFF/WAVE, no data chunk header, or an unknown/streaming size of
    0 or 0xFFFFFFFF)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    position = 12
    while position + 8 <= len(data):
        size = int.from_bytes(data[position + 4:position + 8], "little")
        if data[position:position + 4] == b"data":
            return None if size in (0, 0xFFFFFFFF) else (position + 8, size)
        position += 8 + size + (size & 1)
    return None


def _to_int16(mono: np.ndarray) -> np.ndarray:
    """float32 -> int16 exactly as libsndfile converts float32 when writing 16-bit FLAC
    (times 32768, rounded half to even, clipped to the int16 range), which is a fifth
    cheaper than letting libsndfile convert inside the encoder."""
    scaled = mono * _FLOAT_TO_INT16
    np.rint(scaled, out=scaled)
    np.clip(scaled, -32768, 32767, out=scaled)
    return scaled.astype(np.int16)


def _to_flac16k(data: bytes, path: Path) -> EncodedClip:
    wav = _pcm_wav(data, path)
    if wav is not None and wav.width == 2:  # 16-bit PCM WAV: its samples are its bytes
        rate, channels, integer, container = wav.rate, wav.channels, True, "WAV"
        samples = np.frombuffer(data, "<i2", wav.frames * channels, wav.start).reshape(-1, channels)
    else:
        rate, channels, integer, container, samples = _decode(data, path)
    if samples.shape[0] == 0:
        raise AudioError("audio_empty", str(path), "no audio frames")
    if integer and channels == 1 and rate == SAMPLE_RATE:
        if container == "FLAC":  # already what this mode writes, and it decoded in full
            return EncodedClip(data, "flac", samples.shape[0] / SAMPLE_RATE)
        pcm = samples[:, 0]
    else:
        mono = downmix(samples)
        if rate != SAMPLE_RATE:
            mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
        pcm = _to_int16(mono)
    return EncodedClip(_encode_flac(pcm), "flac", len(pcm) / SAMPLE_RATE)


def _encode_flac(pcm: np.ndarray) -> bytes:
    """``(frames,)`` int16 samples at 16 kHz -> a FLAC file's bytes (libFLAC through
    pyflac; the encoder seeks back to complete STREAMINFO: frame count and MD5)."""
    out = io.BytesIO()
    encoder = pyflac.StreamEncoder(SAMPLE_RATE, lambda data, size, samples, frame: out.write(data),
                                   seek_callback=out.seek, tell_callback=out.tell,
                                   compression_level=_FLAC_LEVEL, blocksize=_FLAC_BLOCK)
    encoder.process(pcm)
    if not encoder.finish():
        raise RuntimeError(f"libFLAC could not finish a stream: {encoder.state}")
    return out.getvalue()


def _decode(data: bytes, path: Path) -> tuple[int, int, bool, str, np.ndarray]:
    """Decode a whole clip with libsndfile: ``(rate, channels, integer, container,
    samples)``, the samples ``(frames, channels)`` int16 when ``integer`` else float32 and
    ``container`` libsndfile's major format (``WAV``, ``FLAC``, ``MPEG``, ...). Only PCM_16
    sources decode to int16 (libsndfile converts float or 24-bit to int16 unclipped);
    MP3 decodes to float internally, so float32 is its cheaper read. A stream that breaks,
    or a FLAC that ends before the frame count its header declares, raises
    ``audio_undecodable``."""
    with _open(data, path) as clip:
        rate, channels, container, declared = clip.samplerate, clip.channels, clip.format, clip.frames
        integer = clip.subtype == "PCM_16"
        samples = _read_all(clip, path, "int16" if integer else "float32")
    if not integer:
        _check_finite(samples, path)
    if container == "FLAC" and len(samples) < declared:
        raise AudioError("audio_undecodable", str(path),
                         f"truncated: decoded {len(samples)} of the {declared} frames the header declares")
    return rate, channels, integer, container, samples
