"""Zip archive parts read in place: central directories in, member bytes out.

LLaSO ships its audio as thousands of independent zip files (``*.partNNNN.zip``, ~1.5 GB
each). This module reads them without extracting and without ``zipfile``:

* :func:`read_central_directory` finds the end-of-central-directory record (zip64 included:
  parts over 4 GiB, over 65,535 members), reads the central directory in one ``read`` and
  parses it entry by entry into :class:`CentralDirectory`: one numpy row per member
  (:data:`MEMBER_DTYPE`) plus the member names. The part's data is never read.
* :func:`read_member` seeks to a member's local header, checks that header's signature and
  name, reads the compressed bytes, inflates them (raw deflate) or copies them (stored),
  and checks size and CRC-32. Inflate and CRC-32 are Intel ISA-L's (``isal``): its
  CRC-32 runs at ~44 GB/s against zlib's ~2.7 GB/s on this project's machine, which
  keeps the check from costing passthrough conversion a tenth of its CPU.

Member names are normalised like voice paths (``\\`` -> ``/``); a name that is absolute
or has a ``..`` (or ``.``) segment is never entered in the table, so it can never be read.
Errors name the part and the member: :class:`ArchiveError` for a part that cannot be used
at all (missing, not a zip, truncated, split across disks), :class:`MemberError` (with a
rejection reason) for one member that cannot be read.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from isal import isal_zlib

# One row per member. ``offset`` is the absolute byte offset of the local header in the
# part (a prefix before the archive, as in self-extracting zips, already added).
MEMBER_DTYPE = np.dtype([
    ("key", "<u8"),          # member_key(normalised name)
    ("offset", "<u8"),       # local header offset, bytes
    ("compressed", "<u8"),   # compressed size, bytes
    ("size", "<u8"),         # uncompressed size, bytes
    ("crc", "<u4"),          # CRC-32 of the uncompressed bytes
    ("method", "<u2"),       # 0 stored, 8 deflated, anything else unsupported
    ("flags", "<u2"),        # general purpose bit flags (bit 0: encrypted)
])
STORED, DEFLATED = 0, 8
ENCRYPTED = 0x1
_UTF8 = 0x800

_EOCD = struct.Struct("<4s4H2LH")            # end of central directory, 22 bytes
_ZIP64_LOCATOR = struct.Struct("<4sLQL")     # 20 bytes
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")    # 56 bytes
_ENTRY = struct.Struct("<4s4B4HL2L5H2L")     # central directory entry, 46 bytes
_LOCAL = struct.Struct("<4s2B4HL2L2H")       # local file header, 30 bytes
_EOCD_SIG, _LOCATOR_SIG, _ZIP64_SIG = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
_ENTRY_SIG, _LOCAL_SIG = b"PK\x01\x02", b"PK\x03\x04"
_MAX_COMMENT = 0xFFFF
_EXTRA_GUESS = 64  # bytes of local extra field read with the header (zip64 + timestamps fit)


class ArchiveError(ValueError):
    """A part that cannot be used at all; the message names the part and why."""

    def __init__(self, part: str, detail: str):
        super().__init__(f"{part}: {detail}")
        self.part = part


class MemberError(ValueError):
    """One member that cannot be read; ``reason`` is its rejection reason."""

    def __init__(self, reason: str, part: str, member: str, detail: str):
        super().__init__(f"{part}: member {member!r}: {detail}")
        self.reason = reason


def member_key(name: str) -> int:
    """64-bit key of a normalised member name (blake2b): the table is searched by key,
    and :func:`read_member` checks the local header's name, so a collision can never
    return another member's bytes."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def safe_member_name(raw: str) -> str | None:
    """``raw`` with ``\\`` turned into ``/``; None for a folder entry, an absolute name
    (``/x``, ``C:x``) or one with an empty, ``.`` or ``..`` segment: such members are never
    followed."""
    name = raw.replace("\\", "/")
    if not name or name.endswith("/") or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    if any(segment in ("", ".", "..") for segment in name.split("/")):
        return None
    return name


@dataclass
class CentralDirectory:
    """The members of one part: ``rows`` (:data:`MEMBER_DTYPE`, ``(n,)``) and ``names``
    (``n`` normalised names, same order), plus ``unsafe``: how many entries were left out
    as absolute or escaping names (folder entries are left out silently)."""

    rows: np.ndarray
    names: list[str]
    unsafe: int = 0


