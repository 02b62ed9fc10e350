"""Read the bytes of a sample's clips from its audio source: loose files under an
:class:`~llaso_data.ingest.paths.AudioRoot`, or members of zip parts through an
:class:`~llaso_data.ingest.archives.ArchiveSource`.

A :class:`ClipReader` lives for one write task. It opens each zip part it needs once and
keeps it open (up to ``max_open`` parts, least recently used closed first), reads a member
by its local-header offset, inflates it and checks its CRC-32 as it copies.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from llaso_data.convert.transcode import AudioError, read_clip
from llaso_data.ingest.archives import ArchiveSource, AudioSource
from llaso_data.ingest.paths import AudioPathError, AudioRoot
from llaso_data.ingest.zipparts import MemberError, read_member


class ClipReader:
    """``read(relative) -> (bytes, path)`` for normalised voice paths; ``path`` names the
    clip (a file, or ``<part>/<member>``) for errors and the format suffix. Raises
    :class:`~llaso_data.ingest.paths.AudioPathError`, :class:`AudioError` or
    :class:`MemberError`, each with a rejection ``reason``. Use as a context manager."""

    def __init__(self, source: AudioSource, max_open: int = 64):
        self.source = source
        self.max_open = max_open
        self._open: OrderedDict[str, BinaryIO] = OrderedDict()

    def read(self, relative: str) -> tuple[bytes, Path]:
        if isinstance(self.source, AudioRoot):
            path = self.source.resolve(relative)
            return read_clip(path), path
        assert isinstance(self.source, ArchiveSource)
        member = self.source.member(relative)
        return read_member(self._part(member.part), member.part, member.name, member.row), \
            Path(member.part) / member.name

    def _part(self, part: str) -> BinaryIO:
        file = self._open.get(part)
        if file is not None:
            self._open.move_to_end(part)
            return file
        try:
            file = open(part, "rb")
        except OSError as error:  # removed or unreadable since the table was built
            raise AudioError("audio_missing", part, f"archive part cannot be opened: {error.strerror}") from None
        self._open[part] = file
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)[1].close()
        return file

    def close(self) -> None:
        for file in self._open.values():
            file.close()
        self._open.clear()

    def __enter__(self) -> "ClipReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


CLIP_ERRORS = (AudioError, AudioPathError, MemberError)
"""What reading or encoding a clip raises for bad input; each carries a rejection ``reason``."""
