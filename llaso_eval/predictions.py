"""Find and read prediction files in the layouts found in the wild.

A prediction file is a LLaSO-Eval file (``<stem>_test.json`` array or ``.jsonl``, any
folder depth) whose records carry the model's output next to the original fields.
What the scorer reads from a record, and nothing else:

* ``conversations``: a list of turns ``{"from": ..., "value": str}``. The **reference is
  always the last turn's value** (``conversations[-1]["value"]``, i.e. ``conversations[1]``
  in LLaSO), whatever other fields claim; the question is the first user turn's value with
  ``<audio>`` removed (shown to an LLM judge only through a custom prompt).
* the prediction: the first field present among ``answer``, ``result``, ``prediction``
  (:data:`PREDICTION_FIELDS`; ``full_answer`` and ``prediction_units`` are ignored). A
  record with none of them, or with ``null``, has the empty prediction; a number is
  read as its JSON text.
* optionally ``key`` (else ``index``, else ``id``): how messages name the record.

JSON arrays and JSONL are read by :func:`llaso_data.ingest.readers.iter_raw_records` (record by
record, JSONL split on ``\\n`` only so U+0085 in MELD text is safe, a line broken by a raw
newline repaired). A record that cannot be scored (malformed JSON, not an object, no
usable turns, empty reference, a prediction that is a list or object) becomes a
:class:`RecordProblem` naming the file, the record and the reason; it is counted, never
silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llaso_data.ingest.corpus import annotation_files
from llaso_data.ingest.readers import iter_raw_records
from llaso_data.tasks import StemInfo, parse_file_name

PREDICTION_FIELDS = ("answer", "result", "prediction")
"""Where a model's output may sit in a record, in order of precedence."""
KEY_FIELDS = ("key", "index", "id")
"""Fields naming a record in messages, in order of precedence (else its position)."""
NOT_PREDICTION_FOLDERS = frozenset({"gpt_result", "abstention"})
"""Folders of LLaSO's ``results/<model>/`` that hold scorer outputs, not predictions."""
GENERATION_SUMMARY = "generation.json"
"""The account ``llaso-eval generate`` writes at the top of its output folder; not predictions."""
JUDGE_CACHE_FILE = "judge_cache.jsonl"
"""The judge cache file (:mod:`llaso_eval.judge_cache`), in whatever folder it sits; not predictions."""
AUDIO_PLACEHOLDER = "<audio>"
_USER_ROLES = {"human", "user"}


@dataclass(frozen=True)
class PredictionRecord:
    """One scorable record.

    ``ordinal`` is the 0-based position in its file; ``key`` names it (see
    :data:`KEY_FIELDS`); ``reference`` is the gold text; ``prediction`` is the model's
    output (``""`` when missing); ``question`` is the user's text without ``<audio>``.
    """

    ordinal: int
    key: str
    question: str
    reference: str
    prediction: str


@dataclass(frozen=True)
class RecordProblem:
    """A record that could not be scored: file, 0-based record position, reason, detail."""

    file: str
    ordinal: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}: record {self.ordinal}: {self.reason}: {self.detail}"


@dataclass
class PredictionFile:
    """The scorable records of one file and the problems of the others; ``name`` is how
    messages name the file (its path relative to the prediction folder)."""

    path: Path
    name: str
    stem: StemInfo
    records: list[PredictionRecord] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)


class PredictionDirError(ValueError):
    """The prediction folder cannot be scored as a whole (missing, empty, duplicate stems)."""


def find_prediction_files(pred_dir: Path) -> list[Path]:
    """Every ``*.json``/``*.jsonl`` under ``pred_dir`` (sorted), except hidden paths,
    LLaSO's ``gpt_result/`` and ``abstention/`` folders, ``generate``'s summary
    (:data:`GENERATION_SUMMARY` at the top) and judge cache files (:data:`JUDGE_CACHE_FILE`).

    Raises :class:`PredictionDirError` when the folder does not exist, holds no prediction
    file, or holds two files with the same stem (e.g. the same task in two folders).
    """
    if not pred_dir.is_dir():
        raise PredictionDirError(f"{pred_dir}: not a folder")
    paths = [p for p in annotation_files(pred_dir)
             if not NOT_PREDICTION_FOLDERS.intersection(p.relative_to(pred_dir).parts[:-1])
             and p != pred_dir / GENERATION_SUMMARY and p.name != JUDGE_CACHE_FILE]
    if not paths:
        raise PredictionDirError(f"{pred_dir}: no .json or .jsonl prediction files")
    seen: dict[str, Path] = {}
    for path in paths:
        stem = stem_of(path).stem
        if stem in seen:
            raise PredictionDirError(
                f"{pred_dir}: stem {stem!r} appears twice: {seen[stem].relative_to(pred_dir)} "
                f"and {path.relative_to(pred_dir)}")
        seen[stem] = path
    return paths


def stem_of(path: Path) -> StemInfo:
    """Stem, task and category of a prediction file (``ASR_test.json`` -> stem ``ASR``)."""
    return parse_file_name(path.name, default_split="test")


def read_prediction_file(path: Path, name: str | None = None) -> PredictionFile:
    """Read every record of ``path``; ``name`` is how problems name the file (default: path)."""
    result = PredictionFile(path, name or str(path), stem_of(path))
    for raw in iter_raw_records(path):
        if raw.error is not None:
            result.problems.append(RecordProblem(result.name, raw.ordinal, *raw.error))
            continue
        parsed = parse_record(raw.value, raw.ordinal)
        if isinstance(parsed, PredictionRecord):
            result.records.append(parsed)
        else:
            result.problems.append(RecordProblem(result.name, raw.ordinal, *parsed))
    return result


def parse_record(value: Any, ordinal: int) -> PredictionRecord | tuple[str, str]:
    """The scorable record, or ``(reason, detail)`` saying why ``value`` is not one."""
    if not isinstance(value, dict):
        return "not_an_object", f"expected a JSON object, found {type(value).__name__}"
    turns = value.get("conversations")
    if not isinstance(turns, list) or not turns:
        return "missing_turns", "no conversations list"
    if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns):
        return "bad_field_type", "every turn must be an object with a string value"
    reference = turns[-1]["value"]
    if turns[-1].get("from") in _USER_ROLES:
        return "missing_turns", "the last turn is the user's: there is no reference answer"
    if not reference.strip():
        return "empty_reference", "the last turn (the reference) is empty"
    question = next((t["value"] for t in turns[:-1] if t.get("from") in _USER_ROLES), "")
    prediction = _prediction(value)
    if prediction is None:
        kind = type(next(value[f] for f in PREDICTION_FIELDS if f in value)).__name__
        return "bad_prediction_type", f"the prediction is a {kind}, not a string"
    key = next((value[f] for f in KEY_FIELDS if isinstance(value.get(f), (str, int))), ordinal)
    return PredictionRecord(ordinal, str(key), question.replace(AUDIO_PLACEHOLDER, "").strip(),
                            reference, prediction)


def _prediction(record: dict) -> str | None:
    """The prediction text ("" when absent or null), or None when it has an unusable type."""
    for name in PREDICTION_FIELDS:
        if name in record:
            value = record[name]
            if value is None:
                return ""
            if isinstance(value, str):
                return value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            return None
    return ""
