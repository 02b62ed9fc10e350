"""The judge cache: verdicts an LLM judge already gave, so a re-score never asks twice.

Verdicts come from two kinds of files, both plain JSON Lines (UTF-8, one object a line;
nothing else is ever deserialised):

**The cache file**, ``DIR/judge_cache.jsonl`` (:data:`CACHE_FILE`) of a cache folder
``DIR``: every verdict a judge gives is appended to it, one line each::

    {"key": "<64 hex digits>", "judge": "gpt-4o-mini", "prompt": "<prompt version>",
     "reference": "...", "prediction": "...", "evaluation": "Score: 4\\nExplanation: ...",
     "score": 4}

``judge`` is the judge's model (:attr:`llaso_eval.judge.Judge.model`), ``prompt`` the
version of its prompt (:func:`llaso_eval.judge.prompt_version`), ``reference`` and
``prediction`` the texts the judge saw (surrounding whitespace removed), ``evaluation``
its answer and ``score`` the 1..5 read from that answer (``null`` when it holds none).
``key`` is the SHA-256 (hex) of the UTF-8 JSON array ``[judge, prompt, reference,
prediction]`` (:func:`verdict_key`); a judge whose prompt shows the question adds a
``question`` field, appended to the array. A verdict is reused for any record with the
same key, in any file or run.

**LLaSO's published verdicts**, ``gpt_result/<stem>_test.jsonl`` next to the predictions
(``results/<model>/gpt_result/``) or in the cache folder: one line per record of
``<stem>_test.json``, ``{"file", "index", "predicted", "reference", "evaluation"}``, by
gpt-4o-mini at temperature 0.1 (:data:`llaso_eval.judge.LLASO_JUDGE_MODEL`). A verdict is
used for the record at position ``index`` of the prediction file with the same stem only
when its ``predicted`` and ``reference`` texts are that record's prediction and reference
(surrounding whitespace aside); otherwise it is reported (:class:`RecordProblem`, reason
``verdict_mismatch``) and not used. An ``evaluation`` starting with ``ERROR:`` is LLaSO's
script recording a failed call, not a verdict (reason ``judge_error``).

Everything here is pure except reading files; appending to the cache file is left to the
caller (the command line), which receives each new verdict through
:attr:`VerdictStore.on_new`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from llaso_data.ingest.readers import iter_raw_records

from .judge import LLASO_JUDGE_MODEL, LLASO_PROMPT_VERSION, parse_score
from .predictions import JUDGE_CACHE_FILE, PredictionRecord, RecordProblem, stem_of

CACHE_FILE = JUDGE_CACHE_FILE
"""The cache file's name inside a cache folder (never read as predictions)."""
PUBLISHED_FOLDER = "gpt_result"
"""The folder of LLaSO's published verdicts, next to the predictions or in the cache folder."""
LLASO_ERROR_PREFIX = "ERROR:"
"""How LLaSO's judge script records a failed call in place of a verdict."""


@dataclass(frozen=True)
class JudgeIdentity:
    """Whose verdicts a lookup accepts: the judge's model and its prompt version."""

    model: str
    prompt: str

    def __str__(self) -> str:
        return f"{self.model} (prompt {self.prompt})"


LLASO_JUDGE = JudgeIdentity(LLASO_JUDGE_MODEL, LLASO_PROMPT_VERSION)
"""The identity of LLaSO's published verdicts."""


def verdict_key(judge: JudgeIdentity, reference: str, prediction: str, question: str | None = None) -> str:
    """The cache key (64 hex digits) of the verdict of ``judge`` on these texts (stripped
    as the judge sees them); ``question`` only for a judge whose prompt shows it."""
    fields = [judge.model, judge.prompt, reference.strip(), prediction.strip()]
    if question is not None:
        fields.append(question.strip())
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Verdict:
    """One judge answer on one (reference, prediction) pair; ``score`` is 1..5 or None
    (the answer holds no readable score)."""

    judge: JudgeIdentity
    reference: str
    prediction: str
    evaluation: str
    score: int | None
    question: str | None = None

    @classmethod
    def of(cls, judge: JudgeIdentity, reference: str, prediction: str, evaluation: str,
           question: str | None = None) -> "Verdict":
        """A verdict from the judge's answer text (its score read by :func:`parse_score`)."""
        return cls(judge, reference.strip(), prediction.strip(), evaluation, parse_score(evaluation),
                   None if question is None else question.strip())

    @property
    def key(self) -> str:
        return verdict_key(self.judge, self.reference, self.prediction, self.question)

    def to_line(self) -> str:
        """The cache file line (JSON, no trailing newline)."""
        data = {"key": self.key, "judge": self.judge.model, "prompt": self.judge.prompt,
                "reference": self.reference, "prediction": self.prediction}
        if self.question is not None:
            data["question"] = self.question
        data |= {"evaluation": self.evaluation, "score": self.score}
        return json.dumps(data, ensure_ascii=False)


