"""Score a folder of prediction files: one :class:`StemScore` per file (stem).

The metric of a file follows its task (``llaso_data.tasks`` maps the stem to the task);
"normalised" maps it to 0..1, higher is better:

* ASR (and stage-1 ALIGN): ``wer``, or ``cer`` when most references are CJK text;
  normalised ``max(0, 1 - rate)``.
* PR: ``per`` (phone error rate); normalised ``max(0, 1 - rate)``.
* SGC, AC, SSD, ER, EIE, SV, VSC, IC, ISC, VC, and AR with label references
  (``Twenties``, ``20-24.``): ``accuracy`` plus ``abstention_rate``; normalised = accuracy.
* PP (MIDI number) and AR with numeric references: ``mae``; normalised = the mean over
  records of ``max(0, 1 - |error| / S)`` with S from :data:`MAE_SCALES`, an unparsed
  prediction earning 0.
* PSWL, PSSL: ``exact_match`` of the integer scores; normalised = the value.
* AQA, IP, SCR, EE (and LLaSM CONV): ``judge``, the mean 1..5 score; normalised
  ``(mean - 1) / 4``. A judge answer without a readable score counts as 1, the lowest
  (reported as ``unparsed``), as MAE and exact match give an unparsed prediction 0.

Texts are normalised as :mod:`llaso_eval.normalize` documents; accuracy and abstention
follow LLaSO's definition (:mod:`llaso_eval.metrics`); MAE reads the first number of a
prediction and reports predictions without one as ``unparsed`` (left out of the MAE,
0 in the normalised score). An empty prediction gets judge score 1 without a verdict.

**Judge verdicts** come, record by record, from (1) LLaSO's published verdicts for that
record (``gpt_result/``, matched by position and text), (2) the judge cache, for the
judge of :attr:`VerdictStore.identity`, (3) the live judge, whose verdicts go to the
cache (the same texts asked once per run); see :mod:`llaso_eval.judge_cache`. A record
with none is *missing*: left out of the mean and counted. ``verdicts`` on the stem counts
records by source; a judge stem where no record has a verdict (empty predictions aside)
has value None and ``skipped`` says why.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import metrics, normalize
from .judge import Judge
from .judge_cache import (JudgeIdentity, PublishedVerdicts, StemVerdicts, Verdict, VerdictStore, match_published,
                          verdict_key)
from .predictions import PredictionFile, PredictionRecord, RecordProblem, find_prediction_files, read_prediction_file

CLASSIFICATION_TASKS = ("SGC", "AC", "SSD", "ER", "EIE", "SV", "VSC", "IC", "ISC", "VC")
JUDGE_TASKS = ("AQA", "IP", "SCR", "EE", "CONV")
MAE_SCALES = {"PP": 12.0, "AR": 10.0}
"""The absolute error (MIDI semitones for PP, years for AR) at which a record's normalised
credit reaches 0: one octave, and ten years."""
_UNITS: dict[str, Callable[[str], list[str]]] = {
    "wer": lambda text: normalize.normalize_text(text).split(),
    "cer": lambda text: list(normalize.normalize_characters(text)),
    "per": normalize.phone_symbols,
}
NO_JUDGE = "needs an LLM judge and none is configured"
LOWEST_JUDGE_SCORE = 1
"""What a record scores when its prediction is empty or its verdict holds no readable score."""
VERDICT_SOURCES = ("cache", "live", "empty", "missing", "rejected")
"""Keys of :attr:`StemScore.verdicts`: records judged from the cache (the cache file or
LLaSO's ``gpt_result``), by the live judge, given 1 for an empty prediction, left without a
verdict; and ``rejected``, published verdicts of the file not used (see the problems)."""


@dataclass
class StemScore:
    """The score of one prediction file.

    ``metric`` is one of ``wer cer per accuracy mae exact_match judge`` (None when the
    stem is not scored); ``value`` is in the metric's own unit (a fraction for rates and
    accuracy, semitones or years for MAE, 1..5 for judge), None when it could not be
    computed; ``n`` counts the scorable records; ``normalized`` maps the value to 0..1,
    higher is better (see the module docstring). ``abstention_rate`` (a fraction) is set
    for classification only; ``unparsed`` counts predictions holding no number (MAE), no
    score (exact_match) or judge answers without a score (judge). ``rejected`` counts
    records that could not be scored (see the problems); ``skipped`` says why a stem has
    no value. ``verdicts`` (judge only) counts records by where their verdict came from
    (:data:`VERDICT_SOURCES`); ``judges`` names the judges that gave them. For a judge
    stem ``n`` counts the records with a score (a record without a verdict is not scored).
    """

    stem: str
    task: str
    category: str
    metric: str | None
    value: float | None
    n: int
    normalized: float | None = None
    abstention_rate: float | None = None
    unparsed: int | None = None
    rejected: int = 0
    skipped: str | None = None
    file: str = ""
    verdicts: dict[str, int] | None = None
    judges: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        """The JSON form: ``metric``, ``value``, ``n`` always; optional fields when set."""
        data = {"task": self.task, "category": self.category, "metric": self.metric, "value": self.value,
                "n": self.n, "normalized": self.normalized}
        for name in ("abstention_rate", "unparsed", "skipped", "verdicts"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.judges is not None:
            data["judges"] = list(self.judges)
        data["rejected"] = self.rejected
        data["file"] = self.file
        return data

    @classmethod
    def from_dict(cls, stem: str, data: dict) -> "StemScore":
        """Inverse of :meth:`to_dict` (what ``llaso-eval score --json`` printed for ``stem``)."""
        try:
            return cls(stem=stem, task=data["task"], category=data["category"], metric=data["metric"],
                       value=data["value"], n=int(data["n"]), normalized=data.get("normalized"),
                       abstention_rate=data.get("abstention_rate"), unparsed=data.get("unparsed"),
                       rejected=int(data.get("rejected", 0)), skipped=data.get("skipped"),
                       file=data.get("file", ""), verdicts=_counts(data.get("verdicts")),
                       judges=None if data.get("judges") is None else tuple(map(str, data["judges"])))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"stem {stem!r}: not a stem score ({error!r})") from None


def _counts(value) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"verdicts must be an object of counts, found {type(value).__name__}")
    return {str(k): int(v) for k, v in value.items()}


@dataclass
class DirectoryScore:
    """Every stem of a prediction folder (in path order), every record not scored, and
    every published verdict not used (``verdict_problems``)."""

    stems: dict[str, StemScore] = field(default_factory=dict)
    problems: list[RecordProblem] = field(default_factory=list)
    verdict_problems: list[RecordProblem] = field(default_factory=list)

    def to_dict(self) -> dict[str, dict]:
        """``{stem: StemScore.to_dict()}``: the ``llaso-eval score --json`` contract."""
        return {stem: score.to_dict() for stem, score in self.stems.items()}


def score_directory(pred_dir: Path, judge: Judge | None = None, judge_workers: int = 8,
                    progress: Callable[[StemScore], None] | None = None,
                    verdicts: VerdictStore | None = None) -> DirectoryScore:
    """Score every prediction file under ``pred_dir`` (see
    :func:`llaso_eval.predictions.find_prediction_files`); ``progress`` is called after each
    file. With ``verdicts``, judged records take their verdicts from it first (LLaSO's
    ``gpt_result/`` inside ``pred_dir`` included), and only the rest go to ``judge``."""
    result = DirectoryScore()
    paths = find_prediction_files(pred_dir)
    published = verdicts.published_for(pred_dir) if verdicts is not None else PublishedVerdicts()
    for path in paths:
        predictions = read_prediction_file(path, name=path.relative_to(pred_dir).as_posix())
        stem_score, problems, verdict_problems = score_file(
            predictions, judge, judge_workers, verdicts, published.of(predictions.stem.stem))
        result.stems[stem_score.stem] = stem_score
        result.problems.extend(problems)
        result.verdict_problems.extend(verdict_problems)
        if progress is not None:
            progress(stem_score)
    return result


def metric_for(task: str, references: list[str]) -> str | None:
    """The metric a file of ``task`` with these gold texts is scored with (None: not scored)."""
    if task in ("ASR", "ALIGN"):
        return "cer" if sum(map(normalize.is_cjk, references)) * 2 > len(references) else "wer"
    if task == "PR":
        return "per"
    if task == "PP" or (task == "AR" and references and all(map(metrics.is_number, references))):
        return "mae"
    if task in CLASSIFICATION_TASKS or task == "AR":
        return "accuracy"
    if task in ("PSWL", "PSSL"):
        return "exact_match"
    if task in JUDGE_TASKS:
        return "judge"
    return None


def score_file(predictions: PredictionFile, judge: Judge | None = None, judge_workers: int = 8,
               verdicts: VerdictStore | None = None, published: StemVerdicts | None = None,
               ) -> tuple[StemScore, list[RecordProblem], list[RecordProblem]]:
    """The score of one file, the problems of its records that were not scored, and those
    of the published verdicts (``published``: LLaSO's lines for this stem) not used."""
    info = predictions.stem
    problems = list(predictions.problems)
    base = {"stem": info.stem, "task": info.task, "category": info.category, "file": predictions.name}
    records = predictions.records
    metric = metric_for(info.task, [r.reference for r in records])
    if metric is None:
        return StemScore(**base, metric=None, value=None, n=len(records), rejected=len(problems),
                         skipped="the stem matches no LLaSO task"), problems, []
    records, invalid = _scorable(records, metric, info.task, predictions.name)
    problems += invalid
    if not records:
        return StemScore(**base, metric=metric, value=None, n=0, rejected=len(problems),
                         skipped="no scorable records"), problems, []
    if metric == "judge":
        score, verdict_problems = _judged(records, judge, judge_workers, verdicts, published or StemVerdicts(),
                                          predictions.name)
        return StemScore(**base, **score.__dict__, rejected=len(problems)), problems, verdict_problems
    score = _SCORERS[metric](records, metric, info.task)
    return StemScore(**base, **score.__dict__, rejected=len(problems)), problems, []


@dataclass
class _Partial:
    """What a metric fills in; the rest of a :class:`StemScore` comes from the file."""

    metric: str
    value: float | None
    n: int
    normalized: float | None
    abstention_rate: float | None = None
    unparsed: int | None = None
    skipped: str | None = None
    verdicts: dict[str, int] | None = None
    judges: tuple[str, ...] | None = None


def _scorable(records: list[PredictionRecord], metric: str, task: str,
              label: str) -> tuple[list[PredictionRecord], list[RecordProblem]]:
    """Records whose reference the metric can use, and a problem for each other one."""
    kept, problems = [], []
    for record in records:
        reason = None
        if metric in _UNITS and not _UNITS[metric](record.reference):
            reason = ("empty_reference", f"the reference has no {metric[0]}-units left after normalisation")
        elif metric == "mae" and not metrics.is_number(record.reference):
            reason = ("reference_not_a_number", f"{task} needs a numeric reference, found {record.reference[:60]!r}")
        elif metric == "exact_match" and not metrics.pronunciation_scores(record.reference):
            reason = ("reference_without_scores", "the reference holds no pronunciation score")
        if reason is None:
            kept.append(record)
        else:
            problems.append(RecordProblem(label, record.ordinal, *reason))
    return kept, problems


def _error_rate(records: list[PredictionRecord], metric: str, task: str) -> _Partial:
    units = _UNITS[metric]
    rate = metrics.error_rate([units(r.reference) for r in records], [units(r.prediction) for r in records])
    return _Partial(metric, rate.rate, len(records), max(0.0, 1.0 - rate.rate))


def _accuracy(records: list[PredictionRecord], metric: str, task: str) -> _Partial:
    result = metrics.classify([r.reference for r in records], [r.prediction for r in records])
    return _Partial("accuracy", result.accuracy, result.n, result.accuracy, abstention_rate=result.abstention_rate)


def _mae(records: list[PredictionRecord], metric: str, task: str) -> _Partial:
    golds = [metrics.parse_number(r.reference) for r in records]
    result = metrics.mean_absolute_error(golds, [r.prediction for r in records], MAE_SCALES[task])
    return _Partial("mae", result.mae, result.n, result.credit, unparsed=result.unparsed)


def _exact_match(records: list[PredictionRecord], metric: str, task: str) -> _Partial:
    result = metrics.score_match([r.reference for r in records], [r.prediction for r in records])
    return _Partial("exact_match", result.value, result.n, result.value, unparsed=result.unparsed)


def _judged(records: list[PredictionRecord], judge: Judge | None, workers: int, store: VerdictStore | None,
            published: StemVerdicts, label: str) -> tuple[_Partial, list[RecordProblem]]:
    """The mean judge score of the records that have a verdict (module docstring)."""
    matched, problems = match_published(records, published, label)
    identity = (JudgeIdentity(judge.model, judge.prompt_version) if judge is not None
                else store.identity if store is not None else None)
    uses_question = judge is not None and judge.uses_question
    found: dict[int, Verdict | None] = {}
    sources = dict.fromkeys(VERDICT_SOURCES, 0)
    sources["rejected"] = len(problems)
    wanted: dict[str, PredictionRecord] = {}  # cache key -> the first record asking for it
    keys: dict[int, str] = {}
    for record in records:
        question = record.question if uses_question else None
        if not record.prediction.strip():
            sources["empty"] += 1
            found[record.ordinal] = None
        elif record.ordinal in matched:
            sources["cache"] += 1
            found[record.ordinal] = matched[record.ordinal]
        elif identity is not None and store is not None and (
                cached := store.cache.get(identity, record.reference, record.prediction, question)) is not None:
            sources["cache"] += 1
            found[record.ordinal] = cached
        elif judge is not None:
            sources["live"] += 1
            keys[record.ordinal] = verdict_key(identity, record.reference, record.prediction, question)
            wanted.setdefault(keys[record.ordinal], record)
        else:
            sources["missing"] += 1

    def ask(record: PredictionRecord) -> Verdict:
        question = record.question if uses_question else None
        verdict = Verdict.of(identity, record.reference, record.prediction,
                             judge.evaluate(record.question, record.reference, record.prediction), question)
        if store is not None:
            store.cache.add(verdict)
            if store.on_new is not None:
                store.on_new(verdict)
        return verdict

    if wanted:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            answers = dict(zip(wanted, pool.map(ask, wanted.values())))
        found |= {ordinal: answers[key] for ordinal, key in keys.items()}
    scores = [LOWEST_JUDGE_SCORE if v is None or v.score is None else v.score for v in found.values()]
    unparsed = sum(1 for v in found.values() if v is not None and v.score is None)
    judges = tuple(sorted({str(v.judge) for v in found.values() if v is not None}))
    if sources["missing"] and not sources["cache"] + sources["live"]:  # empty predictions alone do not score a file
        return _Partial("judge", None, len(records), None, skipped=NO_JUDGE, verdicts=sources,
                        judges=judges), problems
    mean = sum(scores) / len(scores)
    return _Partial("judge", mean, len(scores), (mean - 1.0) / 4.0, unparsed=unparsed, verdicts=sources,
                    judges=judges), problems


_SCORERS = {"wer": _error_rate, "cer": _error_rate, "per": _error_rate, "accuracy": _accuracy,
            "mae": _mae, "exact_match": _exact_match}
