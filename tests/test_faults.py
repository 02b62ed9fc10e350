"""Faults in annotation files and audio: every record is written or rejected, nothing hangs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llaso_data.ingest.corpus import iter_file
from llaso_data.ingest.readers import iter_raw_records
from llaso_data.records import Rejection, Sample


def _array(n: int) -> tuple[bytes, list[dict], list[tuple[int, int]]]:
    """A JSON array of ``n`` multi-turn records (compact and indented alternately, nested
    objects and brackets inside strings); returns bytes, records and each one's byte span."""
    records = [{"voice": [f"a/{i}.wav"],
                "conversations": [{"from": "human", "value": f"Say {i} {{x}} [y]<audio>"},
                                  {"from": "gpt", "value": "Yes, {1}: [2]"},
                                  {"from": "human", "value": "more"}, {"from": "gpt", "value": "ok"}],
                "metadata": {"i": i, "l": [1, 2, {"z": 3}]}} for i in range(n)]
    pieces = [json.dumps(r, indent=2 if i % 2 else None).encode() for i, r in enumerate(records)]
    spans, offset = [], 2
    for piece in pieces:
        spans.append((offset, offset + len(piece)))
        offset += len(piece) + 2
    return b"[\n" + b",\n".join(pieces) + b"\n]\n", records, spans


def test_a_flipped_byte_anywhere_costs_only_the_record_it_lands_in(tmp_path):
    """Flip one byte (to a structural character or a bit pattern) at many positions of a
    2,000-record array: every untouched record is read intact, at most the touched one is
    a ``malformed_json`` rejection, and the records counted are those the file holds."""
    data, records, spans = _array(2000)
    path = tmp_path / "x_ER_test.json"
    rng = random.Random(0)
    positions = sorted({0, 1, len(data) - 2, *(rng.randrange(len(data)) for _ in range(16)),
                        *(data.index(b"[", 5 + k * 100_000) for k in range(3)),
                        *(data.index(b"}", k * 90_000) for k in range(3)),
                        *(data.index(b",", k * 70_000) for k in range(3)),
                        *(data.index(b'"', k * 110_000) for k in range(3))})
    replacements = (*b'"{}[,', 0)
    for n, position in enumerate(positions):
        for byte in (data[position] ^ 0x55, replacements[n % len(replacements)]):
            if byte == data[position]:
                continue
            damaged = bytearray(data)
            damaged[position] = byte
            path.write_bytes(bytes(damaged))
            raws = list(iter_raw_records(path))
            touched = {k for k, (start, end) in enumerate(spans) if start <= position < end}
            intact = {json.dumps(r.value) for r in raws if r.error is None}
            for k, record in enumerate(records):
                assert k in touched or json.dumps(record) in intact, (position, bytes([byte]), k)
            assert len(records) - len(touched) <= len(raws) <= len(records) + 1, (position, bytes([byte]))
            assert all(r.error[0] == "malformed_json" and str(r.byte_offset) in r.error[1]
                       for r in raws if r.error is not None)


def test_one_damaged_record_mid_file_leaves_every_other_record_a_sample(tmp_path):
    data, records, spans = _array(300)
    start, end = spans[100]
    damaged = data[:start + 30] + b'"' + data[start + 31:]
    folder = tmp_path / "text_audio"
    folder.mkdir()
    (folder / "ASR_test.json").write_bytes(damaged)
    items = list(iter_file(tmp_path, folder / "ASR_test.json"))
    assert len(items) == 300
    assert [i.ordinal for i in items] == list(range(300))
    bad = [i for i in items if isinstance(i, Rejection)]
    assert [(b.ordinal, b.reason, b.byte_offset) for b in bad] == [(100, "malformed_json", start)]
    assert "resumed at the next record" in bad[0].detail


def test_deeply_nested_record_is_one_rejection(tmp_path):
    good = json.dumps({"voice": ["a.wav"], "conversations": [{"from": "human", "value": "<audio>"},
                                                            {"from": "gpt", "value": "ok"}]})
    deep = '{"voice": ' + "[" * 100_000 + "]" * 100_000 + "}"
    folder = tmp_path / "text_audio"
    folder.mkdir()
    (folder / "ASR_test.json").write_text("[" + ",".join([good] * 50 + [deep] + [good] * 49) + "]")
    items = list(iter_file(tmp_path, folder / "ASR_test.json"))
    assert [type(i).__name__ for i in items] == ["Sample"] * 50 + ["Rejection"] + ["Sample"] * 49
    assert items[50].reason == "malformed_json" and "nested too deeply" in items[50].detail


def test_utf16_file_is_one_clear_rejection(tmp_path):
    path = tmp_path / "x_ER_test.json"
    path.write_bytes(json.dumps([{"voice": []}]).encode("utf-16"))
    raw, = list(iter_raw_records(path))
    assert raw.error[0] == "malformed_json" and "UTF-16" in raw.error[1]
    raw.error[1].encode("utf-8")  # no surrogates in the message


def test_bom_prefixed_jsonl_keeps_its_first_record(tmp_path):
    line = json.dumps({"voice": ["a.wav"], "conversations": [{"from": "human", "value": "<audio>"},
                                                             {"from": "gpt", "value": "ok"}]})
    path = tmp_path / "x_ER_test.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (line + "\n" + line + "\n").encode())
    raws = list(iter_raw_records(str(path)))
    assert [r.error for r in raws] == [None, None] and raws[0].byte_offset == 3
