"""Deterministic synthetic corpus in the real LLaSO / LLaSM on-disk layout.

``write_corpus(out)`` writes, under ``out``:

* ``LLaSO-Align/text_audio/ASR_stage1_train.json`` (task ALIGN);
* ``LLaSO-Instruct/<modality>/<stem>_train.json`` for all 20 LLaSO tasks (real stem names,
  real record shapes and provenance fields, see ``/work/shared/spec/LLASO_DATA.md``);
* ``LLaSO-Eval/<modality>/<stem>_test.json``: the same stems, ``samples_per_task // 2`` each;
* ``LLaSM/llasm_en_train.json`` (JSON array) and ``LLaSM/llasm_zh_train.jsonl`` (JSONL):
  multi-turn spoken conversations, one ``<audio>`` per human turn;
* every clip at its voice path with ``\\`` turned into ``/``;
* ``synth_summary.json``: the :class:`SynthSummary`, JSON-encoded;
* with ``faults=True``, extra files (:data:`FAULTY_FILES`) whose bad records each trigger
  exactly one of :data:`REJECT_REASONS`, plus a file with an unknown stem
  (:data:`UNKNOWN_STEM_FILE`) whose records are valid.

Labels depend on the audio (see :mod:`llaso_synth.audio`): a class index sets the
fundamental of a tone, a MIDI label the pitch, a velocity label the amplitude, and
transcripts/questions are spoken. Same ``seed`` -> byte-identical files.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from llaso_data.records import REJECT_REASONS
from llaso_synth.audio import (
    FormatPlanner,
    Sound,
    Speech,
    Tone,
    class_hz,
    midi_hz,
    render,
    write_clip,
    write_empty_wav,
    write_garbage,
)

FAULTY_FILES = (
    "LLaSO-Instruct/text_audio/faulty_meld_ER_classification_train.json",
    "LLaSO-Instruct/text_audio/faulty_text_meld_ER_classification_train.json",
    "LLaSO-Instruct/text_audio/truncated_CREMAD_ER_classification_train.json",
    "LLaSM/faulty_llasm_zh_train.jsonl",
)
"""Files written only with ``faults=True`` that hold rejected records (besides valid ones)."""
UNKNOWN_STEM_FILE = "LLaSO-Instruct/text_audio/mystery_task_train.json"
"""Written with ``faults=True``: a stem no rule maps to a task; its records are valid."""
SUMMARY_FILE = "synth_summary.json"
LONG_SECONDS = (32.0, 36.0)
"""Target lengths (s) of the long clips: ALIGN record 0 and Instruct ASR record 0."""
_MAX_SAMPLES = 4999


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_corpus` wrote.

    ``records`` counts what a reader sees in every JSON/JSONL file, faulty ones included:
    a truncated array counts its complete records plus 1 for the truncation, a JSONL line
    split by a raw newline counts once. ``records == valid + sum(expected_rejects.values())``.
    ``audio_files`` counts every file written as audio (the undecodable and empty ones
    included); ``audio_seconds`` is the decodable audio (s).
    """

    root: Path
    records: int
    valid: int
    expected_rejects: dict[str, int]
    audio_files: int
    audio_seconds: float


def write_corpus(out: Path, seed: int = 0, samples_per_task: int = 6, faults: bool = False) -> SynthSummary:
    """Write the synthetic corpus under ``out`` and return (and store) its summary.

    ``samples_per_task`` records per Instruct stem, per LLaSM file and for ALIGN; Eval gets
    ``max(1, samples_per_task // 2)`` per stem. ``out`` must be absent or empty, so that no
    stale file from an earlier run is mistaken for part of this corpus.
    """
    if not 1 <= samples_per_task <= _MAX_SAMPLES:
        raise ValueError(f"samples_per_task must be in 1..{_MAX_SAMPLES}, got {samples_per_task}")
    if Path(out).exists() and any(Path(out).iterdir()):
        raise FileExistsError(f"output directory is not empty: {out}")
    writer = _Writer(Path(out), seed)
    _write_align(writer, samples_per_task)
    _write_llaso(writer, "LLaSO-Instruct", "train", samples_per_task)
    _write_llaso(writer, "LLaSO-Eval", "test", max(1, samples_per_task // 2))
    _write_llasm(writer, samples_per_task)
    if faults:
        _write_faults(writer)
    summary = writer.summary()
    payload = {**asdict(summary), "root": str(summary.root)}
    (writer.out / SUMMARY_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return summary


# --------------------------------------------------------------------------------------
# Plumbing: randomness, record context, the writer
# --------------------------------------------------------------------------------------


def stable_rng(seed: int, *key: object) -> np.random.Generator:
    """A generator seeded from ``seed`` and ``key`` through SHA-256 (stable across runs)."""
    text = "\x1f".join(str(part) for part in (seed, *key))
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:16], "big"))


@dataclass(frozen=True)
class _Ctx:
    """One record being built: its generator, split ("train"/"test"), position and corpus-unique id."""

    rng: np.random.Generator
    split: str
    ordinal: int
    uid: int

    def pick(self, options):
        """One element of ``options``."""
        return options[int(self.rng.integers(len(options)))]

    def between(self, low: int, high: int) -> int:
        """An integer in ``low..high`` inclusive."""
        return int(self.rng.integers(low, high + 1))

    def short_seconds(self) -> float:
        """A typical clip length (s): 1 to 5, mostly under 2.5."""
        return round(1.0 + 4.0 * float(self.rng.beta(1.3, 3.0)), 3)

    def by_split(self, train: str, test: str) -> str:
        """``train`` or ``test`` depending on the split."""
        return train if self.split == "train" else test


@dataclass(frozen=True)
class _Clip:
    """A clip to write: voice path (Windows separator), content, native (rate Hz, channels).

    ``fixed`` clips keep their native setting instead of taking a coverage slot.
    """

    voice: str
    sound: Sound
    native: tuple[int, int] = (16000, 1)
    fixed: bool = False


@dataclass(frozen=True)
class _Built:
    """A record and the clips it references."""

    record: dict
    clips: tuple[_Clip, ...]