def parse_cache_line(value: object) -> Verdict | tuple[str, str]:
    """The verdict of one cache file line's JSON value, or ``(reason, detail)``."""
    if not isinstance(value, dict):
        return "not_an_object", f"expected a JSON object, found {type(value).__name__}"
    names = ("key", "judge", "prompt", "reference", "prediction", "evaluation")
    missing = [n for n in names if not isinstance(value.get(n), str)]
    if missing:
        return "bad_verdict", f"{', '.join(missing)} must be text"
    question = value.get("question")
    if question is not None and not isinstance(question, str):
        return "bad_verdict", "question must be text"
    verdict = Verdict.of(JudgeIdentity(value["judge"], value["prompt"]), value["reference"], value["prediction"],
                         value["evaluation"], question)
    if value.get("score") != verdict.score or isinstance(value.get("score"), bool):
        return "score_mismatch", f"score {value.get('score')!r}, but the evaluation reads {verdict.score!r}"
    if value["key"] != verdict.key:
        return "key_mismatch", "the key is not the hash of judge, prompt, reference and prediction"
    return verdict


class JudgeCache:
    """Verdicts by key (:func:`verdict_key`), in memory; thread-safe. The first verdict
    added for a key is kept."""

    def __init__(self, verdicts: Iterable[Verdict] = ()):
        self._verdicts: dict[str, Verdict] = {}
        self._lock = threading.Lock()
        for verdict in verdicts:
            self.add(verdict)

    def __len__(self) -> int:
        return len(self._verdicts)

    def add(self, verdict: Verdict) -> bool:
        """Keep ``verdict``; False when its key already has one (which stays)."""
        key = verdict.key
        with self._lock:
            if key in self._verdicts:
                return False
            self._verdicts[key] = verdict
            return True

    def get(self, judge: JudgeIdentity, reference: str, prediction: str, question: str | None = None) -> Verdict | None:
        return self._verdicts.get(verdict_key(judge, reference, prediction, question))

    def identities(self) -> set[JudgeIdentity]:
        """The judges whose verdicts the cache holds."""
        with self._lock:
            return {v.judge for v in self._verdicts.values()}


def read_cache_file(path: Path) -> tuple[JudgeCache, list[RecordProblem]]:
    """The verdicts of a cache file (empty when it does not exist) and a problem for each
    line that is not one (named by file, 0-based line and reason; such lines are not used)."""
    cache = JudgeCache()
    problems: list[RecordProblem] = []
    if not path.exists():
        return cache, problems
    if not path.is_file():
        raise ValueError(f"{path}: the judge cache file is not a file")
    for raw in iter_raw_records(path):
        parsed = raw.error or parse_cache_line(raw.value)
        if isinstance(parsed, Verdict):
            cache.add(parsed)
        else:
            problems.append(RecordProblem(str(path), raw.ordinal, *parsed))
    return cache, problems


# ---------------------------------------------------------------- LLaSO's gpt_result files

@dataclass(frozen=True)
class PublishedVerdict:
    """One line of a ``gpt_result`` file: its 0-based ``line`` (record) in that file, the
    ``index`` of the prediction record it judges, the texts it judged and the verdict."""

    file: str
    line: int
    index: int
    predicted: str
    reference: str
    evaluation: str


@dataclass
class StemVerdicts:
    """The ``gpt_result`` lines of one stem: its verdicts, and a problem for each line that is not one."""

    verdicts: list[PublishedVerdict] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)


@dataclass
class PublishedVerdicts:
    """The ``gpt_result`` lines of one prediction folder, by stem."""

    by_stem: dict[str, StemVerdicts] = field(default_factory=dict)

    def of(self, stem: str) -> StemVerdicts:
        return self.by_stem.get(stem) or StemVerdicts()


def parse_published_line(value: object, file: str, line: int) -> PublishedVerdict | tuple[str, str]:
    """The verdict of one ``gpt_result`` line's JSON value, or ``(reason, detail)``."""
    if not isinstance(value, dict):
        return "not_an_object", f"expected a JSON object, found {type(value).__name__}"
    index = value.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        return "bad_verdict", f"index must be a non-negative integer, found {index!r}"
    texts = [n for n in ("predicted", "reference", "evaluation") if not isinstance(value.get(n), str)]
    if texts:
        return "bad_verdict", f"index {index}: {', '.join(texts)} must be text"
    if value["evaluation"].lstrip().startswith(LLASO_ERROR_PREFIX):
        return "judge_error", f"index {index}: the judge call failed: {value['evaluation'][:120]!r}"
    return PublishedVerdict(file, line, index, value["predicted"], value["reference"], value["evaluation"])