def read_central_directory(path: str) -> CentralDirectory:
    """Parse the central directory of the zip file at ``path`` (two reads near its end and
    one of the directory itself). Raises :class:`ArchiveError` naming ``path`` when it is
    missing, not a zip, truncated, or one piece of a split (multi-disk) archive."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            tail_start = max(0, size - _EOCD.size - _MAX_COMMENT)
            file.seek(tail_start)
            tail = file.read()
            eocd = _find_eocd(tail)
            if eocd is None:
                file.seek(0)
                starts_like_zip = file.read(4) == _LOCAL_SIG
                raise ArchiveError(path, "truncated zip: no end of central directory record (download incomplete?)"
                                   if starts_like_zip else "not a zip file (no end of central directory record)")
            _, disk, cd_disk, _, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, eocd)
            record_start = tail_start + eocd
            if 0xFFFF in (disk, cd_disk, entries) or 0xFFFFFFFF in (cd_size, cd_offset):
                record_start, disk, cd_disk, entries, cd_size, cd_offset = _zip64_end(file, path, tail, eocd,
                                                                                       tail_start)
            if disk or cd_disk:
                raise ArchiveError(path, "one piece of a split (multi-disk) zip; only whole zip files are read")
            shift = record_start - cd_size - cd_offset  # bytes before the archive proper
            if shift < 0:
                raise ArchiveError(path, f"truncated zip: the central directory ({cd_size} bytes at {cd_offset}) "
                                         f"does not fit before its end record at {record_start}")
            file.seek(cd_offset + shift)
            directory = file.read(cd_size)
    except FileNotFoundError:
        raise ArchiveError(path, "archive part not found") from None
    except IsADirectoryError:
        raise ArchiveError(path, "is a folder, not a zip file") from None
    if len(directory) != cd_size:
        raise ArchiveError(path, "truncated zip: the central directory is cut short")
    return _parse_entries(path, directory, entries, shift)


def _find_eocd(tail: bytes) -> int | None:
    """Offset in ``tail`` of the last end record whose comment ends exactly at the end."""
    position = tail.rfind(_EOCD_SIG)
    while position >= 0:
        if position + _EOCD.size <= len(tail):
            comment = struct.unpack_from("<H", tail, position + 20)[0]
            if position + _EOCD.size + comment == len(tail):
                return position
        position = tail.rfind(_EOCD_SIG, 0, position)
    return None


def _zip64_end(file: BinaryIO, path: str, tail: bytes, eocd: int, tail_start: int):
    """(record start, disk, cd disk, entries, cd size, cd offset) from the zip64 end record."""
    locator = eocd - _ZIP64_LOCATOR.size
    if locator < 0 or tail[locator:locator + 4] != _LOCATOR_SIG:
        raise ArchiveError(path, "zip64 sizes announced but no zip64 end locator found (truncated or corrupt)")
    _, disk_of_record, record_offset, disks = _ZIP64_LOCATOR.unpack_from(tail, locator)
    if disks > 1:
        raise ArchiveError(path, "one piece of a split (multi-disk) zip; only whole zip files are read")
    # The record sits just before its locator; its recorded offset may omit a prefix.
    record_start = tail_start + locator - _ZIP64_EOCD.size
    file.seek(record_start)
    record = file.read(_ZIP64_EOCD.size)
    if len(record) != _ZIP64_EOCD.size or record[:4] != _ZIP64_SIG:
        raise ArchiveError(path, f"zip64 end record missing at byte {record_offset} (truncated or corrupt)")
    _, _, _, _, disk, cd_disk, _, entries, cd_size, cd_offset = _ZIP64_EOCD.unpack(record)
    return record_start, disk, cd_disk, entries, cd_size, cd_offset


def _parse_entries(path: str, directory: bytes, entries: int, shift: int) -> CentralDirectory:
    keys, offsets, compressed, sizes, crcs, methods, flags_out = ([] for _ in range(7))
    names: list[str] = []
    unsafe = 0
    position = 0
    unpack = _ENTRY.unpack_from
    for ordinal in range(entries):
        if directory[position:position + 4] != _ENTRY_SIG or position + _ENTRY.size > len(directory):
            raise ArchiveError(path, f"corrupt central directory: entry {ordinal} of {entries} "
                                     f"has no signature at byte {position}")
        (_, _, _, _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len, _, _, _,
         header) = unpack(directory, position)
        start = position + _ENTRY.size
        raw = directory[start:start + name_len]
        extra = directory[start + name_len:start + name_len + extra_len]
        position = start + name_len + extra_len + comment_len
        if 0xFFFFFFFF in (csize, usize, header):
            usize, csize, header = _zip64_fields(path, extra, usize, csize, header)
        name = safe_member_name(_decode_name(raw, flags, extra))
        if name is None:
            unsafe += not raw.endswith(b"/")
            continue
        names.append(name)
        keys.append(member_key(name))
        offsets.append(header + shift)
        compressed.append(csize)
        sizes.append(usize)
        crcs.append(crc)
        methods.append(method)
        flags_out.append(flags)
    if position > len(directory):
        raise ArchiveError(path, "corrupt central directory: entries run past its end")
    rows = np.zeros(len(names), MEMBER_DTYPE)
    for field, values in zip(MEMBER_DTYPE.names, (keys, offsets, compressed, sizes, crcs, methods, flags_out)):
        rows[field] = values
    return CentralDirectory(rows, names, unsafe)


def _zip64_fields(path: str, extra: bytes, usize: int, csize: int, header: int) -> tuple[int, int, int]:
    """Sizes and offset from the zip64 extra field (0x0001): only the 0xFFFFFFFF ones, in
    the order uncompressed, compressed, offset."""
    position = 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, position)
        if tag == 0x0001:
            values = iter(struct.unpack_from(f"<{length // 8}Q", extra, position + 4))
            try:
                usize = next(values) if usize == 0xFFFFFFFF else usize
                csize = next(values) if csize == 0xFFFFFFFF else csize
                header = next(values) if header == 0xFFFFFFFF else header
            except StopIteration:
                break
            return usize, csize, header
        position += 4 + length
    raise ArchiveError(path, "corrupt central directory: a zip64 entry lacks its zip64 extra field")


def _decode_name(raw: bytes, flags: int, extra: bytes) -> str:
    """UTF-8 when the entry says so (flag bit 11) or carries Info-ZIP's Unicode path field
    (0x7075) for this very name; CP437 otherwise, as the zip specification says."""
    if flags & _UTF8:
        return raw.decode("utf-8", "surrogateescape")
    position = 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, position)
        if tag == 0x7075 and length >= 5 and extra[position + 4] == 1:
            if struct.unpack_from("<L", extra, position + 5)[0] == zlib.crc32(raw):
                return extra[position + 9:position + 4 + length].decode("utf-8", "surrogateescape")
        position += 4 + length
    return raw.decode("cp437")


def read_member(file: BinaryIO, part: str, name: str, row: np.void | tuple) -> bytes:
    """The uncompressed bytes of member ``name`` (row ``row`` of its part's table) from the
    open part ``file``. Raises :class:`MemberError`: ``archive_member_unreadable`` for an
    encrypted member, an unsupported method, a local header that does not match, data cut
    short or a size or CRC-32 mismatch."""
    _, offset, compressed, size, crc, method, flags = (int(v) for v in row)
    if flags & ENCRYPTED:
        raise MemberError("archive_member_unreadable", part, name, "member is encrypted")
    if method not in (STORED, DEFLATED):
        raise MemberError("archive_member_unreadable", part, name,
                          f"compression method {method} is not supported (only stored and deflated)")
    file.seek(offset)
    # One read for the header, its name and (usually) its extra field; the data follows.
    header = file.read(_LOCAL.size + len(name.encode("utf-8")) + _EXTRA_GUESS)
    if len(header) < _LOCAL.size or header[:4] != _LOCAL_SIG:
        raise MemberError("archive_member_unreadable", part, name, f"no local file header at byte {offset}")
    name_len, extra_len = struct.unpack_from("<2H", header, 26)
    data_start = _LOCAL.size + name_len + extra_len
    if len(header) < data_start:
        header += file.read(data_start - len(header))
    else:
        file.seek(offset + data_start)
    local_name = header[_LOCAL.size:_LOCAL.size + name_len]
    local_extra = header[_LOCAL.size + name_len:data_start]
    if safe_member_name(_decode_name(local_name, flags, local_extra)) != name:
        raise MemberError("archive_member_unreadable", part, name,
                          f"the local header at byte {offset} names {local_name!r}, not this member")
    data = file.read(compressed)
    if len(data) != compressed:
        raise MemberError("archive_member_unreadable", part, name,
                          f"data cut short: {len(data)} of {compressed} bytes present")
    if method == DEFLATED:
        inflater = isal_zlib.decompressobj(-15)
        try:
            data = inflater.decompress(data, size + 1)  # one byte more than expected: a longer stream shows
        except isal_zlib.error as error:
            raise MemberError("archive_member_unreadable", part, name, f"deflate stream is corrupt: {error}") from None
    if len(data) != size:
        raise MemberError("archive_member_unreadable", part, name,
                          f"{len(data)} bytes after decompression, the central directory says {size}")
    actual = isal_zlib.crc32(data)
    if actual != crc:
        raise MemberError("archive_member_unreadable", part, name,
                          f"CRC-32 {actual:08x} does not match the recorded {crc:08x}")
    return data