class _Writer:
    """Writes files under ``out`` and keeps the counts for the summary."""

    def __init__(self, out: Path, seed: int) -> None:
        self.out = out
        self.seed = seed
        self.planner = FormatPlanner()
        self.records = 0
        self.valid = 0
        self.rejects: Counter[str] = Counter()
        self.audio_files = 0
        self.audio_seconds = 0.0
        self._stems: dict[str, int] = {}
        self._written: set[str] = set()

    def build(self, builder: Callable[[_Ctx], _Built], stem: str, split: str, n: int) -> list[_Built]:
        """Records ``0..n-1`` of ``stem``, each with its own seeded generator."""
        number = self._stems.setdefault(stem, len(self._stems) + 1)
        base = number * 10000 + (5000 if split == "test" else 0)
        return [builder(_Ctx(stable_rng(self.seed, stem, split, i), split, i, base + i)) for i in range(n)]

    def clips(self, built: list[_Built]) -> None:
        """Write every clip referenced by ``built``."""
        for item in built:
            for clip in item.clips:
                self.clip(clip)

    def clip(self, clip: _Clip) -> None:
        """Render and write one clip at its normalised voice path."""
        path = self.audio_path(clip.voice)
        rate, channels = clip.native if clip.fixed else self.planner.choose(path.suffix, clip.native)
        wave = render(clip.sound, rate, stable_rng(self.seed, "audio", clip.voice))
        self.audio_seconds += write_clip(path, wave, rate, channels)
        self.audio_files += 1

    def garbage(self, voice: str) -> None:
        """Write random bytes at ``voice`` (an undecodable audio file)."""
        write_garbage(self.audio_path(voice), stable_rng(self.seed, "garbage", voice))
        self.audio_files += 1

    def empty(self, voice: str) -> None:
        """Write a zero-frame wav at ``voice``."""
        write_empty_wav(self.audio_path(voice))
        self.audio_files += 1

    def audio_path(self, voice: str) -> Path:
        """Where ``voice`` lives under ``out``; each path may be claimed once."""
        normal = voice.replace("\\", "/")
        if normal in self._written:
            raise ValueError(f"synthetic voice path used twice: {voice}")
        self._written.add(normal)
        return self.out / normal

    def json_array(self, rel: str, records: list) -> None:
        """Write ``records`` as a JSON array (indent 2, UTF-8, like the real files)."""
        self.text(rel, json.dumps(records, indent=2, ensure_ascii=False) + "\n")

    def text(self, rel: str, text: str) -> None:
        """Write ``text`` (UTF-8) at ``rel``."""
        self.raw(rel, text.encode("utf-8"))

    def raw(self, rel: str, data: bytes) -> None:
        """Write ``data`` at ``rel``."""
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def count(self, valid: int = 0, **rejects: int) -> None:
        """Account for ``valid`` good records and rejected ones by reason."""
        self.valid += valid
        self.records += valid + sum(rejects.values())
        self.rejects.update({reason: n for reason, n in rejects.items() if n})

    def summary(self) -> SynthSummary:
        """The summary of everything written so far."""
        return SynthSummary(
            root=self.out,
            records=self.records,
            valid=self.valid,
            expected_rejects={r: self.rejects[r] for r in REJECT_REASONS if self.rejects[r]},
            audio_files=self.audio_files,
            audio_seconds=round(self.audio_seconds, 3),
        )


def _conv(human: str, gpt: str) -> list[dict]:
    """A single-turn LLaVA-style conversation."""
    return [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]


# --------------------------------------------------------------------------------------
# Language material
# --------------------------------------------------------------------------------------

# word -> (IPA, ARPAbet). Chosen so that no two words share a word_hz bin (tested).
_VOCAB: dict[str, tuple[str, str]] = {
    "a": ("ə", "AH0"), "and": ("ænd", "AE1 N D"), "big": ("bɪɡ", "B IH1 G"),
    "bird": ("bɜːd", "B ER1 D"), "blue": ("bluː", "B L UW1"), "bright": ("bɹaɪt", "B R AY1 T"),
    "brother": ("bɹʌðɚ", "B R AH1 DH ER0"), "car": ("kɑːɹ", "K AA1 R"), "cat": ("kæt", "K AE1 T"),
    "chair": ("tʃɛɹ", "CH EH1 R"), "children": ("tʃɪldɹən", "CH IH1 L D R AH0 N"),
    "china": ("tʃaɪnə", "CH AY1 N AH0"), "dog": ("dɔɡ", "D AO1 G"), "door": ("dɔːɹ", "D AO1 R"),
    "elephant": ("ɛləfənt", "EH1 L AH0 F AH0 N T"), "father": ("fɑːðɚ", "F AA1 DH ER0"),
    "going": ("ɡoʊɪŋ", "G OW1 IH0 NG"), "green": ("ɡɹiːn", "G R IY1 N"), "house": ("haʊs", "HH AW1 S"),
    "is": ("ɪz", "IH1 Z"), "kate": ("keɪt", "K EY1 T"), "king": ("kɪŋ", "K IH1 NG"),
    "man": ("mæn", "M AE1 N"), "mark": ("mɑːɹk", "M AA1 R K"), "moon": ("muːn", "M UW1 N"),
    "near": ("nɪɹ", "N IH1 R"), "old": ("oʊld", "OW1 L D"), "played": ("pleɪd", "P L EY1 D"),
    "quickly": ("kwɪkli", "K W IH1 K L IY0"), "red": ("ɹɛd", "R EH1 D"), "river": ("ɹɪvɚ", "R IH1 V ER0"),
    "sat": ("sæt", "S AE1 T"), "see": ("siː", "S IY1"), "sheep": ("ʃiːp", "SH IY1 P"),
    "ship": ("ʃɪp", "SH IH1 P"), "slowly": ("sloʊli", "S L OW1 L IY0"), "star": ("stɑːɹ", "S T AA1 R"),
    "stone": ("stoʊn", "S T OW1 N"), "table": ("teɪbəl", "T EY1 B AH0 L"), "the": ("ðə", "DH AH0"),
    "to": ("tuː", "T UW1"), "under": ("ʌndɚ", "AH1 N D ER0"), "walked": ("wɔkt", "W AO1 K T"),
    "with": ("wɪð", "W IH1 DH"),
}
_ADJECTIVES = ("old", "red", "blue", "big", "green", "bright")
_NOUNS = ("cat", "dog", "man", "king", "bird", "sheep", "house", "river", "stone", "chair",
          "door", "car", "table", "ship", "star", "moon", "elephant")
_SUBJECTS = ("kate", "mark", "the children", "the father", "the king", "the old man")
_VERBS = ("walked", "sat", "played", "is going")
_ADVERBS = ("quickly", "slowly")
_PREPOSITIONS = ("near", "under", "with", "to")


def _sentence(ctx: _Ctx) -> str:
    """A lower-case sentence over the vocabulary, 6 to 9 words."""
    adverb = f" {ctx.pick(_ADVERBS)}" if ctx.rng.random() < 0.5 else ""
    subject, verb, preposition = ctx.pick(_SUBJECTS), ctx.pick(_VERBS), ctx.pick(_PREPOSITIONS)
    return f"{subject} {verb}{adverb} {preposition} the {ctx.pick(_ADJECTIVES)} {ctx.pick(_NOUNS)}"


def _transcript(ctx: _Ctx, seconds: float | None = None) -> str:
    """A lower-case transcript: 1 or 2 sentences, or enough 'and'-joined ones to last ``seconds`` (s)."""
    if seconds is None:
        return " and ".join(_sentence(ctx) for _ in range(ctx.between(1, 2)))
    parts: list[str] = []
    while len(" and ".join(parts).split()) * 0.3 < seconds:
        parts.append(_sentence(ctx))
    return " and ".join(parts)


def _cap(text: str) -> str:
    """``text`` with its first letter upper-cased."""
    return text[:1].upper() + text[1:]


def _ipa(text: str) -> str:
    """Space-separated IPA of a vocabulary transcript."""
    return " ".join(_VOCAB[w][0] for w in text.split())


