"""The metrics, each a pure function of reference and prediction texts.

* :func:`error_rate`: word / character / phone error rate over unit lists (corpus level:
  total edits over total reference units), computed by ``jiwer``.
* :func:`classify`: accuracy and abstention rate by LLaSO's definition (below).
* :func:`mean_absolute_error`: pitch (MIDI numbers) and numeric age.
* :func:`score_match`: exact match of the integer scores of pronunciation scoring.

**Classification (LLaSO's definition).** The label set of a file is its distinct gold
answers, each normalised by :func:`normalize_label` (case folded, a trailing period
stripped). A prediction *names* a label when the label occurs in it case-insensitively
at word boundaries (no letter or digit on either side, so ``male`` is not found in
``female`` and ``20-24`` is found in ``20-24.``; words of a label may be separated by any
whitespace). A prediction *follows the instruction* when it names exactly one label; the
**abstention rate** is the share of records that do not (empty predictions, none of the
labels, two or more labels). A record is **correct** when the one label named is its
gold; accuracy is over all records, abstentions counting as wrong.
One refinement over LLaSO's script: an occurrence inside an occurrence of a longer label
does not count, so ``Northern Irish`` names one label, not two (``Irish`` too); LLaSO's
script counts two and calls every correct ``Northern Irish`` answer an abstention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import jiwer

_BOUNDARY_BEFORE = r"(?<![^\W_])"  # no letter or digit just before
_BOUNDARY_AFTER = r"(?![^\W_])"    # no letter or digit just after
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_SCORE_ASPECT = re.compile(
    r"\b(accuracy|stress|total|fluency|prosod(?:ic|y)|completeness)\b(?:\s+score)?\s*(?:is|:|=|of|as)?\s*(\d+)",
    re.IGNORECASE)
_WORD_MARKER = re.compile(r"\bfor\s+[\"\u201c]", re.IGNORECASE)


@dataclass(frozen=True)
class ErrorRate:
    """Corpus-level error rate: ``rate = (substitutions + deletions + insertions) /
    reference_units``; may exceed 1 when a prediction inserts many units."""

    rate: float
    reference_units: int
    substitutions: int
    deletions: int
    insertions: int


def error_rate(references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> ErrorRate:
    """Levenshtein alignment of unit lists (words, characters or phones), pairwise.

    Every reference must have at least one unit; a prediction may have none (all deletions).
    """
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    if not references:
        raise ValueError("no records to score")
    if any(not units for units in references):
        raise ValueError("a reference has no units")
    if any(" " in u or not u for units in (*references, *predictions) for u in units):
        raise ValueError("units must be non-empty and hold no space")
    result = jiwer.process_words([" ".join(u) for u in references], [" ".join(u) for u in predictions])
    total = sum(len(u) for u in references)
    return ErrorRate(result.wer, total, result.substitutions, result.deletions, result.insertions)


def normalize_label(text: str) -> str:
    """A gold label as matched: case folded, surrounding whitespace and a trailing ``.`` removed."""
    return text.casefold().strip().rstrip(".").strip()


def label_set(references: Sequence[str]) -> tuple[str, ...]:
    """The distinct normalised gold answers of a file, sorted (empty ones dropped)."""
    return tuple(sorted({normalize_label(r) for r in references} - {""}))


def named_labels(prediction: str, labels: Sequence[str]) -> list[str]:
    """The labels (normalised, as in :func:`label_set`) that ``prediction`` names.

    An occurrence lying inside an occurrence of another, longer label is not counted.
    """
    text = prediction.casefold()
    spans: dict[str, list[tuple[int, int]]] = {}
    for label in labels:
        pattern = _BOUNDARY_BEFORE + r"\s+".join(map(re.escape, label.split())) + _BOUNDARY_AFTER
        found = [m.span() for m in re.finditer(pattern, text)]
        if found:
            spans[label] = found
    longer = [(s, e, label) for label, found in spans.items() for s, e in found]
    return sorted(
        label for label, found in spans.items()
        if any(not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in longer) for s, e in found)
    )


@dataclass(frozen=True)
class Classification:
    """``accuracy`` and ``abstention_rate`` are fractions of ``n`` records; ``correct``
    records named exactly their gold label, ``followed`` named exactly one label."""

    accuracy: float
    abstention_rate: float
    n: int
    correct: int
    followed: int
    labels: tuple[str, ...]


def classify(references: Sequence[str], predictions: Sequence[str]) -> Classification:
    """Accuracy and abstention rate of one file by LLaSO's definition (module docstring)."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    if not references:
        raise ValueError("no records to score")
    labels = label_set(references)
    correct = followed = 0
    for reference, prediction in zip(references, predictions):
        named = named_labels(prediction, labels)
        if len(named) == 1:
            followed += 1
            correct += named[0] == normalize_label(reference)
    n = len(references)
    return Classification(correct / n, (n - followed) / n, n, correct, followed, labels)


