"""Audio path normalisation and confinement to a configured root.

Real LLaSO paths are relative, mix ``\\`` and ``/`` and have several roots per corpus.
A path is normalised lexically (no file system access) when a record is ingested, and
confined again after resolving symlinks when the file is opened.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
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
    if "\0" in path:
        raise AudioPathError("bad_field_type", path, "audio path holds a NUL character")
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


class AudioRoot:
    """The configured audio root: resolves normalised relative paths (see
    :func:`normalise_audio_path`) to files that, after following symlinks, lie inside it.

    The real path of each folder is looked up once and kept (a conversion task reads
    hundreds of clips from a few folders; ``os.path.realpath`` costs a ``stat`` per path
    component), so a clip costs one ``lstat``, plus a full resolution when the clip itself
    is a symlink. Folders are assumed not to be re-linked while one instance is in use.
    """

    def __init__(self, root: Path | str):
        self.real = os.path.realpath(root)
        self._folders: dict[str, str] = {}

    def resolve(self, relative: str) -> Path:
        """``relative`` joined to the root, symlinks resolved; raises
        :class:`AudioPathError` (``audio_path_escapes_root``) when that leaves the root.
        The file need not exist."""
        folder, name = posixpath.split(relative)
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._inside(os.path.realpath(os.path.join(self.real, folder)), relative)
            self._folders[folder] = real_folder
        path = os.path.join(real_folder, name)
        if os.path.islink(path):
            path = self._inside(os.path.realpath(path), relative)
        return Path(path)

    def locate(self, relative_paths: tuple[str, ...]) -> list[Path]:
        """Resolve every clip of a sample; raises :class:`AudioPathError` with reason
        ``audio_missing`` for the first clip that does not exist, ``audio_not_a_file``
        for one that is not a regular file (a folder, FIFO, socket or device)."""
        located = []
        for relative in relative_paths:
            path = self.resolve(relative)
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except OSError:
                raise AudioPathError("audio_missing", relative, f"audio file not found under {self.real}") from None
            if not regular:
                raise AudioPathError("audio_not_a_file", relative, "audio path is not a regular file")
            located.append(path)
        return located

    def _inside(self, real: str, relative: str) -> str:
        if real != self.real and not real.startswith(self.real.rstrip("/") + "/"):
            raise AudioPathError("audio_path_escapes_root", relative, "audio path resolves outside the audio root")
        return real
