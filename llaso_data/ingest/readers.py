"""Streaming readers for JSON-array, single-object JSON and JSONL annotation files.

Constant memory in the file size: a multi-GB JSON array is decoded record by record
with the standard library's C scanner (``json.JSONDecoder.raw_decode``) over a sliding
text window. Each record is parsed on its own, so one bad record costs only itself:

* invalid UTF-8 bytes or lone surrogate escapes reject that record (``undecodable_text``);
* a syntax fault inside a JSON array (a flipped byte, a cut) costs the damaged record
  only: it becomes one ``malformed_json`` record with its byte offset, and reading
  resynchronises at the next top-level record (see :func:`_resync`); a damaged byte
  between two records costs nothing; a file cut short ends with one ``malformed_json``;
* a file in UTF-16 or UTF-32 (a byte-order mark) is one ``malformed_json`` naming the
  encoding;
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
import warnings
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


class SingleObjectWarning(UserWarning):
    """A ``.json`` annotation file holding one object instead of an array. It is read as one
    record, as LLaSO's ``data_merge.py`` reads such a file; the warning names the file,
    since a file meant to hold many records may have lost its brackets."""


def holds_single_object(path: Path | str) -> bool:
    """Whether the ``.json`` file ``path`` holds one object, not an array: its first
    character after a UTF-8 byte-order mark and whitespace is ``{``. Reads at most 64 KiB."""
    with open(path, "rb") as stream:
        head = stream.read(1 << 16)
    return head.removeprefix(codecs.BOM_UTF8).lstrip(b" \t\r\n")[:1] == b"{"


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


def iter_raw_records(path: Path | str) -> Iterator[RawRecord]:
    """Every record of a ``.json`` (array or single object) or ``.jsonl`` file, in order.
    A ``.json`` file holding one object is one record and raises a
    :class:`SingleObjectWarning` naming the file.

    The file is opened on the first ``next`` and closed when the iterator ends or is
    discarded.
    """
    path = Path(path)
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
        self.dropped = 0  # characters trimmed from the front of ``text`` so far

    def fill(self) -> bool:
        """Append the next chunk (first dropping the text before ``pos`` once that is more
        than a chunk); False at end of file."""
        if self.eof:
            return False
        chunk = self._stream.read(CHUNK_BYTES)
        if self.pos > CHUNK_BYTES:
            self.text, self.pos, self.dropped = self.text[self.pos:], 0, self.dropped + self.pos
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
        wide = _wide_encoding_fault(stream)
        if wide:
            yield wide
            return
        window = _TextWindow(stream)
        window.read_ahead(1)
        if window.text.startswith("\ufeff"):
            window.advance(1)
        first = window.skip_whitespace()
        if not first:
            yield RawRecord(0, 0, "", None, ("malformed_json", "the file is empty"))
            return
        single = first == "{"
        if single:
            warnings.warn(f"{path}: holds one JSON object, not an array; read as one record",
                          SingleObjectWarning, stacklevel=2)
        else:
            if first == "[":
                window.advance(window.pos + 1)
                problem = _to_next_element(window, 0)
            else:
                problem = f"expected '[' or '{{' at byte {window.byte_pos}, found {first!r}"
            if problem is not None:
                if problem and not _resync(window, window.pos, window.pos):
                    yield _fault(window, 0, problem)
                    return
                if not problem:
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
            except (json.JSONDecodeError, StopIteration, RecursionError) as error:
                # Either the record runs past the window (read on and retry) or it is broken.
                window.pos, window.byte_pos = pos, byte_pos
                stopped = error.value if isinstance(error, StopIteration) else getattr(error, "pos", pos)
                stopped = max(stopped if isinstance(stopped, int) else pos, pos) - pos  # past the record start
                if isinstance(error, RecursionError) or len(text) - pos > MAX_RECORD_CHARS or not window.fill():
                    message = getattr(error, "msg", None) or (
                        "nested too deeply" if isinstance(error, RecursionError) else "Expecting value")
                    damaged = _fault(window, ordinal, f"invalid JSON in record starting at byte {byte_pos}: {message}")
                    resumed = _resync(window, window.pos + 1, window.pos + stopped)
                    if resumed:
                        damaged.error = ("malformed_json", damaged.error[1] + f"; reading resumed at the next "
                                                                               f"record, byte {window.byte_pos}")
                    yield damaged
                    if not resumed:
                        return
                    ordinal += 1
                    single = False
                    text, pos, byte_pos, escape_at = window.text, window.pos, window.byte_pos, -1
                    continue
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
            if not single:
                match = separator(text, end)
                if match is not None:
                    pos = match.end()
                    if pos < len(text):
                        byte_pos += pos - end  # whitespace and ',' are one byte each
                        continue
            record_start, record_bytes = window.dropped + pos, byte_pos - size
            window.pos, window.byte_pos = end, byte_pos
            if single:
                problem = None if not window.skip_whitespace() else (
                    f"text after the file's one object at byte {window.byte_pos}")
                if problem is None:
                    return
            else:
                problem = _to_next_element(window, ordinal)
            if problem is not None:
                # A fault between records (or after the closing bracket): go on at the next
                # record; when none follows, the file may have lost records: say so.
                if not problem:
                    return
                fault_at = window.dropped + window.pos
                damaged = _fault(window, ordinal, problem)
                fault = fault_at - window.dropped
                if record_start >= window.dropped:
                    # Look again from inside the record just read: a string that ran on
                    # past its end may have swallowed the next record's opening brace.
                    window.pos, window.byte_pos = record_start - window.dropped, record_bytes
                if not _resync(window, window.pos + 1 if window.pos < fault else fault, fault):
                    yield damaged
                    return
                single = False
            text, pos, byte_pos, escape_at = window.text, window.pos, window.byte_pos, -1


_DECODER = json.JSONDecoder()
_LENIENT_SCAN = json.JSONDecoder(parse_int=str).scan_once
"""Finds where a record ends when the default scanner refuses an over-long integer."""
_CLOSED_TYPES = (dict, list, str)


def _wide_encoding_fault(stream) -> RawRecord | None:
    """The one ``malformed_json`` record of a file that starts with a UTF-16/32 byte-order
    mark, else None; ``stream`` is left at its start."""
    encoding = _wide_encoding(stream.read(4))
    stream.seek(0)
    if encoding is None:
        return None
    return RawRecord(0, 0, "", None, ("malformed_json", f"the file is {encoding} (byte-order mark); "
                                                        "annotation files must be UTF-8"))


def _wide_encoding(head: bytes) -> str | None:
    """``"UTF-16"``/``"UTF-32"`` when ``head`` (a file's first 4 bytes) starts with that
    encoding's byte-order mark, else None."""
    if head[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        return "UTF-32"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16"
    return None


def _resync(window: _TextWindow, search_from: int, error_at: int) -> bool:
    """After a syntax fault, move ``window`` to the start of the next top-level record.

    ``search_from`` and ``error_at`` index ``window.text``: where to look for a ``{`` and
    where the decoder stopped. A ``{`` is taken when the values chained from it by ``,``
    reach past ``error_at`` and do not end in a ``]`` followed by more text (or a ``:``, or
    a ``}``): that rules out the turns and nested objects of the damaged record, whose
    chain ends inside that record. The chain is followed as far as the window reaches
    (``LOOKAHEAD_CHARS`` past the candidate, at least). Returns False at end of file
    without a record (the window then sits at the end); text passed over is counted in
    ``window.byte_pos``. A damaged region longer than the window is skipped chunk by chunk.
    """
    search = search_from - window.pos  # offsets from window.pos survive a fill's trimming
    error = error_at - window.pos
    while True:
        text = window.text
        candidate = text.find("{", window.pos + search)
        if candidate < 0:
            if window.eof:
                window.advance(len(text))
                return False
            passed = len(text) - window.pos
            window.advance(len(text))
            window.fill()
            search, error = 0, max(error - passed, 0)
            continue
        offset = candidate - window.pos
        if len(text) - candidate < LOOKAHEAD_CHARS and not window.eof:
            window.read_ahead(offset + LOOKAHEAD_CHARS)
            text, candidate = window.text, window.pos + offset
        if _chain_is_top_level(text, candidate, window.pos + error, window.eof):
            window.advance(candidate)
            return True
        search = offset + 1


def _chain_is_top_level(text: str, start: int, error_at: int, eof: bool) -> bool:
    """Whether the ``,``-chained values from ``text[start]`` look like array elements that
    carry on past ``error_at`` (see :func:`_resync`)."""
    position, passed = start, False
    while True:
        try:
            _, end = _DECODER.scan_once(text, position)
        except (ValueError, StopIteration, RecursionError):
            return passed  # the window ends, or a later fault: decided by what came before
        passed = passed or end > error_at
        after = _WHITESPACE.match(text, end).end()
        if after >= len(text):
            return passed
        char = text[after]
        if char == "]":
            rest = _WHITESPACE.match(text, after + 1).end()
            return rest == len(text) and (eof or passed)
        if char != ",":
            return False
        position = _WHITESPACE.match(text, after + 1).end()
        if position >= len(text):
            return passed


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


_UTF8_BOM = b"\xef\xbb\xbf"


def _iter_jsonl(path: Path) -> Iterator[RawRecord]:
    """The records of a JSONL file, one a line (a line broken by a raw newline is repaired;
    a UTF-8 byte-order mark is skipped; UTF-16/32 is one ``malformed_json``)."""
    with open(path, "rb") as stream:
        wide = _wide_encoding_fault(stream)
        if wide:
            yield wide
            return
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
            if start == 0 and line.startswith(_UTF8_BOM):
                line, start = line[len(_UTF8_BOM):], len(_UTF8_BOM)
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
