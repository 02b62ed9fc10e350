"""The LLaSO task catalogue and the rules that derive task, category and modality.

A task is identified by its paper abbreviation (``"ASR"``, ``"SGC"``, ...). Besides the
20 LLaSO tasks there are two more: ``"ALIGN"`` (stage-1 ASR alignment, LLaSO-Align) and
``"CONV"`` (multi-turn conversation, LLaSM-style data).

Derivation follows the data spec: the task comes from the file stem (the file name
without ``_train``/``_test`` and ``_stageN``), the modality from the nearest parent
folder named after a modality, or, failing that, from the stem suffix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MODALITIES = ("text_audio", "audio_text", "pure_audio")
CATEGORIES = ("linguistic", "semantic", "paralinguistic")
UNKNOWN_CATEGORY = "unknown"


@dataclass(frozen=True)
class TaskInfo:
    """One task: its abbreviation, a readable name and its category."""

    abbr: str
    name: str
    category: str


TASKS: dict[str, TaskInfo] = {
    t.abbr: t
    for t in (
        TaskInfo("ASR", "speech recognition", "linguistic"),
        TaskInfo("PR", "phoneme recognition", "linguistic"),
        TaskInfo("AQA", "audio question answering", "semantic"),
        TaskInfo("AR", "age recognition", "paralinguistic"),
        TaskInfo("SGC", "speaker gender classification", "paralinguistic"),
        TaskInfo("AC", "accent classification", "paralinguistic"),
        TaskInfo("IP", "intent prediction", "paralinguistic"),
        TaskInfo("SCR", "speech command recognition", "paralinguistic"),
        TaskInfo("SSD", "synthetic speech detection", "paralinguistic"),
        TaskInfo("EE", "entity extraction", "paralinguistic"),
        TaskInfo("ER", "emotion recognition", "paralinguistic"),
        TaskInfo("EIE", "emotion intensity estimation", "paralinguistic"),
        TaskInfo("SV", "speaker verification", "paralinguistic"),
        TaskInfo("PSWL", "pronunciation scoring, word level", "paralinguistic"),
        TaskInfo("PSSL", "pronunciation scoring, sentence level", "paralinguistic"),
        TaskInfo("VSC", "vocal sound classification", "paralinguistic"),
        TaskInfo("IC", "instrument classification", "paralinguistic"),
        TaskInfo("ISC", "instrument source classification", "paralinguistic"),
        TaskInfo("PP", "pitch prediction", "paralinguistic"),
        TaskInfo("VC", "velocity classification", "paralinguistic"),
        TaskInfo("ALIGN", "ASR alignment (LLaSO-Align, stage 1)", "linguistic"),
        TaskInfo("CONV", "multi-turn spoken conversation (LLaSM)", "semantic"),
    )
}
LLASO_TASKS = tuple(a for a in TASKS if a not in ("ALIGN", "CONV"))

# Ordered rules over the lower-cased stem; the first match wins. Order matters:
# "vocalsound_age_prediction" is AR, not VSC; "cremad_eie" is EIE, not ER.
_STEM_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), abbr)
    for pattern, abbr in (
        (r"_(input_1|instruction_0|end)$", "AQA"),
        (r"^asr_stage1$", "ALIGN"),
        (r"^asr(_stage\d+)?$", "ASR"),
        (r"(^|_)llasm(_|$)", "CONV"),
        (r"phoneme_recognition", "PR"),
        (r"pronunciation_scoring_word", "PSWL"),
        (r"pronunciation_scoring_sentence", "PSSL"),
        (r"intent_prediction", "IP"),
        (r"entity_extraction", "EE"),
        (r"speechcommand", "SCR"),
        (r"synthetic_audio", "SSD"),
        (r"(^|_)eie(_|$)", "EIE"),
        (r"(^|_)er(_|$)", "ER"),
        (r"(^|_)sv(_|$)", "SV"),
        (r"(^|_)age(_|$)", "AR"),
        (r"(^|_)gender(_|$)", "SGC"),
        (r"(^|_)(accent|ai)(_|$)", "AC"),
        (r"(^|_)vocal(_|$)", "VSC"),
        (r"music_source", "ISC"),
        (r"instrument", "IC"),
        (r"pitch", "PP"),
        (r"velocity", "VC"),
    )
)

_SPLIT_SUFFIX = re.compile(
    r"^(?P<stem>.+?)(?:_stage\d+)?_(?P<split>train|test|dev|valid|validation|eval)(?:_stage\d+)?$"
)
_STAGE_SUFFIX = re.compile(r"_stage(?P<n>\d+)")


@dataclass(frozen=True)
class StemInfo:
    """What a file name says about its records.

    ``task`` is a catalogue abbreviation, or the stem itself when no rule matches
    (``known`` is then False and the caller should warn).
    """

    stem: str
    split: str
    task: str
    category: str
    known: bool


def parse_file_name(file_name: str, default_split: str = "train") -> StemInfo:
    """Derive stem, split, task and category from a JSON/JSONL file name.

    >>> parse_file_name("ASR_stage1_train.json").task
    'ALIGN'
    >>> parse_file_name("ASR_train_stage2.json").stem
    'ASR_stage2'
    """
    base = re.sub(r"\.(jsonl|json)$", "", file_name, flags=re.IGNORECASE)
    match = _SPLIT_SUFFIX.match(base)
    if match:
        stem, split = match.group("stem"), match.group("split")
        stage = _STAGE_SUFFIX.search(base[match.end("stem"):])
        if stage and not _STAGE_SUFFIX.search(stem):
            stem = f"{stem}_stage{stage.group('n')}"
    else:
        stem, split = base, default_split
    split = {"validation": "dev", "valid": "dev", "eval": "test"}.get(split, split)
    task = task_for_stem(stem)
    if task is None:
        return StemInfo(stem, split, stem, UNKNOWN_CATEGORY, known=False)
    return StemInfo(stem, split, task, TASKS[task].category, known=True)


def task_for_stem(stem: str) -> str | None:
    """Task abbreviation for a file stem, or None when no rule matches."""
    lowered = stem.lower()
    for pattern, abbr in _STEM_RULES:
        if pattern.search(lowered):
            return abbr
    return None


def modality_for_stem(stem: str) -> str:
    """Modality implied by a stem alone (used when no modality folder is present)."""
    lowered = stem.lower()
    if lowered.endswith("_instruction_0"):
        return "audio_text"
    if lowered.endswith("_end"):
        return "pure_audio"
    return "text_audio"
