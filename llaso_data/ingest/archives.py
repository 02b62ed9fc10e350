"""Audio read in place from a set of zip parts: the parts, their member index, and the
voice-path resolution rule.

* :class:`ArchiveSet`: the parts named by ``--audio-archives`` (glob patterns or paths),
  sorted by path, with their identity (name, size, mtime) as one value.
* :class:`MemberIndex`: every member of every part, searchable by normalised name: a
  sorted ``(n,)`` uint64 array of :func:`~llaso_data.ingest.zipparts.member_key` values,
  the matching :data:`~llaso_data.ingest.zipparts.MEMBER_DTYPE` rows and ``(n,)`` uint32
  part numbers; 44 bytes per member. Saved as ``.npy`` files and memory-mapped by readers,
  so a process touches only the pages its look-ups need, whatever the number of members.
* :class:`ArchiveSource`: resolves a normalised voice path to a member (the counterpart of
  :class:`~llaso_data.ingest.paths.AudioRoot` for loose files).

Resolution rule, deterministic: a voice path ``p`` (already normalised, ``\\`` -> ``/``,
confined) names the first member found among ``p``, ``F1/p``, ``F1/F2/p``, ...,
``F1/.../Fk/p``, where ``F1/.../Fk/`` is the archive set's shared root: the longest run of
leading folders common to every member name of every part (none when the members share
none). So parts built from the audio root itself and parts that wrap it in folders
(``LLaSO-Instruct-audio/vctk/...``) both resolve, also when every clip of the set lies
under one corpus folder (shared root ``LLaSO-Instruct-audio/vctk/``). A path that names no member, or one held
by several parts, raises :class:`~llaso_data.ingest.paths.AudioPathError` (reasons
``audio_missing``, ``audio_ambiguous``) naming the path and the parts.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llaso_data.ingest.paths import AudioPathError, AudioRoot
from llaso_data.ingest.zipparts import MEMBER_DTYPE, member_key, read_central_directory

_INDEX_FILES = ("keys.npy", "rows.npy", "parts.npy")


@dataclass(frozen=True)
class PartInfo:
    """One part: absolute ``path``, ``size`` in bytes, ``mtime_ns``."""

    path: str
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclass(frozen=True)
class ArchiveSet:
    """The zip parts of a corpus, sorted by path. Part file names must be unique (they key
    the member-table cache)."""

    parts: tuple[PartInfo, ...]

    @classmethod
    def from_patterns(cls, patterns: list[str] | tuple[str, ...]) -> "ArchiveSet":
        """Expand glob patterns (a plain path is a pattern matching itself). Raises
        ValueError naming the pattern when one matches nothing or names a folder, and when
        two parts share a file name."""
        paths: set[str] = set()
        for pattern in patterns:
            if os.path.isdir(pattern):
                raise ValueError(f"--audio-archives {pattern!r} is a folder; name its parts, "
                                 f"e.g. {os.path.join(pattern, '*.zip')!r}")
            matched = [p for p in glob.glob(pattern) if not os.path.isdir(p)]
            if not matched:
                raise ValueError(f"--audio-archives {pattern!r}: no archive part matches (missing part?)")
            paths.update(os.path.abspath(p) for p in matched)
        parts = []
        for path in sorted(paths):
            stat = os.stat(path)
            parts.append(PartInfo(path, stat.st_size, stat.st_mtime_ns))
        names: dict[str, str] = {}
        for part in parts:
            if part.name in names:
                raise ValueError(f"two archive parts share the file name {part.name!r}: {names[part.name]} "
                                 f"and {part.path}")
            names[part.name] = part.path
        return cls(tuple(parts))

    def identity(self) -> list[list]:
        """``[[file name, size, mtime_ns], ...]`` in part order: what a resume check or a
        cache compares (JSON-ready; moving the folder keeps it, touching a part changes it)."""
        return [[p.name, p.size, p.mtime_ns] for p in self.parts]

    def digest(self) -> str:
        """A short hex digest of :meth:`identity`."""
        return hashlib.sha256(json.dumps(self.identity()).encode()).hexdigest()[:16]


def shared_root(names: list[str]) -> str:
    """The longest run of leading folders common to every name, with a trailing ``/``
    (``""`` if none): ``["a/b/x.wav", "a/c/y.wav"]`` -> ``"a/"``."""
    if not names:
        return ""
    first = names[0].split("/")[:-1]
    length = len(first)
    for name in names[1:]:
        folders = name.split("/")[:-1]
        length = min(length, len(folders))
        for i in range(length):
            if folders[i] != first[i]:
                length = i
                break
        if not length:
            return ""
    return "/".join(first[:length]) + "/" if length else ""


def combine_roots(roots: list[str | None]) -> str:
    """The shared root of a set from its parts' shared roots (None: a part with no member)."""
    known = [r for r in roots if r is not None]
    if not known:
        return ""
    return shared_root([r + "x" for r in known])


