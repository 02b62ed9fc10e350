"""Tests of the synthetic LLaSO/LLaSM corpus generator, on real files written to tmp dirs."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llaso_synth.corpus import (
    FAULTY_FILES,
    LONG_SECONDS,
    STEMS,
    SUMMARY_FILE,
    UNKNOWN_STEM_FILE,
    _COMMANDS,
    _VOCAB,
    stable_rng,
    write_corpus,
)
from llaso_synth.audio import (
    CHANNELS,
    RATES,
    WORD_SECONDS,
    Speech,
    class_hz,
    espeak_available,
    render,
    word_hz,
)
from llaso_data.records import REJECT_REASONS
from llaso_data.tasks import LLASO_TASKS, MODALITIES, parse_file_name

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3")
EXPECTED_REJECTS = {
    "malformed_json": 2, "undecodable_text": 2, "not_an_object": 2, "missing_turns": 3,
    "misordered_turns": 3, "bad_field_type": 3, "audio_count_mismatch": 1, "absolute_audio_path": 2,
    "audio_path_escapes_root": 1, "empty_label": 2, "audio_missing": 1, "audio_undecodable": 1,
    "audio_empty": 1,
}
NOT_IN_SYNTH = {
    "audio_not_a_file": "needs a FIFO or device node in the corpus, which copying it would read or refuse "
                        "(tests/test_convert_faults.py makes both)",
    "audio_too_large": "needs a clip over 2 GiB",
    "audio_unreadable": "needs a file the test user cannot read, which root can read anyway",
    "audio_invalid": "needs a float clip holding NaN (tests/test_convert_faults.py makes one)",
    "record_error": "only an unforeseen exception raises it; there is no known input that does",
    "audio_ambiguous": "only audio read from zip parts (--audio-archives) gives it (tests/test_archives.py)",
    "archive_member_unreadable": "only audio read from zip parts gives it (tests/test_archives.py)",
}
"""Rejection reasons the synthetic corpus's faults do not produce, and why."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The default-size corpus with faults, seed 0: (root, summary)."""
    root = tmp_path_factory.mktemp("synth") / "a"
    return root, write_corpus(root, seed=0, faults=True)


def _files(root: Path) -> dict[str, Path]:
    """Every file under ``root`` by relative POSIX path."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _data_files(root: Path) -> list[Path]:
    """The clean JSON/JSONL annotation files (no fault files, no summary)."""
    faulty = {root / rel for rel in FAULTY_FILES}
    return [p for p in sorted(root.rglob("*.json*")) if p not in faulty and p.name != SUMMARY_FILE]


def _records(path: Path) -> list:
    """Records of a clean JSON array or JSONL file (split on '\\n' only)."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]
    return json.loads(path.read_text(encoding="utf-8"))


def _voices(record: dict) -> list[str]:
    """The record's voice paths as a list."""
    voice = record["voice"]
    return [voice] if isinstance(voice, str) else voice


def _mono(path: Path) -> tuple[np.ndarray, int]:
    """Decoded audio downmixed to mono, and its rate (Hz)."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return data.mean(axis=1), rate


def _dominant_hz(wave: np.ndarray, rate: int) -> float:
    """Frequency (Hz) of the strongest FFT bin of a Hann-windowed signal."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1.0 / rate)[int(spectrum.argmax())])


def _task_records(root: Path, rel: str) -> list[tuple[dict, Path]]:
    """(record, first audio file) pairs of one annotation file."""
    return [(r, root / _voices(r)[0].replace("\\", "/")) for r in _records(root / rel)]


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes(corpus, tmp_path):
    root, summary = corpus
    again = tmp_path / "b"
    summary_again = write_corpus(again, seed=0, faults=True)
    first, second = _files(root), _files(again)
    assert first.keys() == second.keys()
    differing = [rel for rel in first if rel != SUMMARY_FILE and first[rel].read_bytes() != second[rel].read_bytes()]
    assert differing == []
    assert {**summary.__dict__, "root": None} == {**summary_again.__dict__, "root": None}
    assert sum(rel.endswith(".mp3") for rel in first) >= 8  # mp3 takes part in the byte check