def _qa_item(ctx: _Ctx) -> tuple[str, str, str]:
    """An English (instruction, input, answer) triple whose answer follows from the input."""
    kind = ctx.between(0, 3)
    if kind == 0:
        a, b = ctx.between(2, 60), ctx.between(2, 60)
        return "Add the two numbers.", f"{a} and {b}", f"{a} plus {b} equals {a + b}."
    if kind == 1:
        country, capital = ctx.pick((("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"),
                                     ("Peru", "Lima"), ("Norway", "Oslo")))
        return "Name the capital of this country.", country, f"The capital of {country} is {capital}."
    sentence = _sentence(ctx)
    if kind == 2:
        return "Count the words in this sentence.", sentence, f"The sentence has {len(sentence.split())} words."
    return "Say these words in reverse order.", sentence, _cap(" ".join(reversed(sentence.split()))) + "."


def _qa_item_zh(ctx: _Ctx) -> tuple[str, str]:
    """A Chinese (question, answer) pair whose answer follows from the question."""
    kind = ctx.between(0, 2)
    if kind == 0:
        a, b = ctx.between(2, 60), ctx.between(2, 60)
        return f"{a}加{b}等于多少？", f"{a}加{b}等于{a + b}。"
    if kind == 1:
        city, country = ctx.pick((("北京", "中国"), ("上海", "中国"), ("东京", "日本"), ("巴黎", "法国")))
        return f"请介绍一下{city}", f"{city}是{country}的一座城市。"
    word, english = ctx.pick((("猫", "cat"), ("狗", "dog"), ("书", "book"), ("月亮", "moon")))
    return f"{word}用英语怎么说？", f"{word}的英文是{english}。"


# --------------------------------------------------------------------------------------
# Speech tasks: ALIGN, ASR, PR, pronunciation scoring, slurp, AQA
# --------------------------------------------------------------------------------------

_ASR_PROMPTS = (
    "Transcribe the spoken words from the following audio clip. Ensure the text matches exactly what was said, and return no other information.<audio>",
    "Please listen to the audio and transcribe what is being said. Ensure that the text matches the audio precisely, and return only the transcript.<audio>",
    "Convert the speech in this recording into text. Output the transcript only.<audio>",
)


