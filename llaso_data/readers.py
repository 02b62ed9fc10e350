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
    """Yield every record of a ``.json`` (array or single object) or ``.jsonl`` file."""
    with open(path, "rb") as stream:
        if path.suffix.lower() == ".jsonl":
            yield from _iter_jsonl(stream)
        else:
            yield from _iter_json(stream)


def _has_undecodable(raw: str, value: Any) -> bool:
    """True when the record holds invalid UTF-8 bytes or unpaired surrogate escapes."""
    if not raw.isascii():
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            return True
    if "\\u" in raw and _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return True
    return False


def _printable(raw: str) -> str:
    """Raw text with undecodable bytes replaced, safe to write anywhere."""
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:RAW_EXCERPT_CHARS]


def _parsed(ordinal: int, offset: int, raw: str, value: Any) -> RawRecord:
    if _has_undecodable(raw, value):
        return RawRecord(
            ordinal, offset, _printable(raw), None,
            ("undecodable_text", "text is not valid UTF-8 (invalid bytes or lone surrogates)"),
        )
    return RawRecord(ordinal, offset, raw, value)


class _TextWindow:
    """A sliding window of decoded text over a byte stream, tracking byte offsets.

    Undecodable bytes become lone surrogates (``surrogateescape``) so they can be found
    per record and the byte count stays exact.
    """

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.text = ""
        self.pos = 0
        self.byte_pos = 0
        self.eof = False

    def fill(self) -> bool:
        """Append the next chunk; False at end of file."""
        if self.eof:
            return False
        chunk = self._stream.read(CHUNK_BYTES)
        if self.pos > CHUNK_BYTES:
            self.text, self.pos = self.text[self.pos:], 0
        self.text += self._decoder.decode(chunk, final=not chunk)
        self.eof = not chunk
        return bool(chunk)

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


def _iter_json(stream: BinaryIO) -> Iterator[RawRecord]:
    window = _TextWindow(stream)
    decoder = json.JSONDecoder()
    window.fill()
    if window.text.startswith("\ufeff"):
        window.advance(1)
    first = window.skip_whitespace()
    if first == "{":
        yield from _decode_records(window, decoder, single=True)
    elif first == "[":
        window.advance(window.pos + 1)
        yield from _decode_records(window, decoder, single=False)
    elif not first:
        yield RawRecord(0, 0, "", None, ("malformed_json", "the file is empty"))
    else:
        yield RawRecord(0, window.byte_pos, _printable(window.text[window.pos:]), None,
                        ("malformed_json", f"expected '[' or '{{' at byte {window.byte_pos}, found {first!r}"))


def _decode_records(window: _TextWindow, decoder: json.JSONDecoder, single: bool) -> Iterator[RawRecord]:
    scan_once = decoder.scan_once  # the C scanner behind raw_decode, minus its wrapper
    ordinal = 0
    while True:
        separator = _SEPARATOR.match(window.text, window.pos) if ordinal and not single else None
        if separator and separator.end() < len(window.text):
            window.byte_pos += separator.end() - window.pos
            window.pos = separator.end()
        else:
            char = window.skip_whitespace()
            if not char:
                yield _fault(window, ordinal, f"file ends at byte {window.byte_pos} before the array is closed")
                return
            if not single:
                if char == "]":
                    return
                if ordinal > 0:
                    if char != ",":
                        yield _fault(window, ordinal, f"expected ',' or ']' at byte {window.byte_pos}")
                        return
                    window.advance(window.pos + 1)
                    if not window.skip_whitespace():
                        yield _fault(window, ordinal, f"file ends at byte {window.byte_pos} after a ','")
                        return
        while True:
            try:
                value, end = scan_once(window.text, window.pos)
                # A bare number at the end of the window may continue in the next chunk.
                if end < len(window.text) or window.eof or isinstance(value, (dict, list, str)):
                    break
                window.fill()
            except (json.JSONDecodeError, StopIteration) as error:
                if len(window.text) - window.pos > MAX_RECORD_CHARS or not window.fill():
                    message = getattr(error, "msg", "Expecting value")
                    yield _fault(window, ordinal, f"invalid JSON in record starting at byte {window.byte_pos}: {message}")
                    return
        offset = window.byte_pos
        yield _parsed(ordinal, offset, window.advance(end), value)
        ordinal += 1
        if single:
            return


def _fault(window: _TextWindow, ordinal: int, detail: str) -> RawRecord:
    return RawRecord(ordinal, window.byte_pos, _printable(window.text[window.pos:]), None,
                     ("malformed_json", detail))


def _iter_jsonl(stream: BinaryIO) -> Iterator[RawRecord]:
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
        except json.JSONDecodeError as error:
            follower = next(lines, None)
            repaired = _join_broken_line(body, follower)
            if repaired is not None:
                offset += len(follower)
                yield _parsed(ordinal, start, repaired[0], repaired[1])
            else:
                pending = follower
                yield RawRecord(ordinal, start, _printable(text), None,
                                ("malformed_json", f"line at byte {start} is not valid JSON: {error.msg}"))
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
    except json.JSONDecodeError:
        return None