def parse_number(text: str) -> float | None:
    """The first number written in ``text`` (``"MIDI 68."`` -> 68.0), or None."""
    match = _NUMBER.search(text)
    return float(match.group()) if match else None


def is_number(text: str) -> bool:
    """True when ``text`` is a number and nothing else (a trailing ``.`` allowed): ``"19"``, ``"68."``."""
    return _NUMBER.fullmatch(text.strip().rstrip(".").strip()) is not None


@dataclass(frozen=True)
class AbsoluteError:
    """``mae`` is over the ``parsed`` predictions (None when none parsed); ``unparsed``
    predictions hold no number. ``credit`` is the mean over all ``n`` records of
    ``max(0, 1 - |error| / scale)``, an unparsed prediction earning 0."""

    mae: float | None
    n: int
    parsed: int
    unparsed: int
    credit: float


def mean_absolute_error(references: Sequence[float], predictions: Sequence[str], scale: float) -> AbsoluteError:
    """Mean absolute error between gold numbers and the first number of each prediction."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    if not references:
        raise ValueError("no records to score")
    errors = [abs(value - gold) for gold, value in
              ((g, parse_number(p)) for g, p in zip(references, predictions)) if value is not None]
    n = len(references)
    credit = sum(max(0.0, 1.0 - e / scale) for e in errors) / n
    return AbsoluteError(sum(errors) / len(errors) if errors else None, n, len(errors), n - len(errors), credit)


def pronunciation_scores(text: str) -> dict[tuple[int, str], int]:
    """The integer scores written in a pronunciation-scoring answer, keyed by
    ``(word position, aspect)``.

    Word level (``For "mark", accuracy is 10, stress is 10, and total score is 10. For
    "is", ...``): the position counts the ``For "..."`` markers, 1 for the first word.
    Sentence level (``... accuracy is 8, fluency is 7, prosodic is 8, total is 8``):
    position 0. Aspects are ``accuracy``, ``stress``, ``total``, ``fluency``, ``prosodic``
    (``prosody`` too) and ``completeness``; the first score of an aspect at a position wins.
    """
    markers = [m.start() for m in _WORD_MARKER.finditer(text)]
    scores: dict[tuple[int, str], int] = {}
    for match in _SCORE_ASPECT.finditer(text):
        position = sum(1 for start in markers if start < match.start())
        aspect = match.group(1).lower()
        aspect = "prosodic" if aspect.startswith("prosod") else aspect
        scores.setdefault((position, aspect), int(match.group(2)))
    return scores


@dataclass(frozen=True)
class ScoreMatch:
    """``value`` is the mean over ``n`` records of the share of the gold's scores that the
    prediction reproduces exactly (same word position, same aspect); a prediction with no
    readable score (``unparsed``) earns 0."""

    value: float
    n: int
    unparsed: int


def score_match(references: Sequence[str], predictions: Sequence[str]) -> ScoreMatch:
    """Exact match of pronunciation scores; every reference must hold at least one score."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    if not references:
        raise ValueError("no records to score")
    total = 0.0
    unparsed = 0
    for reference, prediction in zip(references, predictions):
        gold = pronunciation_scores(reference)
        if not gold:
            raise ValueError(f"reference holds no pronunciation score: {reference[:80]!r}")
        predicted = pronunciation_scores(prediction)
        unparsed += not predicted
        total += sum(predicted.get(k) == v for k, v in gold.items()) / len(gold)
    return ScoreMatch(total / len(references), len(references), unparsed)
