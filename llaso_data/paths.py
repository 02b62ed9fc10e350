"""Audio path normalisation and confinement to a configured root.

Real LLaSO paths are relative, mix ``\\`` and ``/`` and have several roots per corpus.
A path is normalised lexically (no file system access) when a record is ingested, and
confined again after resolving symlinks when the file is opened.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

_DRIVE = re.compile(r"[A-Za-z]:")
# A relative path that normpath leaves as it is: no drive, no empty, "." or ".." segment.
_PLAIN = re.compile(r"(?![A-Za-z]:)(?!\.\.?(?:/|$))[^/]+(?:/(?!\.\.?(?:/|$))[^/]+)*")


class AudioPathError(ValueError):
    """A voice path that is absolute or leaves its root; ``reason`` names which."""

    def __init__(self, reason: str, path: str, detail: str):
        super().__init__(f"{detail}: {path!r}")
        self.reason = reason
        self.path = path


def normalise_audio_path(path: str) -> str:
    """``'CremaD/Audio\\\\x.wav'`` -> ``'CremaD/Audio/x.wav'``; raises :class:`AudioPathError`.

    Absolute paths (POSIX, UNC or drive letter) raise with reason ``absolute_audio_path``;
    paths whose normal form leaves the root raise with ``audio_path_escapes_root``.
    """
    posix = path.replace("\\", "/")
    if _PLAIN.fullmatch(posix):  # nearly every path: one C-level pass
        return posix
    if posix[:1] == "/" or _DRIVE.match(posix):
        raise AudioPathError("absolute_audio_path", path, "audio path is absolute")
    normal = posixpath.normpath(posix)
    if normal == ".." or normal.startswith("../"):
        raise AudioPathError("audio_path_escapes_root", path, "audio path leaves the audio root")
    if normal in ("", "."):
        raise AudioPathError("bad_field_type", path, "audio path is empty")
    return normal


def resolve_audio_path(root: Path, relative: str) -> Path:
    """Join a normalised relative path to ``root`` and check, after following symlinks,
    that the result is still inside ``root``. Raises :class:`AudioPathError`."""
    return resolve_under_real_root(os.path.realpath(root), relative)


def resolve_under_real_root(real_root: str, relative: str) -> Path:
    """:func:`resolve_audio_path` for a root already passed through ``os.path.realpath``
    (resolve it once for many paths: that costs a ``stat`` per component of the root)."""
    real = os.path.realpath(os.path.join(real_root, relative))
    if os.path.commonpath([real_root, real]) != real_root:
        raise AudioPathError("audio_path_escapes_root", relative, "audio path resolves outside the audio root")
    return Path(real)


def locate_audio_files(root: Path, relative_paths: tuple[str, ...]) -> list[Path]:
    """Resolve every clip of a sample under ``root``; raises :class:`AudioPathError`
    with reason ``audio_missing`` for the first clip that is not a file."""
    located = []
    for relative in relative_paths:
        path = resolve_audio_path(root, relative)
        if not path.is_file():
            raise AudioPathError("audio_missing", relative, f"audio file not found under {root}")
        located.append(path)
    return located
