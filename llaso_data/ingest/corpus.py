"""Walk a corpus (a file or a directory in the LLaSO/LLaSM layouts) record by record.

Supported layouts, all found by walking ``*.json``/``*.jsonl`` files in sorted order:

* LLaSO-Align: ``text_audio/ASR_stage1_train.json``;
* LLaSO-Instruct / LLaSO-Eval: ``{text_audio,audio_text,pure_audio}/<stem>_{train,test}.json``;
* LLaSM-style: any folder of multi-turn ``conversations`` files (JSON or JSONL);
* a parent folder holding several of these (e.g. what ``llaso-shard synth`` writes).

A ``.json`` file holding one object instead of an array is one record (as LLaSO's
``data_merge.py`` reads it), with a ``readers.SingleObjectWarning`` naming the file.

Files named ``synth_summary.json``, ``*.summary.json``, or inside hidden folders are not
annotation files and are skipped.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from llaso_data.ingest.archives import AudioSource
from llaso_data.ingest.paths import AudioPathError
from llaso_data.ingest.readers import iter_raw_records
from llaso_data.records import Rejection, Sample
from llaso_data.ingest.validate import FileContext, normalise_record

_NOT_ANNOTATIONS = {"synth_summary.json"}


class UnknownStemWarning(UserWarning):
    """A file stem that matches no known task; its records ingest with the stem as task."""


def annotation_files(source: Path | str) -> list[Path]:
    """Every annotation file under ``source`` (or ``source`` itself), sorted by path."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"corpus source not found: {source}")
    return sorted(
        path for path in source.rglob("*")
        if path.suffix.lower() in (".json", ".jsonl")
        and path.is_file()
        and path.name not in _NOT_ANNOTATIONS
        and not any(part.startswith(".") for part in path.relative_to(source).parts)
    )


def corpus_root(source: Path | str) -> Path:
    """The folder source paths are made relative to (the source, or a file's parent)."""
    source = Path(source)
    return source if source.is_dir() else source.parent


def file_context(root: Path, path: Path) -> FileContext:
    """The context of one annotation file; warns once for a stem outside the catalogue."""
    context = FileContext.for_path(root, path)
    if not context.stem.known:
        warnings.warn(
            f"{context.source}: stem {context.stem.stem!r} matches no known task; "
            f"its records are kept with task {context.stem.task!r}",
            UnknownStemWarning, stacklevel=2,
        )
    return context


def iter_file(root: Path | str, path: Path | str) -> Iterator[Sample | Rejection]:
    """Samples and rejections of one annotation file, in file order. Any exception one
    record raises while it is validated becomes its ``record_error`` rejection."""
    root, path = Path(root), Path(path)
    context = file_context(root, path)
    for raw in iter_raw_records(path):
        try:
            yield normalise_record(raw, context)
        except (MemoryError, KeyboardInterrupt, GeneratorExit):
            raise
        except Exception as error:
            yield Rejection(context.source, raw.ordinal, "record_error", f"{type(error).__name__}: {error}",
                            raw.raw[:4096], raw.byte_offset)


def iter_corpus(source: Path | str) -> Iterator[Sample | Rejection]:
    """Samples and rejections of every annotation file under ``source``, in path order."""
    source = Path(source)
    root = corpus_root(source)
    for path in annotation_files(source):
        yield from iter_file(root, path)


@dataclass
class ScanReport:
    """Counts of one pass over a corpus.

    ``samples`` counts valid samples per (split, modality, task, category);
    ``rejected`` counts rejections per reason; ``read`` = valid + rejected;
    ``examples`` keeps the first few rejections for display.
    """

    samples: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)
    files: int = 0
    max_examples: int = 5

    @property
    def valid(self) -> int:
        return sum(self.samples.values())

    @property
    def read(self) -> int:
        return self.valid + sum(self.rejected.values())

    def add(self, item: Sample | Rejection) -> None:
        if isinstance(item, Sample):
            self.samples[(item.split, item.modality, item.task, item.category)] += 1
            return
        self.rejected[item.reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(item)

    def to_dict(self) -> dict:
        return {
            "samples": [
                {"split": s, "modality": m, "task": t, "category": c, "count": n}
                for (s, m, t, c), n in sorted(self.samples.items())
            ],
            "rejected": dict(sorted(self.rejected.items())),
        }


def check_audio_exists(sample: Sample, audio: AudioSource) -> Sample | Rejection:
    """The sample, or its rejection when a clip is missing, resolves outside the root, or
    (zip parts) names a member several parts hold."""
    try:
        audio.locate(sample.audio)
    except AudioPathError as error:
        return Rejection(sample.source, sample.ordinal, error.reason, str(error),
                         sample.to_json(), None, sample.key)
    return sample


def scan(source: Path | str, audio: AudioSource | None = None, max_examples: int = 5) -> ScanReport:
    """Read every record under ``source`` once and count samples and rejections.

    With ``audio`` (an ``AudioRoot``, or an ``ArchiveSource`` over zip parts),
    also check that every clip exists in it (one ``stat``, or one index look-up, per clip).
    """
    source = Path(source)
    report = ScanReport(max_examples=max_examples)
    root = corpus_root(source)
    for path in annotation_files(source):
        report.files += 1
        for item in iter_file(root, path):
            if audio is not None and isinstance(item, Sample):
                item = check_audio_exists(item, audio)
            report.add(item)
    return report