def test_other_seed_differs(corpus, tmp_path):
    root, _ = corpus
    other = tmp_path / "c"
    write_corpus(other, seed=1, faults=True)
    rel = "LLaSO-Instruct/text_audio/NSynth_pitch_recognition_train.json"
    assert (root / rel).read_bytes() != (other / rel).read_bytes()
    audio_a = {r: p.read_bytes() for r, p in _files(root).items() if r.endswith(AUDIO_SUFFIXES)}
    audio_b = {r: p.read_bytes() for r, p in _files(other).items() if r.endswith(AUDIO_SUFFIXES)}
    assert audio_a != audio_b


def test_stable_rng_is_stable():
    assert stable_rng(0, "x", 1).integers(1 << 30) == stable_rng(0, "x", 1).integers(1 << 30)
    assert stable_rng(0, "x", 1).integers(1 << 30) != stable_rng(1, "x", 1).integers(1 << 30)


# ----------------------------------------------------------------------------- layout and tasks


def test_instruct_covers_all_tasks_and_modalities(corpus):
    root, _ = corpus
    instruct = root / "LLaSO-Instruct"
    text_audio = {parse_file_name(p.name).task for p in (instruct / "text_audio").glob("*.json")}
    assert set(LLASO_TASKS) <= text_audio
    for release in ("LLaSO-Instruct", "LLaSO-Eval"):
        for modality in MODALITIES:
            assert list((root / release / modality).glob("*.json")), (release, modality)
    assert parse_file_name("ASR_stage1_train.json").task == "ALIGN"
    assert (root / "LLaSO-Align/text_audio/ASR_stage1_train.json").exists()
    assert {parse_file_name(p.name).task for p in (root / "LLaSM").iterdir()} == {"CONV"}


def test_every_stem_maps_to_a_known_task(corpus):
    root, _ = corpus
    for spec in STEMS:
        for release, split in (("LLaSO-Instruct", "train"), ("LLaSO-Eval", "test")):
            info = parse_file_name(spec.file_name(split))
            assert info.known and info.split == split, spec.stem
            assert (root / release / spec.folder / spec.file_name(split)).exists()
    assert parse_file_name("ASR_train_stage2.json").task == "ASR"
    assert not parse_file_name(Path(UNKNOWN_STEM_FILE).name).known
    assert all(parse_file_name(Path(rel).name).known for rel in FAULTY_FILES)


def test_eval_is_smaller_subset(corpus):
    root, _ = corpus
    for spec in STEMS:
        train = _records(root / "LLaSO-Instruct" / spec.folder / spec.file_name("train"))
        test = _records(root / "LLaSO-Eval" / spec.folder / spec.file_name("test"))
        assert (len(train), len(test)) == (6, 3)


def test_audio_placeholder_position_per_modality(corpus):
    root, _ = corpus
    checked = Counter()
    for path in _data_files(root):
        modality = path.parent.name
        if not path.parent.parent.name.startswith("LLaSO-"):
            continue
        for record in _records(path):
            human = record["conversations"][0]["value"]
            assert human.count("<audio>") == 1
            assert human.startswith("<audio>") if modality == "audio_text" else human.endswith("<audio>")
            checked[modality] += 1
    assert set(checked) == set(MODALITIES)


