"""Ingestion of the real LLaSO-Eval records and of every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llaso_data.ingest.corpus import UnknownStemWarning, iter_corpus, iter_file, scan
from llaso_data.ingest.paths import AudioPathError, AudioRoot
from llaso_data.records import Rejection, Sample
from llaso_data.ingest.readers import SingleObjectWarning, holds_single_object, iter_raw_records
from llaso_data.tasks import LLASO_TASKS, parse_file_name

from conftest import EVAL_SAMPLE

EXPECTED = {
    "audio_text/dolly_instruction_0_test.json": ("audio_text", "AQA", "semantic"),
    "audio_text/orca_instruction_0_test.json": ("audio_text", "AQA", "semantic"),
    "pure_audio/alpaca_gpt4_end_test.json": ("pure_audio", "AQA", "semantic"),
    "pure_audio/code_alpaca_end_test.json": ("pure_audio", "AQA", "semantic"),
    "text_audio/ASR_test.json": ("text_audio", "ASR", "linguistic"),
    "text_audio/NSynth_pitch_recognition_test.json": ("text_audio", "PP", "paralinguistic"),
    "text_audio/common-voice_gender_classification_test.json": ("text_audio", "SGC", "paralinguistic"),
    "text_audio/dolly_input_1_test.json": ("text_audio", "AQA", "semantic"),
    "text_audio/meld_ER_classification_test.json": ("text_audio", "ER", "paralinguistic"),
    "text_audio/pronunciation_scoring_word_level_test.json": ("text_audio", "PSWL", "paralinguistic"),
    "text_audio/vctk_accent_classification_test.json": ("text_audio", "AC", "paralinguistic"),
}


def _samples(source: Path) -> list[Sample]:
    items = list(iter_corpus(source))
    assert all(isinstance(i, Sample) for i in items), [str(i) for i in items if isinstance(i, Rejection)]
    return items


def test_every_fixture_record_gets_task_category_and_modality():
    samples = _samples(EVAL_SAMPLE)
    assert {s.source for s in samples} == set(EXPECTED)
    for sample in samples:
        raw = json.loads((EVAL_SAMPLE / sample.source).read_text("utf-8"))[sample.ordinal]
        assert (sample.modality, sample.task, sample.category) == EXPECTED[sample.source]
        assert sample.split == "test"
        assert sample.label == raw["conversations"][1]["value"]
        assert sample.audio == tuple(p.replace("\\", "/") for p in raw["voice"])
        assert [t.role for t in sample.turns] == ["user", "assistant"]
        assert sample.turns[0].text == raw["conversations"][0]["value"].replace("<audio>", "")
        assert set(sample.provenance) == set(raw) - {"voice", "conversations"}
    assert len({s.key for s in samples}) == len(samples) == 44


def test_audio_position_follows_modality():
    for sample in _samples(EVAL_SAMPLE):
        (offset, clip), = sample.turns[0].clips
        assert clip == 0
        if sample.modality == "audio_text":
            assert offset == 0 and sample.turns[0].segments()[0] == 0
        else:
            assert offset == len(sample.turns[0].text) and sample.turns[0].segments()[-1] == 0


def test_meld_text_and_list_metadata_survive_byte_for_byte(tmp_path):
    meld = EVAL_SAMPLE / "text_audio" / "meld_ER_classification_test.json"
    originals = json.loads(meld.read_text("utf-8"))
    samples = _samples(meld)
    assert any("\u0092" in s.provenance["meta-data"]["utt"] for s in samples)
    for sample, original in zip(samples, originals):
        assert sample.provenance == {"meta-data": original["meta-data"]}
        again = Sample.from_json(sample.to_json().encode("utf-8"))
        assert json.dumps(again.provenance, ensure_ascii=False).encode() == \
            json.dumps({"meta-data": original["meta-data"]}, ensure_ascii=False).encode()
    scoring = _samples(EVAL_SAMPLE / "text_audio" / "pronunciation_scoring_word_level_test.json")
    raw = json.loads((EVAL_SAMPLE / "text_audio" / "pronunciation_scoring_word_level_test.json").read_text("utf-8"))
    assert all(isinstance(s.provenance["metadata"], list) for s in scoring)
    assert [s.provenance["metadata"] for s in scoring] == [r["metadata"] for r in raw]


def test_jsonl_splits_on_newline_only_keeping_u0085(tmp_path):
    records = json.loads((EVAL_SAMPLE / "text_audio" / "meld_ER_classification_test.json").read_text("utf-8"))
    records[0]["meta-data"]["utt"] += "\u0085and on\u2028and on"
    folder = tmp_path / "text_audio"
    folder.mkdir()
    path = folder / "meld_ER_classification_test.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    samples = _samples(path)
    assert len(samples) == len(records)
    assert samples[0].provenance["meta-data"]["utt"].endswith("\u0085and on\u2028and on")


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


GOOD = {"voice": ["a\\b.wav"], "conversations": [
    {"from": "human", "value": "Say it.<audio>"}, {"from": "gpt", "value": "Yes."}]}


def _bad(**changes) -> dict:
    record = json.loads(json.dumps(GOOD))
    record.update(changes)
    return record


REJECTION_CASES = [
    ("not_an_object", 42),
    ("missing_turns", _bad(conversations=[])),
    ("missing_turns", {"voice": ["a.wav"]}),
    ("missing_turns", _bad(conversations=[{"from": "human", "value": "x<audio>"}])),
    ("misordered_turns", _bad(conversations=[{"from": "gpt", "value": "x"}, {"from": "human", "value": "<audio>"}])),
    ("misordered_turns", _bad(conversations=[{"from": "human", "value": "<audio>"}, {"from": "human", "value": "x"}])),
    ("misordered_turns", _bad(conversations=[{"from": "human", "value": "<audio>"}, {"from": "narrator", "value": "x"}])),
    ("bad_field_type", _bad(voice={"path": "a.wav"})),
    ("bad_field_type", _bad(voice=["a.wav", 3])),
    ("bad_field_type", _bad(conversations=[{"from": "human", "value": ["<audio>"]}, {"from": "gpt", "value": "x"}])),
    ("audio_count_mismatch", _bad(voice=["a.wav", "b.wav"])),
    ("audio_count_mismatch", _bad(voice=[])),
    ("absolute_audio_path", _bad(voice=["/data/a.wav"])),
    ("absolute_audio_path", _bad(voice=["C:\\data\\a.wav"])),
    ("audio_path_escapes_root", _bad(voice=["..\\..\\etc\\passwd.wav"])),
    ("audio_path_escapes_root", _bad(voice=["a/../../b.wav"])),
    ("empty_label", _bad(conversations=[{"from": "human", "value": "<audio>"}, {"from": "gpt", "value": "  "}])),
]


@pytest.mark.parametrize("reason,record", REJECTION_CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(REJECTION_CASES)])
def test_each_rejection_reason_names_file_record_and_reason(tmp_path, reason, record):
    path = _write(tmp_path / "text_audio" / "meld_ER_classification_train.json",
                  json.dumps([GOOD, record, GOOD]).encode())
    items = list(iter_corpus(tmp_path))
    assert [type(i).__name__ for i in items] == ["Sample", "Rejection", "Sample"]
    rejection = items[1]
    assert rejection.reason == reason
    assert rejection.source == "text_audio/meld_ER_classification_train.json"
    assert rejection.ordinal == 1
    assert "text_audio/meld_ER_classification_train.json record 1" in str(rejection) and reason in str(rejection)
    assert json.loads(rejection.raw) == record
    raw_bytes = path.read_bytes()
    assert raw_bytes[rejection.byte_offset:].startswith(json.dumps(record).encode())


def test_undecodable_text_rejects_only_that_record(tmp_path):
    good = json.dumps(GOOD).encode()
    bad_byte = good.replace(b"Yes.", b"Y\x92s.")
    surrogate = good.replace(b"Yes.", b"Y\\udc80s.")
    pair = good.replace(b"Yes.", b"Y\\ud83d\\ude00s.")
    _write(tmp_path / "text_audio" / "x_ER_train.json", b"[" + b",".join([good, bad_byte, surrogate, pair]) + b"]")
    _write(tmp_path / "text_audio" / "y_ER_train.jsonl", b"\n".join([good, bad_byte, good]) + b"\n")
    reasons = [(i.source, i.ordinal, getattr(i, "reason", None)) for i in iter_corpus(tmp_path)]
    assert reasons == [
        ("text_audio/x_ER_train.json", 0, None),
        ("text_audio/x_ER_train.json", 1, "undecodable_text"),
        ("text_audio/x_ER_train.json", 2, "undecodable_text"),
        ("text_audio/x_ER_train.json", 3, None),
        ("text_audio/y_ER_train.jsonl", 0, None),
        ("text_audio/y_ER_train.jsonl", 1, "undecodable_text"),
        ("text_audio/y_ER_train.jsonl", 2, None),
    ]


def test_truncated_array_keeps_records_before_the_fault_and_reports_its_byte_offset(tmp_path):
    records = [json.dumps(dict(GOOD, id=str(i)), indent=2).encode() for i in range(5)]
    whole = b"[\n" + b",\n".join(records) + b"\n]\n"
    cut = whole.index(b'"id": "3"')
    path = _write(tmp_path / "text_audio" / "ASR_test.json", whole[:cut])
    items = list(iter_corpus(path))
    assert [getattr(i, "provenance", {}).get("id") for i in items[:3]] == ["0", "1", "2"]
    fault = items[3]
    assert isinstance(fault, Rejection) and fault.reason == "malformed_json" and fault.ordinal == 3
    assert fault.byte_offset == whole.index(records[3])
    assert str(fault.byte_offset) in fault.detail
    assert len(items) == 4


def test_broken_jsonl_line_is_rejected_and_reading_goes_on(tmp_path):
    good = json.dumps(GOOD)
    repaired = json.dumps(_bad(id="joined")).replace('"Yes."', '"Yes\nno."')
    content = "\n".join([good, "{not json", good, repaired, good]) + "\n"
    path = _write(tmp_path / "text_audio" / "x_ER_test.jsonl", content.encode())
    items = list(iter_corpus(path))
    assert [getattr(i, "reason", "ok") for i in items] == ["ok", "malformed_json", "ok", "ok", "ok"]
    assert items[1].byte_offset == len(good) + 1
    assert items[3].label == "Yes\nno." and items[3].provenance["id"] == "joined"


def test_records_across_read_chunks_keep_exact_byte_offsets(tmp_path):
    """A 3.5 MB array (read in 1 MB chunks): multi-byte text, escaped surrogate pairs, bad
    bytes and lone surrogate escapes land on every side of the chunk ends."""
    texts = ["Yes.", "caf\u00e9", "\u4e2d\u6587", "a\u0085b", "x\u2028y", "\U0001F600"]
    pieces, expected, offset = [], [], 1
    for i in range(20_000):
        record = _bad(id=i, text=texts[i % len(texts)])
        piece = json.dumps(record, ensure_ascii=i % 3 == 0, indent=2 if i % 2 else None).encode()
        reason = None
        if i % 997 == 5:
            piece, reason = piece.replace(b'"Yes."', b'"Y\x92s."'), "undecodable_text"
        elif i % 997 == 9:
            piece, reason = piece.replace(b'"Yes."', b'"Y\\udc80s."'), "undecodable_text"
        pieces.append(piece)
        expected.append((i, offset, reason))
        offset += len(piece) + 2
    path = _write(tmp_path / "text_audio" / "x_ER_train.json", b"[" + b",\n".join(pieces) + b"]")
    assert path.stat().st_size > 3 * 2**20
    raws = list(iter_raw_records(path))
    assert [(r.ordinal, r.byte_offset, r.error and r.error[0]) for r in raws] == expected
    for raw, piece, (_, _, reason) in zip(raws, pieces, expected):
        if reason is None:
            assert raw.value == json.loads(piece) and raw.raw.encode() == piece


def test_huge_array_is_streamed_in_constant_memory(tmp_path):
    """A 60 MB array read in a child process stays far below its size in peak RSS."""
    path = tmp_path / "text_audio" / "ASR_stage1_train.json"
    path.parent.mkdir()
    record = json.dumps(dict(GOOD, index=0), indent=2)
    with open(path, "w") as out:
        out.write("[" + ",".join([record] * 300_000) + "]")
    code = (
        "import re;from pathlib import Path;from llaso_data.ingest.corpus import iter_file;"
        f"p=Path({str(path)!r});n=sum(1 for _ in iter_file(p.parent.parent,p));"
        "hwm=re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1);"
        "print(n, int(hwm)//1024)"
    )
    count, rss_mb = map(int, subprocess.run([sys.executable, "-c", code], check=True,
                                            capture_output=True, text=True).stdout.split())
    assert count == 300_000
    assert path.stat().st_size > 50 * 2**20
    assert rss_mb < 60


def test_llasm_multi_turn_conversations(tmp_path):
    transcripts = [(FIXTURES_LLASM / f"{i}.txt").read_text("utf-8").strip() for i in range(3)]
    record = {
        "id": "zh-0",
        "instruction": "你是一个乐于助人的助手。",
        "conversations": [
            {"from": "human", "value": "<audio>"}, {"from": "gpt", "value": "好的。"},
            {"from": "human", "value": "<audio>"}, {"from": "gpt", "value": "中国和印度。"},
            {"from": "human", "value": "请回答：<audio>"}, {"from": "gpt", "value": "北京是中国的首都。"},
        ],
        "voice": ["llasm_examples\\0.mp3", "llasm_examples\\1.mp3", "llasm_examples\\2.mp3"],
        "transcripts": transcripts,
    }
    path = _write(tmp_path / "LLaSM" / "llasm_zh_train.jsonl", (json.dumps(record, ensure_ascii=False) + "\n").encode())
    sample, = _samples(path)
    assert (sample.task, sample.category, sample.modality) == ("CONV", "semantic", "pure_audio")
    assert sample.system == record["instruction"]
    assert [t.role for t in sample.turns] == ["user", "assistant"] * 3
    assert [t.clips for t in sample.turns[::2]] == [((0, 0),), ((0, 1),), ((4, 2),)]
    assert sample.label == "北京是中国的首都。"
    assert sample.provenance == {"id": "zh-0", "transcripts": transcripts}
    report = scan(path.parent, audio=AudioRoot(FIXTURES_LLASM.parent))
    assert report.valid == 1 and not report.rejected


def test_unknown_stem_is_kept_with_a_warning(tmp_path):
    path = _write(tmp_path / "text_audio" / "mystery_task_train.json", json.dumps([GOOD]).encode())
    with pytest.warns(UnknownStemWarning, match="mystery_task"):
        sample, = list(iter_corpus(path))
    assert (sample.task, sample.category, sample.split) == ("mystery_task", "unknown", "train")


def test_stem_rules_cover_every_task():
    stems = {
        "ASR_train_stage2": "ASR", "phoneme_recognition_train": "PR", "dolly_input_1_train": "AQA",
        "common-voice_age_classification_train": "AR", "voxceleb_gender_classification_test": "SGC",
        "accentdb_AI_classification_train": "AC", "slurp_Intent_Prediction_train": "IP",
        "speechcommand_recognition_train": "SCR", "Synthetic_Audio_Classification_train": "SSD",
        "slurp_Entity_Extraction_train": "EE", "CREMAD_ER_classification_train": "ER",
        "meld_EIE_classification_train": "EIE", "meld_SV_classification_train": "SV",
        "pronunciation_scoring_word_level_train": "PSWL", "pronunciation_scoring_sentence_level_train": "PSSL",
        "vocalsound_vocal_classification_train": "VSC", "NSynth_instrument_classification_test": "IC",
        "NSynth_music_source_classification_train": "ISC", "NSynth_pitch_recognition_train": "PP",
        "velocity_classification_train": "VC", "ASR_stage1_train": "ALIGN",
        "vocalsound_age_prediction_test": "AR", "3.5M_GPT3.5_end_test": "AQA",
    }
    assert {parse_file_name(f"{s}.json").task for s in stems} >= set(LLASO_TASKS)
    for stem, task in stems.items():
        assert parse_file_name(f"{stem}.json").task == task, stem


def test_scan_cli_prints_the_contract_json_and_exits_zero(tmp_path):
    _write(tmp_path / "text_audio" / "meld_ER_classification_train.json",
           json.dumps([GOOD, _bad(voice=["/abs.wav"]), GOOD]).encode()[:-1])
    result = subprocess.run([sys.executable, "-m", "llaso_data.cli", "scan", str(tmp_path), "--json"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {
        "samples": [{"split": "train", "modality": "text_audio", "task": "ER",
                     "category": "paralinguistic", "count": 2}],
        "rejected": {"absolute_audio_path": 1, "malformed_json": 1},
    }
    assert "meld_ER_classification_train.json record 1" in result.stderr


def test_raw_reader_handles_single_object_and_bom(tmp_path):
    path = _write(tmp_path / "one.json", b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    with pytest.warns(SingleObjectWarning, match="one.json: holds one JSON object"):
        raw, = list(iter_raw_records(path))
    assert raw.value == GOOD and raw.byte_offset == 3


def test_a_json_file_holding_one_object_is_one_record_with_a_warning_naming_it(tmp_path, recwarn):
    """LLaSO's data_merge.py reads a file holding one object as one record; so does ingestion,
    and it warns naming the file (an array file gives no such warning). The CLI prints the
    warning as one line."""
    one = _write(tmp_path / "text_audio" / "meld_ER_classification_train.json", b"\n " + json.dumps(GOOD).encode())
    array = _write(tmp_path / "text_audio" / "meld_SV_classification_train.json", json.dumps([GOOD, GOOD]).encode())
    assert holds_single_object(one) and not holds_single_object(array)
    items = list(iter_corpus(tmp_path))
    assert [type(i) for i in items] == [Sample] * 3 and items[0].task == "ER" and items[0].turns == items[1].turns
    warned = [w for w in recwarn if issubclass(w.category, SingleObjectWarning)]
    assert [str(w.message) for w in warned] == [f"{one}: holds one JSON object, not an array; read as one record"]
    result = subprocess.run([sys.executable, "-m", "llaso_data.cli", "scan", str(tmp_path), "--json"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["samples"][0]["count"] == 1
    assert [line for line in result.stderr.splitlines() if "warning" in line] == [
        f"warning: {one}: holds one JSON object, not an array; read as one record"]


FIXTURES_LLASM = EVAL_SAMPLE.parent / "llasm_examples"


def test_an_integer_python_refuses_rejects_only_its_record(tmp_path):
    """An integer over Python's 4,300-digit limit is valid JSON that ``json`` refuses: the
    record is rejected as malformed and the records around it still ingest (array and JSONL)."""
    good = {"voice": ["a\\b.wav"], "conversations": [{"from": "human", "value": "Say it.<audio>"},
                                                    {"from": "gpt", "value": "Yes."}]}
    records = [json.dumps(good), json.dumps(good)[:-1] + ', "index": ' + "9" * 5000 + "}", json.dumps(good)]
    folder = tmp_path / "text_audio"
    folder.mkdir()
    (folder / "ASR_test.json").write_text("[" + ",\n".join(records) + "]")
    (folder / "vctk_gender_classification_test.jsonl").write_text("\n".join(records) + "\n")
    for name in ("ASR_test.json", "vctk_gender_classification_test.jsonl"):
        items = list(iter_file(tmp_path, folder / name))
        assert [type(i).__name__ for i in items] == ["Sample", "Rejection", "Sample"], name
        assert items[1].reason == "malformed_json" and items[1].ordinal == 1, items[1]
        assert "4300" in items[1].detail, items[1].detail
        assert [i.ordinal for i in items] == [0, 1, 2]


def test_audio_root_follows_symlinks_only_inside_the_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "clips").mkdir(parents=True)
    outside.mkdir()
    (root / "clips" / "real.wav").write_bytes(b"RIFF")
    (outside / "secret.wav").write_bytes(b"RIFF")
    (root / "clips" / "inner.wav").symlink_to(root / "clips" / "real.wav")
    (root / "clips" / "leak.wav").symlink_to(outside / "secret.wav")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "alias").symlink_to(root / "clips", target_is_directory=True)
    audio = AudioRoot(root)
    assert audio.resolve("clips/real.wav") == (root / "clips" / "real.wav").resolve()
    assert audio.resolve("clips/inner.wav") == (root / "clips" / "real.wav").resolve()
    assert audio.resolve("alias/real.wav") == (root / "clips" / "real.wav").resolve()
    for escaping in ("clips/leak.wav", "linked_dir/secret.wav", "linked_dir/missing.wav"):
        for _ in range(2):  # the second time the folder's real path comes from the cache
            with pytest.raises(AudioPathError) as caught:
                audio.resolve(escaping)
            assert caught.value.reason == "audio_path_escapes_root"
    assert audio.locate(("clips/real.wav", "alias/inner.wav")) == [(root / "clips" / "real.wav").resolve()] * 2
    with pytest.raises(AudioPathError) as caught:
        audio.locate(("clips/real.wav", "clips/absent.wav"))
    assert caught.value.reason == "audio_missing" and caught.value.path == "clips/absent.wav"
    # a root that is itself reached through a symlink confines to its target
    (tmp_path / "root_link").symlink_to(root, target_is_directory=True)
    assert AudioRoot(tmp_path / "root_link").resolve("alias/real.wav") == (root / "clips" / "real.wav").resolve()
    with pytest.raises(AudioPathError):
        AudioRoot(tmp_path / "root_link").resolve("clips/leak.wav")