def _mls(ctx: _Ctx) -> tuple[str, str, str]:
    """(speaker_id, book_id, voice path) of an MLS-style clip."""
    spk, book = str(10000 + ctx.uid % 997), str(10000 + ctx.uid // 997)
    return spk, book, f"mls_english_opus/test_data_16000\\{spk}_{book}_{ctx.uid:06d}.wav"


def _asr_source(ctx: _Ctx, kind: int, text: str) -> tuple[dict, str, str, tuple[int, int]]:
    """(provenance before voice, voice path, label, native setting) for real ASR source ``kind`` (0-5)."""
    uid = ctx.uid
    if kind == 0:
        spk, book, voice = _mls(ctx)
        return {"index": ctx.ordinal, "speaker_id": spk, "book_id": book}, voice, _cap(text), (16000, 1)
    if kind in (1, 2):
        root = "gigaspeech/audio_wav/podcast" if kind == 1 else "audio_wav/youtube"
        audio_id = f"{'POD' if kind == 1 else 'YOU'}{uid:010d}"
        return ({"speaker_id": audio_id, "clip_id": f"{audio_id}_S{ctx.ordinal:07d}"},
                f"{root}/P{uid % 1000:04d}\\{audio_id}_S{ctx.ordinal:07d}.wav", _cap(text) + ".", (16000, 1))
    if kind == 3:
        spk, chapter = str(1000 + uid % 997), str(uid)
        return ({"speaker_id": spk, "clip_id": chapter},
                f"Librispeech/Test\\{spk}-{chapter}-{ctx.ordinal:04d}.wav", _cap(text), (16000, 1))
    if kind == 4:
        spk, clip = f"p{225 + uid // 1000}", f"p{225 + uid // 1000}_{uid % 1000:03d}.wav"
        return ({"speaker_id": spk, "clip_id": clip}, f"VCTK-Corpus/wav48/{spk}\\{clip}", _cap(text) + ".", (48000, 1))
    utt = f"LJ{uid // 1000:03d}-{uid % 1000:04d}"
    return {"speaker_id": utt}, f"LJSpeech/wavs\\{utt}.wav", _cap(text) + ".", (22050, 1)


def _asr(ctx: _Ctx, long_seconds: float | None, mls_only: bool = False) -> _Built:
    """An ASR record from one of 6 sources in turn (or MLS only, as in LLaSO-Align).

    With ``long_seconds`` (s), record 0 is an MLS clip at least that long (16 kHz mono).
    """
    long = long_seconds is not None and ctx.ordinal == 0
    text = _transcript(ctx, long_seconds if long else None)
    extra, voice, label, native = _asr_source(ctx, 0 if mls_only else ctx.ordinal % 6, text)
    record = {**extra, "voice": [voice], "conversations": _conv(ctx.pick(_ASR_PROMPTS), label)}
    speech = Speech(text, min_seconds=long_seconds if long else 0.0)
    return _Built(record, (_Clip(voice, speech, (16000, 1) if long else native, fixed=long),))


def _phoneme(ctx: _Ctx) -> _Built:
    """Phoneme recognition on MLS audio; the label is the IPA of the spoken words."""
    text = _transcript(ctx)
    voice = _mls(ctx)[2]
    prompt = ctx.pick((
        "Recognize the phonemes in this audio and output them in IPA.<audio>",
        "Transcribe the following speech into a sequence of IPA phonemes. Return only the phonemes.<audio>",
        "Listen to the audio clip and write its phonetic transcription in IPA.<audio>",
    ))
    return _Built({"voice": [voice], "conversations": _conv(prompt, _ipa(text))}, (_Clip(voice, Speech(text)),))


def _scored_words(ctx: _Ctx) -> tuple[list[str], list[dict]]:
    """A short vocabulary sentence and per-word pronunciation scores (real metadata shape)."""
    words = _sentence(ctx).split()[: ctx.between(3, 6)]
    meta = []
    for word in words:
        phones = _VOCAB[word][1].split()
        accuracy = ctx.between(5, 10)
        meta.append({
            "accuracy": accuracy, "phones": phones,
            "phones-accuracy": [float(ctx.pick((1.4, 1.8, 2.0))) for _ in phones],
            "stress": ctx.pick((10, 10, 5)), "text": word.upper(), "total": accuracy, "mispronunciations": [],
        })
    return words, meta


def _pron_word(ctx: _Ctx) -> _Built:
    """Pronunciation scoring, word level: each word's tone gain is its accuracy / 10."""
    words, meta = _scored_words(ctx)
    voice = f"pronunciation_scoring/data\\{ctx.uid:09d}_{ctx.ordinal % 2}.wav"
    details = " ".join(f'For "{m["text"].lower()}", accuracy is {m["accuracy"]}, stress is {m["stress"]}, '
                       f'and total score is {m["total"]}.' for m in meta)
    prompt = ctx.pick((
        "Listen to the audio, transcribe it, and then for each word, rate accuracy, stress, and provide a total score (1-10), all as integers.<audio>",
        "Transcribe the speech in this audio, and then for each word, provide the accuracy, stress, and total score, all as integers from 1 to 10.<audio>",
    ))
    speech = Speech(" ".join(words), gains=tuple(m["accuracy"] / 10 for m in meta))
    record = {"voice": [voice], "metadata": meta,
              "conversations": _conv(prompt, f"{_cap(' '.join(words))}. {details}")}
    return _Built(record, (_Clip(voice, speech),))


def _pron_sentence(ctx: _Ctx) -> _Built:
    """Pronunciation scoring, sentence level: the whole sentence's gain is accuracy / 10."""
    words, meta = _scored_words(ctx)
    accuracy, fluency, prosodic = ctx.between(5, 10), ctx.between(5, 10), ctx.between(5, 10)
    total = round((accuracy + fluency + prosodic) / 3)
    voice = f"pronunciation_scoring/data\\{ctx.uid:09d}_{ctx.ordinal % 2}.wav"
    prompt = ctx.pick((
        "Transcribe this audio, then rate the whole sentence for accuracy, fluency, prosody and a total score, each an integer from 0 to 10.<audio>",
        "Listen to the speaker, write down the sentence, and score its accuracy, fluency, prosodic quality and total (integers, 0-10).<audio>",
    ))
    label = (f"{_cap(' '.join(words))}. Accuracy: {accuracy}, fluency: {fluency}, "
             f"prosodic: {prosodic}, total: {total}.")
    speech = Speech(" ".join(words), gains=(accuracy / 10,) * len(words))
    return _Built({"voice": [voice], "metadata": meta, "conversations": _conv(prompt, label)}, (_Clip(voice, speech),))


# (intent label, template); slots in braces are filled from _SLOT_VALUES.
_INTENTS = (
    ("Calendar set", "remind me about the {event_name} on {date}"),
    ("Alarm set", "wake me up at seven {date}"),
    ("Weather query", "what is the weather in {place_name} {date}"),
    ("Play music", "play some {music_genre} music"),
    ("Email sendemail", "send an email to {person}"),
    ("Iot hue lightoff", "turn off the lights in the {house_place}"),
)
_SLOT_VALUES = {
    "event_name": ("meeting", "party", "dentist", "lunch"), "date": ("monday", "tuesday", "friday", "tomorrow"),
    "place_name": ("london", "paris", "boston"), "music_genre": ("jazz", "rock", "classical"),
    "person": ("john", "mona", "sarah"), "house_place": ("kitchen", "bedroom"),
}


def _slurp_utterance(ctx: _Ctx) -> tuple[str, str, list[tuple[str, str]]]:
    """(intent label, spoken sentence, [(slot, value)]) for a SLURP-like command."""
    intent, template = ctx.pick(_INTENTS)
    slots = [(name, ctx.pick(values)) for name, values in _SLOT_VALUES.items() if "{" + name + "}" in template]
    return intent, template.format(**dict(slots)), slots


def _slurp(ctx: _Ctx, entities: bool) -> _Built:
    """SLURP intent prediction (``entities`` False) or entity extraction (True); audio speaks the command."""
    intent, sentence, slots = _slurp_utterance(ctx)
    voice = f"slurp/data\\audio-{1490000000 + ctx.uid}-headset.wav"
    if entities:
        prompt = ctx.pick((
            "Extract the intent and entities from this spoken command, in the form: intent [slot : value].<audio>",
            "Listen to the request and list its action and named entities as [type : value] pairs.<audio>",
        ))
        label = " ".join([intent.lower()] + [f"[{name} : {value}]" for name, value in slots])
    else:
        prompt = ctx.pick((
            "What does the speaker want to do? Answer with the intent label only.<audio>",
            "Identify the intent of this spoken command. Return the intent only.<audio>",
            "Classify the user's intent in the following audio.<audio>",
        ))
        label = intent
    meta = {"wer": 0.0, "ent_wer": 0.0, "usrid": f"MO-{ctx.uid % 433:03d}", "gender": ctx.pick(("male", "female")),
            "native_language": "english", "sentence": sentence}
    record = {"voice": [voice], "conversations": _conv(prompt, label), "metadata": meta}
    return _Built(record, (_Clip(voice, Speech(sentence)),))


_ACCENTS = ("EN-US", "EN-BR", "EN-AU", "EN-Default")
_END_WRAPPERS = (
    "Listen to the audio and respond accordingly.<audio>",
    "In this conversation, the speaker is giving you a directive. Listen and respond appropriately.<audio>",
    "After hearing the audio, provide your answer to the given task.<audio>",
    "Make sure to interpret the speaker's request correctly and reply accordingly.<audio>",
)


def _aqa(ctx: _Ctx, folder: str, mode: str) -> _Built:
    """Audio QA. ``mode``: "input_1" (text instruction, spoken input), "instruction_0"
    (spoken instruction, then the text input) or "end" (wrapper text, whole query spoken)."""
    instruction, given, answer = _qa_item(ctx)
    qid = str(ctx.uid)
    voice = f"{folder}\\{qid}_{ctx.pick(_ACCENTS)}_{ctx.pick((0.6, 0.8, 1.0, 1.2))}_{ctx.between(1, 8)}.wav"
    if mode == "input_1":
        human, spoken = f"{instruction}<audio>", given
    elif mode == "instruction_0":
        human, spoken = f"<audio>{given}", instruction
    else:
        human, spoken = ctx.pick(_END_WRAPPERS), f"{instruction} {given}"
    record = {"id": qid, "conversations": _conv(human, answer), "voice": [voice]}
    return _Built(record, (_Clip(voice, Speech(spoken)),))


# --------------------------------------------------------------------------------------
# Classification tasks: the label index sets the tone
# --------------------------------------------------------------------------------------


def _classify(ctx: _Ctx, labels: tuple[str, ...], prompts: tuple[str, ...]) -> tuple[int, list[dict]]:
    """(label index, conversation) for a single-label classification record."""
    k = int(ctx.rng.integers(len(labels)))
    return k, _conv(ctx.pick(prompts), labels[k])


def _tone_clip(ctx: _Ctx, voice: str, k: int, native: tuple[int, int] = (16000, 1)) -> tuple[_Clip, ...]:
    """The clip of class ``k``: a harmonic tone at :func:`class_hz` (k)."""
    return (_Clip(voice, Tone(class_hz(k), ctx.short_seconds()), native),)


_CV_AGES = ("Teens", "Twenties", "Thirties", "Fourties", "Fifties", "Sixties")
_CV_GENDERS = ("Male", "Female")
_CV_ACCENTS = (
    "American Accent", "England Accent", "Indian Accent", "Canadian Accent", "Australian Accent",
    "Scottish Accent", "Irish Accent", "New Zealand Accent", "South African Accent", "Welsh Accent",
    "Filipino Accent", "Hong Kong Accent", "Malaysian Accent", "Singaporean Accent", "Bermudian Accent",
    "West Indies Accent",
)


def _common_voice(ctx: _Ctx, facet: str) -> _Built:
    """Common Voice age/gender/accent (mp3); ``metadata`` omits the predicted facet."""
    labels, prompts = {
        "age": (_CV_AGES, (
            "Estimate the age group of the speaker: teens, twenties, thirties, fourties, fifties or sixties. Output the age group only.<audio>",
            "Which age range does this voice belong to? Answer with one of: teens, twenties, thirties, fourties, fifties, sixties.<audio>",
        )),
        "gender": (_CV_GENDERS, (
            "Identify the speaker's gender based on their vocal attributes. Choose from female or male.<audio>",
            "Does the speaker in this recording have a female or male voice? Provide only the correct classification.<audio>",
        )),
        "accent": (_CV_ACCENTS, (
            "Identify the accent of the English speaker in this clip. Answer with the accent name only.<audio>",
            "Which accent does this speaker have? Return only the accent, e.g. American Accent or Indian Accent.<audio>",
        )),
    }[facet]
    k, conv = _classify(ctx, labels, prompts)
    facets = {"age": ctx.pick(_CV_AGES).lower(), "accents": ctx.pick(("", "United States English", "India and South Asia")),
              "gender": ctx.pick(_CV_GENDERS).lower(), "sentence": _cap(_sentence(ctx)) + "."}
    key = {"age": "age", "gender": "gender", "accent": "accents"}[facet]
    meta = {name: value for name, value in facets.items() if name != key}
    voice = f"Common-voice/data\\common_voice_en_{22000000 + ctx.uid}.mp3"
    return _Built({"voice": [voice], "metadata": meta, "conversations": conv}, _tone_clip(ctx, voice, k, (48000, 1)))


_VCTK_ACCENTS = ("Scottish.", "British.", "Northern Irish.", "Irish.", "Indian.", "American.", "Canadian.",
                 "South Africa.", "Australian.", "New Zealand.")
_VCTK_AGES = ("18-19.", "20-24.", "25-29.", "30-34.", "35-39.")


def _vctk(ctx: _Ctx, facet: str) -> _Built:
    """VCTK 2019 age/gender/accent (flac); ``metadata`` contains the label."""
    labels, prompts = {
        "age": (_VCTK_AGES, (
            "Estimate the speaker's age range. Only return one of: 18-19, 20-24, 25-29, 30-34, 35-39.<audio>",
            "Which age bracket fits this speaker best: 18-19, 20-24, 25-29, 30-34 or 35-39?<audio>",
        )),
        "gender": (("Male.", "Female."), (
            "Is the speaker male or female? Only return the gender.<audio>",
            "Classify the gender of the speaker in this clip as male or female.<audio>",
        )),
        "accent": (_VCTK_ACCENTS, (
            "What accent is being used in this audio clip? Is it only return: Scottish, British, Northern Irish, Irish, Indian, American, Canadian, South African, Australian, or New Zealand?<audio>",
            "Identify the accent in the provided audio clip. The possible accents are only return: Scottish, British, Northern Irish, Irish, Indian, American, Canadian, South African, Australian, New Zealand.<audio>",
        )),
    }[facet]
    k, conv = _classify(ctx, labels, prompts)
    low, _, _ = (labels[k] if facet == "age" else ctx.pick(_VCTK_AGES)).partition("-")
    meta = {"age": int(low) + ctx.between(0, 1),
            "gender": (labels[k] if facet == "gender" else ctx.pick(("Male.", "Female."))).rstrip("."),
            "accents": (labels[k] if facet == "accent" else ctx.pick(_VCTK_ACCENTS)).rstrip("."),
            "region": ctx.pick(("Cork", "Edinburgh", "County", "Southern England", "")), "comments": ""}
    spk = f"p{225 + ctx.uid // 1000}"
    voice = f"vctk/wav48_silence_trimmed/{spk}\\{spk}_{ctx.uid % 1000:03d}_mic{1 + ctx.ordinal % 2}.flac"
    return _Built({"voice": [voice], "metadata": meta, "conversations": conv}, _tone_clip(ctx, voice, k, (48000, 1)))


_MELD_EMOTIONS = ("Neutrality.", "Joy.", "Surprise.", "Sadness.", "Anger.", "Fear.", "Disgust.")
_FRIENDS = ("Ross.", "Rachel.", "Monica.", "Chandler.", "Joey.", "Phoebe.")


def _meld_utterance(ctx: _Ctx) -> str:
    """A MELD-like utterance; every other one carries U+0092 (cp1252 mojibake) and U+0085 (NEL)."""
    text = _cap(_sentence(ctx)) + "."
    return f"I\u0092m sure\u0085 {text}" if ctx.ordinal % 2 == 0 else text


def _meld(ctx: _Ctx, facet: str) -> _Built:
    """MELD emotion (ER) or speaker (SV); ``meta-data`` (hyphen) omits the predicted field."""
    if facet == "emo":
        k, conv = _classify(ctx, _MELD_EMOTIONS, (
            "For machine learning dataset labeling, analyze the speech and determine the speaker's emotional state. Output only one label: neutrality, joy, surprise, sadness, anger, fear, or disgust.<audio>",
            "Detect the emotional tone in this speaker's voice for sentiment analysis. Return only one of these categories: neutrality, joy, surprise, sadness, anger, fear, or disgust.<audio>",
            "Which emotion does the speaker express: neutrality, joy, surprise, sadness, anger, fear or disgust?<audio>",
        ))
    else:
        k, conv = _classify(ctx, _FRIENDS, (
            "Which of these characters is speaking: Ross, Rachel, Monica, Chandler, Joey or Phoebe? Return the name only.<audio>",
            "Identify the speaker from Ross, Rachel, Monica, Chandler, Joey, Phoebe.<audio>",
        ))
    fields = {"emo": ctx.pick(_MELD_EMOTIONS).rstrip(".").lower(), "sent": ctx.pick(("positive", "neutral", "negative")),
              "speaker": ctx.pick(_FRIENDS).rstrip("."), "utt": _meld_utterance(ctx)}
    meta = {name: value for name, value in fields.items() if name != facet}
    voice = f"Meld/MELD.Raw/wav/{ctx.by_split('train', 'test')}\\dia{ctx.uid}_utt{ctx.ordinal % 20}.wav"
    return _Built({"voice": [voice], "conversations": conv, "meta-data": meta}, _tone_clip(ctx, voice, k))


_CREMAD_EMOTIONS = (("ANG", "Anger."), ("DIS", "Disgust."), ("FEA", "Fear."), ("HAP", "Happiness."),
                    ("NEU", "Neutral."), ("SAD", "Sadness."))
_CREMAD_LEVELS = (("LO", "Low."), ("MD", "Medium."), ("HI", "High."), ("XX", "Unspecified."))
_CREMAD_SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")


def _cremad(ctx: _Ctx, facet: str) -> _Built:
    """CREMA-D emotion (ER) or emotion intensity (EIE); no metadata, the file name encodes both."""
    if facet == "emotion":
        k, conv = _classify(ctx, tuple(label for _, label in _CREMAD_EMOTIONS), (
            "Identify the emotion of the speaker: anger, disgust, fear, happiness, neutral or sadness. Output only the emotion.<audio>",
            "What emotion is conveyed in this audio? Choose from anger, disgust, fear, happiness, neutral, sadness.<audio>",
        ))
        emotion, level = _CREMAD_EMOTIONS[k][0], ctx.pick(_CREMAD_LEVELS)[0]
    else:
        k, conv = _classify(ctx, tuple(label for _, label in _CREMAD_LEVELS), (
            "Rate the intensity of the emotion in this speech: low, medium, high or unspecified.<audio>",
            "How intense is the speaker's emotion? Answer only with low, medium, high, or unspecified.<audio>",
        ))
        emotion, level = ctx.pick(_CREMAD_EMOTIONS)[0], _CREMAD_LEVELS[k][0]
    voice = f"CremaD/Audio\\{ctx.uid}_{ctx.pick(_CREMAD_SENTENCES)}_{emotion}_{level}.wav"
    return _Built({"voice": [voice], "conversations": conv}, _tone_clip(ctx, voice, k))


def _fake_or_real(ctx: _Ctx) -> _Built:
    """Synthetic speech detection on FoR-style multi-dot file names; ``metadata: []``."""
    k, conv = _classify(ctx, ("Real.", "Fake."), (
        "Is this speech real or synthetic? Answer real or fake.<audio>",
        "Determine whether the audio was spoken by a human or generated by a machine. Only return real or fake.<audio>",
    ))
    part = ctx.by_split("training", "testing")
    name = (f"file{ctx.uid}.wav_16k.wav_norm.wav_mono.wav_silence.wav" if k == 0
            else f"file{ctx.uid}.mp3.wav_16k.wav_norm.wav_mono.wav_silence.wav")
    voice = f"for/for-norm/{part}/{('real', 'fake')[k]}\\{name}"
    return _Built({"voice": [voice], "conversations": conv, "metadata": []}, _tone_clip(ctx, voice, k))


_COMMANDS = ("yes", "no", "up", "down", "left", "right", "off", "stop", "go", "two")


def _speech_command(ctx: _Ctx) -> _Built:
    """Speech command recognition: the audio speaks the command word; ``metadata: []``."""
    k, conv = _classify(ctx, tuple(_cap(c) + "." for c in _COMMANDS), (
        "Which command word is spoken in this clip? Return the word only.<audio>",
        "Recognize the short voice command in the audio.<audio>",
    ))
    voice = f"speechcommand/data\\{ctx.uid:08x}_nohash_{ctx.ordinal % 5}_{_COMMANDS[k]}.wav"
    return _Built({"voice": [voice], "conversations": conv, "metadata": []}, (_Clip(voice, Speech(_COMMANDS[k])),))


_VOCAL_SOUNDS = (("cough", "Cough."), ("laughter", "Laughter."), ("sigh", "Sigh."), ("sneeze", "Sneeze."),
                 ("sniff", "Sniff."), ("throatclearing", "Throat clearing."))


def _vocal_sound(ctx: _Ctx) -> _Built:
    """VocalSound vocal classification; ``metadata`` per the real 7 keys."""
    k, conv = _classify(ctx, tuple(label for _, label in _VOCAL_SOUNDS), (
        "Classify the vocal sound in this clip: cough, laughter, sigh, sneeze, sniff or throat clearing.<audio>",
        "What non-speech vocal sound is this? Only return one of cough, laughter, sigh, sneeze, sniff, throat clearing.<audio>",
    ))
    spk = f"{ctx.pick('mf')}{ctx.uid}"
    meta = {"spk_id": spk, "gender": "Female" if spk[0] == "f" else "Male", "speaker_age": ctx.between(18, 70),
            "country": ctx.pick(("China", "India", "USA")), "native_language": ctx.pick(("Chinese", "Hindi", "English")),
            "health_condition": "none", "label": _VOCAL_SOUNDS[k][0]}
    voice = f"vocalclassification/dataset\\{spk}_{ctx.ordinal}_{_VOCAL_SOUNDS[k][0]}.wav"
    return _Built({"voice": [voice], "metadata": meta, "conversations": conv}, _tone_clip(ctx, voice, k))


_FAMILIES = ("Bass", "Brass", "Flute", "Guitar", "Keyboard", "Mallet", "Organ", "Reed", "String", "Synth lead", "Vocal")
_SOURCES = ("Acoustic", "Electronic", "Synthetic")
_VELOCITIES = (25, 50, 75, 100, 127)


def _nsynth_voice(ctx: _Ctx, family: int, source: int, pitch: int, velocity: int) -> str:
    """An NSynth path ``family_source_ID-pitch-velocity.wav`` (the name leaks all four)."""
    fam = _FAMILIES[family].lower().replace(" ", "_")
    return (f"nsynth-{ctx.by_split('train', 'test')}/audio\\"
            f"{fam}_{_SOURCES[source].lower()}_{ctx.uid:03d}-{pitch:03d}-{velocity:03d}.wav")


def _nearest_midi(hz: float) -> int:
    """The MIDI note closest to ``hz`` (Hz)."""
    return int(round(69 + 12 * np.log2(hz / 440.0)))


def _nsynth_class(ctx: _Ctx, facet: str) -> _Built:
    """NSynth instrument family (IC) or source (ISC): the class index sets the tone; no metadata."""
    labels = _FAMILIES if facet == "family" else _SOURCES
    prompt_options = "family" if facet == "family" else "source (acoustic, electronic or synthetic)"
    k, conv = _classify(ctx, labels, (
        f"Identify the instrument {prompt_options} of this note. Only return the label.<audio>",
        f"Which instrument {prompt_options} produced the sound in this clip?<audio>",
    ))
    family = k if facet == "family" else ctx.between(0, len(_FAMILIES) - 1)
    source = k if facet == "source" else ctx.between(0, 2)
    voice = _nsynth_voice(ctx, family, source, _nearest_midi(class_hz(k)), ctx.pick(_VELOCITIES))
    return _Built({"voice": [voice], "conversations": conv}, _tone_clip(ctx, voice, k))


def _pitch(ctx: _Ctx) -> _Built:
    """NSynth pitch: a tone at exactly the labelled MIDI note (36-96)."""
    midi = ctx.between(36, 96)
    prompt = ctx.pick((
        "Identify the pitch in the given audio sample and return its MIDI number. Only output an integer between 0 and 127.<audio>",
        "Listen to the following audio and return the detected pitch as a MIDI value between 0 and 127. Provide only the number.<audio>",
    ))
    voice = _nsynth_voice(ctx, ctx.between(0, len(_FAMILIES) - 1), ctx.between(0, 2), midi, ctx.pick(_VELOCITIES))
    clip = _Clip(voice, Tone(midi_hz(midi), ctx.short_seconds()))
    return _Built({"voice": [voice], "conversations": _conv(prompt, str(midi))}, (clip,))


def _velocity(ctx: _Ctx) -> _Built:
    """NSynth velocity: peak amplitude = 0.75 * velocity / 127 on a tone at a random note."""
    k, conv = _classify(ctx, tuple(str(v) for v in _VELOCITIES), (
        "Classify the velocity of this note: 25, 50, 75, 100 or 127. Return the number only.<audio>",
        "How hard was this note played? Answer with one velocity value from 25, 50, 75, 100, 127.<audio>",
    ))
    midi = ctx.between(40, 80)
    voice = _nsynth_voice(ctx, ctx.between(0, len(_FAMILIES) - 1), ctx.between(0, 2), midi, _VELOCITIES[k])
    clip = _Clip(voice, Tone(midi_hz(midi), ctx.short_seconds(), 0.75 * _VELOCITIES[k] / 127))
    return _Built({"voice": [voice], "conversations": conv}, (clip,))


# --------------------------------------------------------------------------------------
# The stem table and the writers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StemSpec:
    """One LLaSO file stem: modality folder, record builder, and the train file name when irregular."""

    stem: str
    folder: str
    build: Callable[[_Ctx], _Built] = field(repr=False)
    train_file: str | None = None

    def file_name(self, split: str) -> str:
        """``<stem>_train.json`` / ``<stem>_test.json`` (or the irregular train name)."""
        if split == "train" and self.train_file:
            return self.train_file
        return f"{self.stem}_{split}.json"


STEMS: tuple[StemSpec, ...] = (
    StemSpec("ASR", "text_audio", lambda c: _asr(c, LONG_SECONDS[1] if c.split == "train" else None), "ASR_train_stage2.json"),
    StemSpec("phoneme_recognition", "text_audio", _phoneme),
    StemSpec("dolly_input_1", "text_audio", lambda c: _aqa(c, "dolly_input", "input_1")),
    StemSpec("common-voice_age_classification", "text_audio", lambda c: _common_voice(c, "age")),
    StemSpec("common-voice_gender_classification", "text_audio", lambda c: _common_voice(c, "gender")),
    StemSpec("common-voice_accent_classification", "text_audio", lambda c: _common_voice(c, "accent")),
    StemSpec("vctk_age_classification", "text_audio", lambda c: _vctk(c, "age")),
    StemSpec("vctk_gender_classification", "text_audio", lambda c: _vctk(c, "gender")),
    StemSpec("vctk_accent_classification", "text_audio", lambda c: _vctk(c, "accent")),
    StemSpec("slurp_Intent_Prediction", "text_audio", lambda c: _slurp(c, entities=False)),
    StemSpec("slurp_Entity_Extraction", "text_audio", lambda c: _slurp(c, entities=True)),
    StemSpec("speechcommand_recognition", "text_audio", _speech_command),
    StemSpec("Synthetic_Audio_Classification", "text_audio", _fake_or_real),
    StemSpec("meld_ER_classification", "text_audio", lambda c: _meld(c, "emo")),
    StemSpec("CREMAD_ER_classification", "text_audio", lambda c: _cremad(c, "emotion")),
    StemSpec("CREMAD_EIE_classification", "text_audio", lambda c: _cremad(c, "level")),
    StemSpec("meld_SV_classification", "text_audio", lambda c: _meld(c, "speaker")),
    StemSpec("pronunciation_scoring_word_level", "text_audio", _pron_word),
    StemSpec("pronunciation_scoring_sentence_level", "text_audio", _pron_sentence),
    StemSpec("vocalsound_vocal_classification", "text_audio", _vocal_sound),
    StemSpec("NSynth_instrument_classification", "text_audio", lambda c: _nsynth_class(c, "family")),
    StemSpec("NSynth_music_source_classification", "text_audio", lambda c: _nsynth_class(c, "source")),
    StemSpec("NSynth_pitch_recognition", "text_audio", _pitch),
    StemSpec("velocity_classification", "text_audio", _velocity),
    StemSpec("dolly_instruction_0", "audio_text", lambda c: _aqa(c, "dolly_instruction", "instruction_0")),
    StemSpec("alpaca_gpt4_end", "pure_audio", lambda c: _aqa(c, "alpaca_gpt4_data", "end")),
)
"""Every Instruct/Eval stem written; all 20 LLaSO tasks appear in ``text_audio``."""


def _emit(writer: _Writer, rel: str, built: list[_Built]) -> None:
    """Write the clips and the JSON array of ``built`` (all valid)."""
    writer.clips(built)
    writer.json_array(rel, [b.record for b in built])
    writer.count(valid=len(built))


def _write_align(writer: _Writer, n: int) -> None:
    """LLaSO-Align: ``n`` ASR alignment records."""
    built = writer.build(lambda c: _asr(c, LONG_SECONDS[0], mls_only=True), "ASR_stage1", "train", n)
    _emit(writer, "LLaSO-Align/text_audio/ASR_stage1_train.json", built)


def _write_llaso(writer: _Writer, release: str, split: str, n: int) -> None:
    """Every stem of :data:`STEMS` under ``release`` (LLaSO-Instruct or LLaSO-Eval)."""
    for spec in STEMS:
        built = writer.build(spec.build, spec.stem, split, n)
        _emit(writer, f"{release}/{spec.folder}/{spec.file_name(split)}", built)


_LLASM_SYSTEM = {"en": "You are a helpful voice assistant.", "zh": "你是一个乐于助人的语音助手。"}
_LLASM_PREFIX = {"en": "Please answer briefly. ", "zh": "请简要回答。"}


def _llasm_round(ctx: _Ctx, lang: str) -> tuple[str, str]:
    """(spoken question, answer) of one conversation round in ``lang``."""
    if lang == "zh":
        return _qa_item_zh(ctx)
    instruction, given, answer = _qa_item(ctx)
    return f"{instruction} {given}", answer


def _llasm(ctx: _Ctx, lang: str) -> _Built:
    """A 2- or 3-round LLaSM conversation: each human turn speaks a question, gpt answers.

    Even records carry an ``instruction`` (system prompt); in Chinese every 4th one ends
    with U+0085 (NEL), which ``str.splitlines()`` would wrongly split a JSONL line on.
    In every 3rd record the second human turn has text before its ``<audio>``.
    """
    record: dict = {"id": f"llasm_{lang}_{ctx.uid}"}
    if ctx.ordinal % 2 == 0:
        record["instruction"] = _LLASM_SYSTEM[lang] + ("\u0085" if lang == "zh" and ctx.ordinal % 4 == 0 else "")
    turns, clips = [], []
    for turn in range(ctx.between(2, 3)):
        question, answer = _llasm_round(ctx, lang)
        prefix = _LLASM_PREFIX[lang] if turn == 1 and ctx.ordinal % 3 == 0 else ""
        turns += [{"from": "human", "value": f"{prefix}<audio>"}, {"from": "gpt", "value": answer}]
        clips.append(_Clip(f"llasm/{lang}\\{ctx.uid:04d}_{turn}.wav", Speech(question, lang)))
    record["conversations"] = turns
    record["voice"] = [c.voice for c in clips]
    return _Built(record, tuple(clips))


def _write_llasm(writer: _Writer, n: int) -> None:
    """LLaSM: English as a JSON array, Chinese as JSONL (one record per line)."""
    _emit(writer, "LLaSM/llasm_en_train.json", writer.build(lambda c: _llasm(c, "en"), "llasm_en", "train", n))
    built = writer.build(lambda c: _llasm(c, "zh"), "llasm_zh", "train", n)
    writer.clips(built)
    lines = "".join(json.dumps(b.record, ensure_ascii=False) + "\n" for b in built)
    writer.text("LLaSM/llasm_zh_train.jsonl", lines)
    writer.count(valid=len(built))


# --------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------

_MISSING_VOICE = "Meld/MELD.Raw/wav/train\\dia_missing_utt0.wav"
_GARBAGE_VOICE = "Meld/MELD.Raw/wav/train\\dia_corrupt_utt0.wav"
_EMPTY_VOICE = "Meld/MELD.Raw/wav/train\\dia_empty_utt0.wav"


def _turn(role: str, value: object) -> dict:
    """One conversation turn."""
    return {"from": role, "value": value}


def _edit(**changes: object) -> Callable[[dict, str], dict]:
    """A mutation that overrides top-level fields."""
    return lambda r, spare: {**r, **changes}


def _turns(make: Callable[[dict, dict], list]) -> Callable[[dict, str], dict]:
    """A mutation that rebuilds the conversation from the (human, gpt) turns."""
    return lambda r, spare: {**r, "conversations": make(*r["conversations"])}


# (reason, mutation of a valid single-turn record); ``spare`` is another existing voice path.
_RECORD_FAULTS: tuple[tuple[str, Callable[[dict, str], object]], ...] = (
    ("not_an_object", lambda r, spare: 42),
    ("not_an_object", lambda r, spare: "Joy."),
    ("missing_turns", lambda r, spare: {k: v for k, v in r.items() if k != "conversations"}),
    ("missing_turns", _edit(conversations=[])),
    ("missing_turns", _turns(lambda h, g: [h])),
    ("misordered_turns", _turns(lambda h, g: [g, h])),
    ("misordered_turns", _turns(lambda h, g: [_turn("human", "Listen carefully."), h, g])),
    ("misordered_turns", _turns(lambda h, g: [h, _turn("system", "Answer with one word."), g])),
    ("bad_field_type", lambda r, spare: {**r, "voice": {"path": r["voice"][0]}}),
    ("bad_field_type", _edit(voice=[123])),
    ("bad_field_type", _turns(lambda h, g: [h, _turn("gpt", 7)])),
    ("audio_count_mismatch", lambda r, spare: {**r, "voice": r["voice"] + [spare]}),
    ("absolute_audio_path", _edit(voice=["/data/x.wav"])),
    ("absolute_audio_path", _edit(voice=["C:\\data\\x.wav"])),
    ("audio_path_escapes_root", _edit(voice=["../../etc/passwd.wav"])),
    ("empty_label", _turns(lambda h, g: [h, _turn("gpt", "")])),
    ("empty_label", _turns(lambda h, g: [h, _turn("gpt", "  \t ")])),
    ("audio_missing", _edit(voice=[_MISSING_VOICE])),
    ("audio_undecodable", _edit(voice=[_GARBAGE_VOICE])),
    ("audio_empty", _edit(voice=[_EMPTY_VOICE])),
)


def _voices_of(record: object) -> set[str]:
    """The string voice paths a (possibly malformed) record references."""
    voice = record.get("voice") if isinstance(record, dict) else None
    voices = voice if isinstance(voice, list) else [voice]
    return {v for v in voices if isinstance(v, str)}


def _write_record_faults(writer: _Writer) -> None:
    """A meld ER file: 3 valid records (one with a bare-string ``voice``), then one record per fault."""
    base = writer.build(lambda c: _meld(c, "emo"), "faulty_meld_ER_classification", "train", 3 + len(_RECORD_FAULTS))
    spare = base[0].record["voice"][0]
    valid = [base[0].record, base[1].record, {**base[2].record, "voice": base[2].record["voice"][0]}]
    bad = [mutate(copy.deepcopy(b.record), spare) for (_, mutate), b in zip(_RECORD_FAULTS, base[3:])]
    records = valid + bad
    used = set().union(*(_voices_of(r) for r in records))
    for clip in (c for b in base for c in b.clips if c.voice in used):
        writer.clip(clip)
    writer.garbage(_GARBAGE_VOICE)
    writer.empty(_EMPTY_VOICE)
    writer.json_array(FAULTY_FILES[0], records)
    writer.count(valid=len(valid), **Counter(reason for reason, _ in _RECORD_FAULTS))


def _write_surrogate_fault(writer: _Writer) -> None:
    """A valid record, then one whose prompt holds a lone surrogate escape ``\\udc80``.

    The bad record is last because some streaming parsers (ijson's yajl2_c backend) raise
    UnicodeDecodeError there and cannot go on with the array.
    """
    built = writer.build(lambda c: _meld(c, "emo"), "faulty_text_meld_ER_classification", "train", 2)
    writer.clips(built)
    marker = "@@LONE_SURROGATE@@"
    bad = copy.deepcopy(built[1].record)
    bad["conversations"][0]["value"] = bad["conversations"][0]["value"].replace("<audio>", f"{marker}<audio>")
    text = json.dumps([built[0].record, bad], indent=2, ensure_ascii=False) + "\n"
    writer.text(FAULTY_FILES[1], text.replace(marker, "\\udc80"))
    writer.count(valid=1, undecodable_text=1)


def _write_truncated(writer: _Writer) -> None:
    """A CREMA-D array cut inside its 3rd record: 2 valid records, then 1 malformed_json."""
    built = writer.build(lambda c: _cremad(c, "emotion"), "truncated_CREMAD_ER_classification", "train", 3)
    writer.clips(built)
    text = json.dumps([b.record for b in built], indent=2, ensure_ascii=False)
    writer.text(FAULTY_FILES[2], text[: text.rindex('"conversations"') + 6])
    writer.count(valid=2, malformed_json=1)


def _write_jsonl_faults(writer: _Writer) -> None:
    """LLaSM zh JSONL: good lines, a broken line, a raw 0x92 byte, and a record split by a raw newline.

    The split record is valid once a reader joins its two lines with an escaped newline.
    """
    built = writer.build(lambda c: _llasm(c, "zh"), "faulty_llasm_zh", "train", 5)
    writer.clips(built)
    marker = "@@MARK@@"
    lines = [json.dumps(b.record, ensure_ascii=False).encode("utf-8") for b in built]
    bad_byte, split = copy.deepcopy(built[2].record), copy.deepcopy(built[3].record)
    bad_byte["conversations"][1]["value"] += marker
    split["conversations"][1]["value"] = f"第一行{marker}第二行"
    broken = b'{"id": "llasm_zh_broken", "conversations": [{"from": "human", "value": "<audio>"}'
    lines[2] = json.dumps(bad_byte, ensure_ascii=False).encode("utf-8").replace(marker.encode(), b"\x92")
    lines[3] = json.dumps(split, ensure_ascii=False).encode("utf-8").replace(marker.encode(), b"\n")
    writer.raw(FAULTY_FILES[3], b"\n".join(lines[:1] + [broken] + lines[1:]) + b"\n")
    writer.count(valid=4, malformed_json=1, undecodable_text=1)


def _mystery(ctx: _Ctx) -> _Built:
    """A valid record of an unknown task: describe a tone (Hz)."""
    k = ctx.between(0, 5)
    voice = f"mystery/data\\clip_{ctx.uid}.wav"
    conv = _conv("Describe the sound.<audio>", f"A steady tone at {class_hz(k):.0f} Hz.")
    return _Built({"voice": [voice], "conversations": conv}, _tone_clip(ctx, voice, k))


def _write_faults(writer: _Writer) -> None:
    """All fault files plus the unknown-stem file."""
    _write_record_faults(writer)
    _write_surrogate_fault(writer)
    _write_truncated(writer)
    _write_jsonl_faults(writer)
    _emit(writer, UNKNOWN_STEM_FILE, writer.build(_mystery, "mystery_task", "train", 2))