def test_llasm_conversations(corpus):
    root, _ = corpus
    en = json.loads((root / "LLaSM/llasm_en_train.json").read_text(encoding="utf-8"))
    zh = _records(root / "LLaSM/llasm_zh_train.jsonl")
    assert (root / "LLaSM/llasm_zh_train.jsonl").read_text(encoding="utf-8").count("\n") == len(zh) == 6
    for record in en + zh:
        turns = record["conversations"]
        assert 4 <= len(turns) <= 6 and len(turns) % 2 == 0
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert [t["value"].count("<audio>") for t in turns[::2]] == [1] * (len(turns) // 2)
        assert len(record["voice"]) == len(turns) // 2
        assert all(v.startswith(("llasm/en\\", "llasm/zh\\")) for v in record["voice"])
    assert any("instruction" in r for r in en) and any("instruction" not in r for r in en)
    assert any(t["value"] != "<audio>" for r in en + zh for t in r["conversations"][::2])
    assert any(re.search(r"[\u4e00-\u9fff]", r["conversations"][1]["value"]) for r in zh)


def test_voice_paths_of_clean_records_exist(corpus):
    root, _ = corpus
    count = 0
    for path in _data_files(root):
        for record in _records(path):
            human = "".join(t["value"] for t in record["conversations"] if t["from"] == "human")
            voices = _voices(record)
            assert human.count("<audio>") == len(voices)
            for voice in voices:
                assert "\\" in voice and not voice.startswith("/")
                assert (root / voice.replace("\\", "/")).is_file(), voice
                count += 1
    assert count > 250
    assert any(v.endswith(".mp3.wav_16k.wav_norm.wav_mono.wav_silence.wav")
               for r in _records(root / "LLaSO-Instruct/text_audio/Synthetic_Audio_Classification_train.json")
               for v in r["voice"])


def test_extensions_follow_the_source(corpus):
    root, _ = corpus
    for path in _data_files(root):
        for record in _records(path):
            for voice in _voices(record):
                suffix = Path(voice.replace("\\", "/")).suffix
                if voice.startswith("Common-voice/"):
                    assert suffix == ".mp3"
                elif voice.startswith("vctk/wav48_silence_trimmed/"):
                    assert suffix == ".flac"
                else:
                    assert suffix == ".wav"


def test_provenance_fields(corpus):
    root, _ = corpus
    ta = "LLaSO-Instruct/text_audio/"
    asr = _records(root / f"{ta}ASR_train_stage2.json")
    assert list(asr[0])[:3] == ["index", "speaker_id", "book_id"] and isinstance(asr[0]["index"], int)
    assert any("clip_id" in r for r in asr) and any(r["voice"][0].startswith("audio_wav/") for r in asr)
    meld = _records(root / f"{ta}meld_ER_classification_train.json")
    assert all("meta-data" in r and "metadata" not in r and "emo" not in r["meta-data"] for r in meld)
    utts = "".join(r["meta-data"]["utt"] for r in meld)
    assert "\u0085" in utts and "\u0092" in utts
    assert "\u0085" in (root / "LLaSM/llasm_zh_train.jsonl").read_text(encoding="utf-8")
    pron = _records(root / f"{ta}pronunciation_scoring_word_level_train.json")
    assert all(isinstance(r["metadata"], list) and {"phones", "phones-accuracy", "total"} <= r["metadata"][0].keys()
               for r in pron)
    for stem in ("Synthetic_Audio_Classification", "speechcommand_recognition"):
        assert all(r["metadata"] == [] for r in _records(root / f"{ta}{stem}_train.json"))
    for stem in ("NSynth_pitch_recognition", "CREMAD_ER_classification"):
        assert all(set(r) == {"voice", "conversations"} for r in _records(root / f"{ta}{stem}_train.json"))
    cv = _records(root / f"{ta}common-voice_gender_classification_train.json")
    assert all(isinstance(r["metadata"], dict) and "gender" not in r["metadata"] for r in cv)
    vctk = _records(root / f"{ta}vctk_accent_classification_train.json")
    assert all(r["metadata"]["accents"] + "." == r["conversations"][1]["value"] for r in vctk)
    qa = _records(root / f"{ta}dolly_input_1_train.json")
    assert all(isinstance(r["id"], str) and r["voice"][0].split("\\")[1].startswith(r["id"] + "_") for r in qa)


# ----------------------------------------------------------------------------- audio


def test_every_format_rate_channel_combination(corpus):
    root, _ = corpus
    seen = set()
    for rel, path in _files(root).items():
        if rel.endswith(AUDIO_SUFFIXES) and "corrupt" not in rel:
            info = sf.info(path)
            seen.add((info.format, info.samplerate, info.channels))
    wanted = {(fmt, rate, ch) for fmt in ("WAV", "FLAC", "MP3") for rate in RATES for ch in CHANNELS}
    assert wanted <= seen


def test_durations(corpus):
    root, summary = corpus
    durations = [sf.info(p).duration for rel, p in _files(root).items()
                 if rel.endswith(AUDIO_SUFFIXES) and "corrupt" not in rel and "empty" not in rel]
    assert sum(d > 30 for d in durations) >= 2
    assert max(durations) <= 40.5
    assert min(durations) >= 1.0
    assert np.mean(np.array(durations) <= 5.0) > 0.9
    assert summary.audio_seconds == pytest.approx(sum(durations), rel=0.01)


def test_pitch_label_is_audible(corpus):
    root, _ = corpus
    for record, audio in _task_records(root, "LLaSO-Instruct/text_audio/NSynth_pitch_recognition_train.json"):
        hz = _dominant_hz(*_mono(audio))
        assert round(69 + 12 * np.log2(hz / 440.0)) == int(record["conversations"][1]["value"])


def test_class_label_sets_the_tone(corpus):
    root, _ = corpus
    labels = ("Neutrality.", "Joy.", "Surprise.", "Sadness.", "Anger.", "Fear.", "Disgust.")
    by_label: dict[str, set[int]] = {}
    for rel in ("LLaSO-Instruct/text_audio/meld_ER_classification_train.json",
                "LLaSO-Eval/text_audio/meld_ER_classification_test.json"):
        for record, audio in _task_records(root, rel):
            label = record["conversations"][1]["value"]
            hz = _dominant_hz(*_mono(audio))
            assert hz == pytest.approx(class_hz(labels.index(label)), rel=0.02)
            by_label.setdefault(label, set()).add(round(hz))
    assert len(by_label) >= 2
    tones = [min(v) for v in by_label.values()]
    assert len(set(tones)) == len(tones)


def test_mp3_and_flac_classes_are_audible(corpus):
    root, _ = corpus
    for rel, labels in (("common-voice_gender_classification", ("Male", "Female")),
                        ("vctk_gender_classification", ("Male.", "Female."))):
        for record, audio in _task_records(root, f"LLaSO-Instruct/text_audio/{rel}_train.json"):
            k = labels.index(record["conversations"][1]["value"])
            assert _dominant_hz(*_mono(audio)) == pytest.approx(class_hz(k), rel=0.02)


def test_velocity_sets_the_level(corpus):
    root, _ = corpus
    pairs = [(int(r["conversations"][1]["value"]), float(np.sqrt(np.mean(_mono(a)[0] ** 2))))
             for r, a in _task_records(root, "LLaSO-Instruct/text_audio/velocity_classification_train.json")]
    ratios = [rms / velocity for velocity, rms in pairs]
    assert max(ratios) / min(ratios) < 1.15


@pytest.mark.skipif(espeak_available(), reason="checks the tone path; espeak-ng speaks instead")
def test_transcript_words_are_audible(corpus):
    root, _ = corpus
    for record, audio in _task_records(root, "LLaSO-Instruct/text_audio/ASR_train_stage2.json"):
        wave, rate = _mono(audio)
        first = record["conversations"][1]["value"].split()[0].lower()
        hz = _dominant_hz(wave[: round(WORD_SECONDS * rate)], rate)
        assert hz == pytest.approx(word_hz(first), rel=0.02)


def test_vocabulary_words_have_distinct_tones():
    assert len({word_hz(w) for w in _VOCAB}) == len(_VOCAB)
    assert len({word_hz(w) for w in _COMMANDS}) == len(_COMMANDS)


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng not on PATH")
def test_espeak_path_speaks():
    for lang, text in (("en", "hello world"), ("zh", "请介绍一下北京")):
        wave = render(Speech(text, lang, min_seconds=LONG_SECONDS[0]), 22050, stable_rng(0, lang))
        assert len(wave) >= LONG_SECONDS[0] * 22050 and np.abs(wave).max() > 0.05


# ----------------------------------------------------------------------------- faults and summary


def _split_lines(data: bytes) -> tuple[list[object], Counter]:
    """A minimal per-line JSONL reader with newline repair: (records, rejects by reason)."""
    lines, records, rejects, i = data.split(b"\n"), [], Counter(), 0
    while i < len(lines):
        line, i = lines[i], i + 1
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            rejects["undecodable_text"] += 1
            continue
        try:
            records.append(json.loads(text))
        except json.JSONDecodeError:
            joined = text + "\\n" + lines[i].decode("utf-8") if i < len(lines) else text
            try:
                records.append(json.loads(joined))
                i += 1
            except json.JSONDecodeError:
                rejects["malformed_json"] += 1
    return records, rejects


def _reasons(record: object, root: Path) -> list[str]:
    """Every reject reason a record triggers, judged independently where the structure allows."""
    if not isinstance(record, dict):
        return ["not_an_object"]
    found = []
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        found.append("undecodable_text")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns or all(t.get("from") != "gpt" for t in turns):
        return found + ["missing_turns"]
    roles = [t.get("from") for t in turns]
    if roles != ["human", "gpt"] * (len(roles) // 2) or len(roles) % 2:
        found.append("misordered_turns")
    voice = record.get("voice")
    voices = [voice] if isinstance(voice, str) else voice
    if not isinstance(voices, list) or not all(isinstance(v, str) for v in voices) \
            or not all(isinstance(t.get("value"), str) for t in turns):
        return found + ["bad_field_type"]
    if sum(t["value"].count("<audio>") for t in turns if t["from"] == "human") != len(voices):
        found.append("audio_count_mismatch")
    if any(not t["value"].strip() for t in turns if t["from"] == "gpt"):
        found.append("empty_label")
    for v in voices:
        path = v.replace("\\", "/")
        if path.startswith("/") or re.match(r"^[A-Za-z]:/", path):
            found.append("absolute_audio_path")
        elif ".." in path.split("/"):
            found.append("audio_path_escapes_root")
        elif not (root / path).is_file():
            found.append("audio_missing")
        else:
            try:
                if sf.info(root / path).frames == 0:
                    found.append("audio_empty")
            except sf.LibsndfileError:
                found.append("audio_undecodable")
    return found


def test_each_faulty_record_triggers_exactly_one_reason(corpus):
    root, summary = corpus
    total = Counter()
    valid = 0
    for rel in FAULTY_FILES:
        data = (root / rel).read_bytes()
        if rel.endswith(".jsonl"):
            records, rejects = _split_lines(data)
        else:
            try:
                records, rejects = json.loads(data.decode("utf-8")), Counter()
            except json.JSONDecodeError:  # the truncated array: take the complete records
                records, rejects = _complete_prefix(data.decode("utf-8")), Counter(malformed_json=1)
        for record in records:
            reasons = _reasons(record, root)
            assert len(reasons) <= 1, (rel, record, reasons)
            rejects.update(reasons)
            valid += not reasons
        total += rejects
    assert dict(total) == EXPECTED_REJECTS == summary.expected_rejects
    assert set(EXPECTED_REJECTS) == set(REJECT_REASONS) - set(NOT_IN_SYNTH)
    assert set(NOT_IN_SYNTH) <= set(REJECT_REASONS)
    assert valid == 3 + 1 + 2 + 4


def _complete_prefix(text: str) -> list:
    """The complete elements at the start of a truncated JSON array."""
    decoder, out, pos = json.JSONDecoder(), [], text.index("[") + 1
    while True:
        pos = len(text) - len(text[pos:].lstrip(" \n,"))
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return out
        out.append(item)


def test_clean_records_trigger_no_reason(corpus):
    root, _ = corpus
    for path in _data_files(root):
        for record in _records(path):
            assert _reasons(record, root) == [], (path.name, record)


def test_jsonl_faults_are_line_local(corpus):
    root, _ = corpus
    data = (root / "LLaSM/faulty_llasm_zh_train.jsonl").read_bytes()
    assert b"\x92" in data
    records, rejects = _split_lines(data)
    assert len(records) == 4 and rejects == Counter(malformed_json=1, undecodable_text=1)
    assert any("\n" in t["value"] for r in records for t in r["conversations"])
    surrogate = json.loads((root / FAULTY_FILES[1]).read_text(encoding="utf-8"))
    assert "\udc80" in surrogate[-1]["conversations"][0]["value"]


def test_summary_counts(corpus):
    root, summary = corpus
    assert summary.root == root
    assert summary.records == summary.valid + sum(summary.expected_rejects.values())
    assert summary.audio_files == sum(rel.endswith(AUDIO_SUFFIXES) for rel in _files(root))
    stored = json.loads((root / SUMMARY_FILE).read_text(encoding="utf-8"))
    assert stored == {**summary.__dict__, "root": str(root)}
    clean_valid = sum(len(_records(p)) for p in _data_files(root))
    assert summary.valid == clean_valid + 3 + 1 + 2 + 4


def test_clean_corpus_has_no_rejects(tmp_path):
    summary = write_corpus(tmp_path / "small", seed=3, samples_per_task=1)
    assert summary.expected_rejects == {}
    assert summary.records == summary.valid == 1 + 2 * len(STEMS) + 2
    assert not any((tmp_path / "small" / rel).exists() for rel in FAULTY_FILES + (UNKNOWN_STEM_FILE,))


def test_rejects_bad_arguments(corpus, tmp_path):
    with pytest.raises(ValueError):
        write_corpus(tmp_path, samples_per_task=0)
    with pytest.raises(FileExistsError):
        write_corpus(corpus[0])