def read_published(folders: Iterable[Path]) -> PublishedVerdicts:
    """Every ``<stem>_test.jsonl`` of the existing ``gpt_result`` folders among ``folders``
    (a folder met twice is read once; earlier folders first)."""
    result = PublishedVerdicts()
    seen: set[Path] = set()
    for folder in folders:
        if not folder.is_dir() or folder.resolve() in seen:
            continue
        seen.add(folder.resolve())
        for path in sorted(folder.glob("*.jsonl")):
            name = str(path)
            lines = result.by_stem.setdefault(stem_of(path).stem, StemVerdicts())
            for raw in iter_raw_records(path):
                parsed = raw.error or parse_published_line(raw.value, name, raw.ordinal)
                if isinstance(parsed, PublishedVerdict):
                    lines.verdicts.append(parsed)
                else:
                    lines.problems.append(RecordProblem(name, raw.ordinal, *parsed))
    return result


def match_published(records: list[PredictionRecord], published: StemVerdicts,
                    label: str) -> tuple[dict[int, Verdict], list[RecordProblem]]:
    """LLaSO's verdicts on a prediction file's records, by record position (``ordinal``),
    and a problem for each line not used: the lines that are not verdicts, then each
    verdict with no record at its ``index`` (reason ``verdict_without_record``), with texts
    that are not the record's (``verdict_mismatch``, naming ``label``, the prediction file),
    or a second one for a record (``duplicate_verdict``)."""
    by_ordinal = {r.ordinal: r for r in records}
    matched: dict[int, Verdict] = {}
    problems: list[RecordProblem] = list(published.problems)
    for verdict in published.verdicts:
        record = by_ordinal.get(verdict.index)
        reason = None
        if record is None:
            reason = ("verdict_without_record", f"index {verdict.index}: {label} has no scorable record there")
        elif verdict.index in matched:
            reason = ("duplicate_verdict", f"index {verdict.index}: a second verdict for one record of {label}")
        else:
            differs = [name for name, theirs, ours in (("predicted", verdict.predicted, record.prediction),
                                                       ("reference", verdict.reference, record.reference))
                       if theirs.strip() != ours.strip()]
            if differs:
                reason = ("verdict_mismatch",
                          f"index {verdict.index}: {' and '.join(differs)} text differs from record "
                          f"{record.ordinal} of {label} (verdict {_excerpt(verdict.predicted)} / "
                          f"{_excerpt(verdict.reference)}, record {_excerpt(record.prediction)} / "
                          f"{_excerpt(record.reference)}); not used")
        if reason is None:
            matched[verdict.index] = Verdict.of(LLASO_JUDGE, verdict.reference, verdict.predicted,
                                                verdict.evaluation)
        else:
            problems.append(RecordProblem(verdict.file, verdict.line, *reason))
    return matched, problems


def _excerpt(text: str, limit: int = 40) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ---------------------------------------------------------------- what the scorer consults

@dataclass
class VerdictStore:
    """Where the scorer finds verdicts before (or instead of) asking a judge.

    ``cache`` holds verdicts by key; ``identity`` is the judge whose cached verdicts are
    reused (None: only LLaSO's published ones are; with a live judge it is that judge's);
    ``published_folders`` are ``gpt_result`` folders read besides the one inside each
    prediction folder; ``on_new`` receives every verdict a live judge gives (the caller
    appends it to the cache file), from the scoring threads.
    """

    cache: JudgeCache = field(default_factory=JudgeCache)
    identity: JudgeIdentity | None = None
    published_folders: tuple[Path, ...] = ()
    on_new: Callable[[Verdict], None] | None = None

    def published_for(self, pred_dir: Path) -> PublishedVerdicts:
        """LLaSO's verdicts for a prediction folder: its own ``gpt_result/``, then ours."""
        return read_published([pred_dir / PUBLISHED_FOLDER, *self.published_folders])


def cache_identity(cache: JudgeCache, source: str) -> JudgeIdentity | None:
    """The one judge whose verdicts ``cache`` holds (None when empty); ValueError naming
    ``source`` and the judges when it holds several."""
    identities = cache.identities()
    if len(identities) > 1:
        names = ", ".join(sorted(map(str, identities)))
        raise ValueError(f"{source}: holds verdicts of several judges ({names}); "
                         f"name the one to reuse with --judge-model NAME")
    return next(iter(identities), None)