class MemberIndex:
    """Every member of an :class:`ArchiveSet`, sorted by key (see the module docstring).

    ``keys`` ``(n,)`` uint64 sorted, ``rows`` ``(n,)`` MEMBER_DTYPE, ``parts`` ``(n,)``
    uint32 indices into ``part_paths``; ``root`` the set's shared root."""

    def __init__(self, keys: np.ndarray, rows: np.ndarray, parts: np.ndarray, part_paths: tuple[str, ...],
                 root: str, folder: str | None = None):
        self.keys, self.rows, self.parts = keys, rows, parts
        self.part_paths, self.root, self.folder = part_paths, root, folder

    @classmethod
    def assemble(cls, part_paths: tuple[str, ...], rows_per_part: list[np.ndarray], roots: list[str | None]
                 ) -> "MemberIndex":
        """Merge the parts' member rows (``rows_per_part[i]`` belongs to ``part_paths[i]``)."""
        rows = np.concatenate(rows_per_part) if rows_per_part else np.zeros(0, MEMBER_DTYPE)
        parts = np.repeat(np.arange(len(rows_per_part), dtype="<u4"), [len(r) for r in rows_per_part])
        order = np.argsort(rows["key"], kind="stable")
        rows, parts = rows[order], parts[order]
        return cls(rows["key"].copy(), rows, parts, tuple(part_paths), combine_roots(roots))

    @classmethod
    def build(cls, archives: ArchiveSet) -> "MemberIndex":
        """Read every part's central directory in this process (``scan``; ``convert``
        builds in parallel Ray tasks and caches, see ``llaso_data.convert.archive_table``)."""
        rows, roots = [], []
        for part in archives.parts:  # names are dropped part by part: only the rows stay
            directory = read_central_directory(part.path)
            rows.append(directory.rows)
            roots.append(shared_root(directory.names) if directory.names else None)
        return cls.assemble(tuple(p.path for p in archives.parts), rows, roots)

    def save(self, folder: Path) -> None:
        """Write the index as ``.npy`` files plus ``meta.json`` into ``folder`` (created)."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in zip(_INDEX_FILES, (self.keys, self.rows, self.parts)):
            np.save(folder / name, array, allow_pickle=False)
        (folder / "meta.json").write_text(json.dumps({"parts": list(self.part_paths), "root": self.root}))

    @classmethod
    def load(cls, folder: Path | str) -> "MemberIndex":
        """Memory-map an index written by :meth:`save` (never unpickles)."""
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        # Plain ndarray views of the maps: numpy's memmap subclass costs ~0.1 ms a look-up.
        keys, rows, parts = (np.asarray(np.load(folder / name, mmap_mode="r", allow_pickle=False))
                             for name in _INDEX_FILES)
        return cls(keys, rows, parts, tuple(meta["parts"]), meta["root"], str(folder))

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self):
        # A saved index travels to Ray workers as its folder and is memory-mapped there.
        if self.folder is not None:
            return {"folder": self.folder}
        return self.__dict__

    def __setstate__(self, state):
        if set(state) == {"folder"}:
            state = MemberIndex.load(state["folder"]).__dict__
        self.__dict__.update(state)

    def find(self, name: str) -> list[int]:
        """Row numbers whose key is that of member ``name`` (several: held by several parts)."""
        key = member_key(name)
        start = int(self.keys.searchsorted(np.uint64(key)))
        end = start
        while end < len(self.keys) and int(self.keys[end]) == key:
            end += 1
        return list(range(start, end))


@dataclass(frozen=True)
class MemberRef:
    """Where a clip lies: member ``name`` of part ``part`` (a path), table row ``row``."""

    part: str
    name: str
    row: tuple


class ArchiveSource:
    """Voice paths resolved to members of an :class:`ArchiveSet` (module docstring)."""

    def __init__(self, index: MemberIndex):
        self.index = index

    def member(self, relative: str) -> MemberRef:
        """The member holding the clip at normalised voice path ``relative``; raises
        :class:`AudioPathError` (``audio_missing`` or ``audio_ambiguous``)."""
        folders = self.index.root.split("/")[:-1]
        candidates = [relative, *("/".join(folders[:k]) + "/" + relative for k in range(1, len(folders) + 1))]
        for name in candidates:
            found = self.index.find(name)
            if len(found) == 1:
                row = found[0]
                return MemberRef(self.index.part_paths[int(self.index.parts[row])], name,
                                 tuple(self.index.rows[row].tolist()))
            if found:
                parts = ", ".join(sorted(self.index.part_paths[int(self.index.parts[r])] for r in found))
                raise AudioPathError("audio_ambiguous", relative, f"member {name!r} is held by several parts ({parts})")
        tried = " or ".join(repr(n) for n in candidates)
        raise AudioPathError("audio_missing", relative,
                             f"no member named {tried} in the {len(self.index.part_paths)} archive parts")

    def locate(self, relative_paths: tuple[str, ...]) -> list[MemberRef]:
        """Resolve every clip of a sample (raises for the first that does not resolve)."""
        return [self.member(p) for p in relative_paths]


AudioSource = AudioRoot | ArchiveSource
"""Where clips are read from: a folder of loose files or a set of zip parts."""


def refuse_archive_root(root: Path) -> None:
    """Raise ValueError when a loose-file audio root holds zip files at its top level:
    audio inside zip parts is read with ``--audio-archives``, never found under a root."""
    try:
        zips = sorted(p.name for p in Path(root).iterdir() if p.suffix.lower() == ".zip" and p.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return
    if zips:
        shown = ", ".join(zips[:3]) + (", ..." if len(zips) > 3 else "")
        raise ValueError(f"audio root {root} holds {len(zips)} zip file(s) ({shown}); audio inside zip parts is "
                         f"read in place with --audio-archives '{os.path.join(str(root), '*.zip')}' "
                         f"(or unpack them and point --audio-root at the files)")
