"""Streaming readers for JSON-array, single-object JSON and JSONL annotation files.

Constant memory in the file size: a multi-GB JSON array is decoded record by record
with the standard library's C scanner (``json.JSONDecoder.raw_decode``) over a sliding
text window. Each record is parsed on its own, so one bad record costs only itself:

* invalid UTF-8 bytes or lone surrogate escapes reject that record (``undecodable_text``);
* a truncated or malformed JSON array keeps every record before the fault and reports
  the fault's byte offset (``malformed_json``);
* JSONL is split on ``\\n`` only (text may contain U+0085 or U+2028); a line broken by a
  raw newline inside a string is repaired by joining it with the next line.

Why not ijson: its yajl2 backend aborts the whole file on the first invalid UTF-8 byte and
raises ``UnicodeDecodeError`` on a lone surrogate escape, so one bad byte in a 12M-record
array would lose every record after it.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

CHUNK_BYTES = 1 << 20
LOOKAHEAD_CHARS = 1 << 18  # text kept ahead of the next record (records are ~1 KB)
MAX_RECORD_CHARS = 64 << 20
RAW_EXCERPT_CHARS = 4096
_WHITESPACE = re.compile(r"[ \t\r\n]*")
_SEPARATOR = re.compile(r"[ \t\r\n]*,[ \t\r\n]*")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


@dataclass(slots=True)
class RawRecord:
    """One record as found in a file, before validation.

    ``value`` is the parsed JSON value (``None`` when parsing failed); ``error`` is a
    ``(reason, detail)`` pair when the record could not be read; ``raw`` is the record's
    text (undecodable bytes shown as U+FFFD); ``byte_offset`` is where it starts.
    """

    ordinal: int
    byte_offset: int
    raw: str
    value: Any = None
    error: tuple[str, str] | None = None


def iter_raw_records(path: Path) -> Iterator[RawRecord]:
    """Every record of a ``.json`` (array or single object) or ``.jsonl`` file, in order.

    The file is opened on the first ``next`` and closed when the iterator ends or is
    discarded.
    """
    return _iter_jsonl(path) if path.suffix.lower() == ".jsonl" else _iter_json(path)


def _has_undecodable(raw: str, value: Any) -> bool:
    """True when the record holds invalid UTF-8 bytes or unpaired surrogate escapes."""
    if not raw.isascii():
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            return True
    return "\\u" in raw and _has_lone_surrogate_escape(raw, value)


def _has_lone_surrogate_escape(raw: str, value: Any) -> bool:
    """True when ``raw`` escapes a surrogate (``\\udXXX``) that ``value`` holds unpaired."""
    if not _SURROGATE_ESCAPE.search(raw):
        return False
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _printable(raw: str) -> str:
    """Raw text with undecodable bytes replaced, safe to write anywhere."""
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:RAW_EXCERPT_CHARS]


_UNDECODABLE = ("undecodable_text", "text is not valid UTF-8 (invalid bytes or lone surrogates)")


def _parsed(ordinal: int, offset: int, raw: str, value: Any) -> RawRecord:
    if _has_undecodable(raw, value):
        return RawRecord(ordinal, offset, _printable(raw), None, _UNDECODABLE)
    return RawRecord(ordinal, offset, raw, value)


class _TextWindow:
    """A sliding window of decoded text over a byte stream, tracking byte offsets.

    ``text[pos]`` is the next unread character and ``byte_pos`` its byte offset in the
    file. Undecodable bytes become lone surrogates (``surrogateescape``) so they can be
    found per record and the byte count stays exact.
    """

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.text = ""
        self.pos = 0
        self.byte_pos = 0
        self.eof = False

    def fill(self) -> bool:
        """Append the next chunk (first dropping the text before ``pos`` once that is more
        than a chunk); False at end of file."""
        if self.eof:
            return False
        chunk = self._stream.read(CHUNK_BYTES)
        if self.pos > CHUNK_BYTES:
            self.text, self.pos = self.text[self.pos:], 0
        self.text += self._decoder.decode(chunk, final=not chunk)
        self.eof = not chunk
        return bool(chunk)

    def read_ahead(self, chars: int) -> int:
        """Read on until ``chars`` characters lie ahead of ``pos`` or the file ends;
        returns how many lie ahead."""
        while len(self.text) - self.pos < chars and self.fill():
            pass
        return len(self.text) - self.pos

    def advance(self, end: int) -> str:
        """Move to ``end`` and return the text passed over."""
        passed = self.text[self.pos:end]
        self.byte_pos += len(passed) if passed.isascii() else len(
            passed.encode("utf-8", "surrogateescape"))
        self.pos = end
        return passed

    def skip_whitespace(self) -> str:
        """Skip whitespace, reading on as needed; return the next char ('' at EOF)."""
        while True:
            end = _WHITESPACE.match(self.text, self.pos).end()
            self.byte_pos += end - self.pos
            self.pos = end
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return ""


def _iter_json(path: Path) -> Iterator[RawRecord]:
    """The records of a JSON array, or the one record of a file holding a single object.

    One generator does it all (each level of ``yield from`` costs time per record), and
    its loop keeps the window's text, position and byte offset in locals, handing them
    back to the window only where it must read on or report a fault. Between two records
    of an array it tries the usual ``,`` + whitespace with one regex match.
    """
    with open(path, "rb") as stream:
        window = _TextWindow(stream)
        window.read_ahead(1)
        if window.text.startswith("\ufeff"):
            window.advance(1)
        first = window.skip_whitespace()
        if not first:
            yield RawRecord(0, 0, "", None, ("malformed_json", "the file is empty"))
            return
        if first not in "[{":
            yield _fault(window, 0, f"expected '[' or '{{' at byte {window.byte_pos}, found {first!r}")
            return
        single = first == "{"
        if not single:
            window.advance(window.pos + 1)
            problem = _to_next_element(window, 0)
            if problem is not None:
                if problem:
                    yield _fault(window, 0, problem)
                return
        scan_once = _DECODER.scan_once  # the C scanner behind raw_decode, minus its wrapper
        separator = _SEPARATOR.match
        find_escape = _SURROGATE_ESCAPE.search
        ordinal = 0
        text, pos, byte_pos = window.text, window.pos, window.byte_pos
        # Where the next surrogate escape (\\udXXX) at or after pos lies in text (len(text):
        # none), -1 when not looked for since text changed. One search serves every record
        # before that escape (a regex search of the window beats `"\\u" in raw` per record).
        escape_at = -1
        while True:
            if len(text) - pos < LOOKAHEAD_CHARS and not window.eof:
                # Read on before a record can run past the window: a failed scan costs a
                # JSONDecodeError, which counts the lines of the whole window.
                window.pos = pos
                window.read_ahead(LOOKAHEAD_CHARS)
                text, pos, escape_at = window.text, window.pos, -1
            try:
                try:
                    value, end = scan_once(text, pos)
                    refused = None
                except ValueError as error:  # JSON Python refuses: an integer over 4,300 digits
                    if isinstance(error, json.JSONDecodeError):
                        raise
                    value, end = _LENIENT_SCAN(text, pos)  # the same record, integers kept as text
                    refused = str(error)
            except (json.JSONDecodeError, StopIteration) as error:
                # Either the record runs past the window (read on and retry) or it is broken.
                window.pos, window.byte_pos = pos, byte_pos
                if len(text) - pos > MAX_RECORD_CHARS or not window.fill():
                    message = getattr(error, "msg", "Expecting value")
                    yield _fault(window, ordinal, f"invalid JSON in record starting at byte {byte_pos}: {message}")
                    return
                text, pos, escape_at = window.text, window.pos, -1
                continue
            if end == len(text) and not window.eof and value.__class__ not in _CLOSED_TYPES:
                # A bare number (or literal) at the end of the window may go on in the next chunk.
                window.pos = pos
                window.fill()
                text, pos, escape_at = window.text, window.pos, -1
                continue
            raw = text[pos:end]
            if raw.isascii():  # O(1): CPython strings know whether they are ASCII
                size, undecodable = end - pos, False
            else:
                try:
                    size, undecodable = len(raw.encode("utf-8")), False
                except UnicodeEncodeError:  # a lone surrogate: a byte that was not UTF-8
                    size, undecodable = len(raw.encode("utf-8", "surrogateescape")), True
            if escape_at < pos:
                found = find_escape(text, pos)
                escape_at = len(text) if found is None else found.start()
            if refused is not None:
                yield RawRecord(ordinal, byte_pos, _printable(raw), None,
                                ("malformed_json", f"record at byte {byte_pos}: {refused}"))
            elif undecodable or (escape_at < end and _has_lone_surrogate_escape(raw, value)):
                yield RawRecord(ordinal, byte_pos, _printable(raw), None, _UNDECODABLE)
            else:
                yield RawRecord(ordinal, byte_pos, raw, value)
            byte_pos += size
            ordinal += 1
            if single:
                return
            match = separator(text, end)
            if match is not None:
                pos = match.end()
                if pos < len(text):
                    byte_pos += pos - end  # whitespace and ',' are one byte each
                    continue
            window.pos, window.byte_pos = end, byte_pos
            problem = _to_next_element(window, ordinal)
            if problem is not None:
                if problem:
                    yield _fault(window, ordinal, problem)
                return
            text, pos, byte_pos, escape_at = window.text, window.pos, window.byte_pos, -1


_DECODER = json.JSONDecoder()
_LENIENT_SCAN = json.JSONDecoder(parse_int=str).scan_once
"""Finds where a record ends when the default scanner refuses an over-long integer."""
_CLOSED_TYPES = (dict, list, str)


def _to_next_element(window: _TextWindow, ordinal: int) -> str | None:
    """Move ``window`` to the start of array element ``ordinal`` (past a ``,`` after the
    first). Returns None when there is one, ``""`` at the closing ``]``, else what is wrong."""
    char = window.skip_whitespace()
    if not char:
        return f"file ends at byte {window.byte_pos} before the array is closed"
    if char == "]":
        return ""
    if ordinal > 0:
        if char != ",":
            return f"expected ',' or ']' at byte {window.byte_pos}"
        window.advance(window.pos + 1)
        if not window.skip_whitespace():
            return f"file ends at byte {window.byte_pos} after a ','"
    return None


def _fault(window: _TextWindow, ordinal: int, detail: str) -> RawRecord:
    """The ``malformed_json`` rejection at ``window.pos``, with the text from there on.

    Reads on first so that the excerpt does not depend on where a chunk ended (a byte
    sequence that is not UTF-8, up to 3 characters here, prints as one U+FFFD)."""
    window.read_ahead(4 * RAW_EXCERPT_CHARS)
    excerpt = window.text[window.pos:window.pos + 4 * RAW_EXCERPT_CHARS]
    return RawRecord(ordinal, window.byte_pos, _printable(excerpt), None, ("malformed_json", detail))


def _iter_jsonl(path: Path) -> Iterator[RawRecord]:
    """The records of a JSONL file, one a line (a line broken by a raw newline is repaired)."""
    with open(path, "rb") as stream:
        ordinal = 0
        offset = 0
        lines = iter(stream)  # binary iteration splits on b"\n" only
        pending: bytes | None = None
        while True:
            line = pending if pending is not None else next(lines, None)
            pending = None
            if line is None:
                return
            start, offset = offset, offset + len(line)
            body = line.rstrip(b"\r\n")
            if not body.strip():
                continue
            text = body.decode("utf-8", "surrogateescape")
            try:
                value = json.loads(text)
            except ValueError as error:  # JSONDecodeError, or an integer over 4,300 digits
                follower = next(lines, None)
                repaired = _join_broken_line(body, follower)
                if repaired is not None:
                    offset += len(follower)
                    yield _parsed(ordinal, start, repaired[0], repaired[1])
                else:
                    pending = follower
                    yield RawRecord(ordinal, start, _printable(text), None,
                                    ("malformed_json", f"line at byte {start} is not valid JSON: "
                                                       f"{getattr(error, 'msg', error)}"))
                ordinal += 1
                continue
            yield _parsed(ordinal, start, text, value)
            ordinal += 1


def _join_broken_line(body: bytes, follower: bytes | None) -> tuple[str, Any] | None:
    """Repair a record split by a raw newline inside a string, or return None."""
    if follower is None:
        return None
    joined = (body + b"\\n" + follower.rstrip(b"\r\n")).decode("utf-8", "surrogateescape")
    try:
        return joined, json.loads(joined)
    except ValueError:
        return None
