"""What a conversion's resume state records, so that a re-run redoes exactly what changed.

* :func:`source_fingerprint`: every annotation file's size, mtime and content digest,
  kept in ``OUT/.state/sources.json``; a re-run reports which sources changed.
* :func:`shard_input_digest`: a digest of everything one shard's bytes depend on (the
  options that shape the output, the samples' JSON, each clip's resolved path, size and
  mtime). A shard is reused only when its state file records the same digest, so an
  edited, added or removed record, or a replaced clip, rebuilds the shards it feeds and
  no others.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_DIGEST_CHUNK = 1 << 20


def source_fingerprint(root: Path, files: list[Path]) -> dict[str, dict]:
    """``{path relative to root (POSIX): {"size": bytes, "mtime_ns": int, "blake2b": hex}}``
    for every annotation file, in the order given. Reads each file once."""
    fingerprint = {}
    for path in files:
        status = path.stat()
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as file:
            while chunk := file.read(_DIGEST_CHUNK):
                digest.update(chunk)
        fingerprint[path.relative_to(root).as_posix()] = {
            "size": status.st_size, "mtime_ns": status.st_mtime_ns, "blake2b": digest.hexdigest()}
    return fingerprint


def changed_sources(before: dict[str, dict], now: dict[str, dict]) -> list[str]:
    """Sources added, removed or changed between two fingerprints, sorted."""
    return sorted(name for name in before.keys() | now.keys() if before.get(name) != now.get(name))


ARCHIVE_CLIP = "zip:"
"""Prefix of a clip read from a zip part: its identity is in the string (part, member and
central-directory row), so no file is looked at."""


def shard_input_digest(options: dict, payloads: list[str], clips: list[str]) -> str:
    """Hex digest of one shard's inputs: ``options`` (what shapes the bytes), the samples'
    JSON ``payloads`` and ``clips``, the resolved audio paths they read (both in any order)."""
    digest = hashlib.sha256(repr(sorted(options.items())).encode())
    for payload in sorted(payloads):
        digest.update(b"\0s" + payload.encode("utf-8", "surrogatepass"))
    for clip in sorted(clips):
        digest.update(b"\0c" + clip.encode("utf-8", "surrogateescape") + _clip_identity(clip))
    return digest.hexdigest()


def _clip_identity(path: str) -> bytes:
    """Size and mtime of a clip (what tells a replaced file), or a marker when absent."""
    if path.startswith(ARCHIVE_CLIP):
        return b""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return b"missing"
    return f"{status.st_mode:o}:{status.st_size}:{status.st_mtime_ns}".encode()
