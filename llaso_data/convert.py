"""Convert a corpus into stratified WebDataset shards with Ray Data.

The pipeline (the driver holds counts and shard names only, never the records):

1. read: one Ray task per annotation file streams it into rows (a normalised sample or a
   rejection, as JSON), so a 12M-record file never sits in one process's memory whole;
2. count: samples per (split, modality, task) give each stratum ``ceil(n / samples_per_shard)``
   shards;
3. assign: a seeded hash of the key picks the shard; only this metadata is shuffled;
4. write: one task per shard (a Ray ``groupby().map_groups``) reads the audio itself, writes
   the tar atomically and records its rows in ``OUT/.state/<shard>.json``;
5. finish: manifest, index and rejects are assembled from the state files in sorted order,
   and the accounting identity ``read = written + rejected`` is checked.

A re-run with the same options skips every shard whose tar and state file exist, so a
killed conversion resumes and ends byte-identical to an uninterrupted one.

Ray must be initialised by the caller (CLI or ``pipelines/``); this module never starts
or stops a cluster.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .corpus import UnknownStemWarning, annotation_files, corpus_root, iter_file
from .manifest import (INDEX_FILE, INDEX_SCHEMA, MANIFEST_FILE, MANIFEST_SCHEMA, REJECTS_FILE,
                       REJECTS_SCHEMA, REPORT_FILE, StreamingTableWriter, write_table)
from .records import Sample
from .shards import ShardResult, shard_index, shard_name, write_shard
from .validate import FileContext

STATE_DIR = ".state"
_ROW_BATCH = 4096


@dataclass(frozen=True)
class ConvertOptions:
    """What to convert and how.

    ``audio_root`` defaults to the corpus folder (the folder of SRC when SRC is a file).
    ``samples_per_shard`` is a target; shard sizes vary around it (seeded hash assignment).
    """

    source: Path
    out: Path
    audio_root: Path | None = None
    audio_mode: str = "passthrough"
    samples_per_shard: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.samples_per_shard < 1:
            raise ValueError("samples_per_shard must be at least 1")
        if self.audio_mode not in ("passthrough", "flac16k"):
            raise ValueError(f"audio mode must be passthrough or flac16k, not {self.audio_mode!r}")

    @property
    def resolved_audio_root(self) -> Path:
        return (self.audio_root or corpus_root(self.source)).resolve()

    def fingerprint(self) -> dict:
        """The options that determine the output bytes (paths are not among them)."""
        return {"audio_mode": self.audio_mode, "samples_per_shard": self.samples_per_shard,
                "seed": self.seed, "format": 1}


@dataclass
class Progress:
    """Shards and samples handled so far, and seconds elapsed. ``shards_total`` is an upper
    bound (a hash slot may draw no sample); ``samples_total`` is exact, and a sample counts
    as handled once written or rejected for its audio."""

    shards_done: int
    shards_total: int
    samples_done: int
    samples_total: int
    elapsed: float


@dataclass
class ConvertReport:
    read: int = 0
    written: int = 0
    rejected: int = 0
    shards: int = 0
    shards_reused: int = 0
    audio_seconds: float = 0.0
    rejected_by_reason: dict = field(default_factory=dict)
    unknown_stems: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def identity_holds(self) -> bool:
        return self.read == self.written + self.rejected

    def to_dict(self) -> dict:
        return {**asdict(self), "identity_holds": self.identity_holds}


class ConversionError(RuntimeError):
    """The output folder cannot be used (it holds a conversion made with other options)."""


def convert(options: ConvertOptions, on_progress: Callable[[Progress], None] | None = None) -> ConvertReport:
    """Run the conversion on the current Ray cluster; returns its report (also written to
    ``OUT/report.json``). Raises :class:`ConversionError` for an incompatible OUT."""
    import ray.data
    from ray.data.expressions import col

    started = time.perf_counter()
    out = options.out.resolve()
    _prepare_out(out, options)
    source = options.source.resolve()
    root = corpus_root(source)
    files = annotation_files(source)
    contexts = [FileContext.for_path(root, p) for p in files]
    report = ConvertReport(unknown_stems=[c.source for c in contexts if not c.stem.known])

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Task-based sort shuffle: hash shuffle starts aggregator actors, ~10 s of fixed cost
    # per groupby on a small machine, for no gain at metadata sizes.
    context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED

    rows = ray.data.from_items([{"path": str(p)} for p in files], override_num_blocks=max(len(files), 1))
    rows = rows.map_batches(_read_files, fn_kwargs={"root": str(root)}, batch_size=1).materialize()

    counts = {(r["kind"], r["split"], r["modality"], r["task"]): r["count()"]
              for r in rows.groupby(["kind", "split", "modality", "task"]).count().take_all()}
    shard_counts = {(s, m, t): math.ceil(n / options.samples_per_shard)
                    for (kind, s, m, t), n in counts.items() if kind == "sample"}
    samples_total = sum(n for (kind, *_), n in counts.items() if kind == "sample")
    report.read = sum(counts.values())

    assigned = rows.filter(expr=col("kind") == "sample").map_batches(
        _assign_shards, fn_kwargs={"shard_counts": shard_counts, "seed": options.seed}, batch_format="pyarrow")
    written = assigned.groupby("shard").map_groups(
        _write_shard_group, fn_kwargs={"out": str(out), "audio_root": str(options.resolved_audio_root),
                                       "audio_mode": options.audio_mode, "seed": options.seed},
        batch_format="pyarrow")
    shard_names = []
    samples_done = 0
    for batch in written.iter_batches(batch_size=None, batch_format="pyarrow"):
        for name, handled, reused in zip(batch["shard"].to_pylist(), batch["handled"].to_pylist(),
                                         batch["reused"].to_pylist()):
            shard_names.append(name)
            samples_done += handled
            report.shards_reused += reused
        if on_progress:
            on_progress(Progress(len(shard_names), sum(shard_counts.values()), samples_done,
                                 samples_total, time.perf_counter() - started))

    annotation_rejects = [json.loads(r["payload"]) for r in rows.filter(expr=col("kind") == "reject").iter_rows()]
    _finish(out, sorted(shard_names), annotation_rejects, report)
    report.seconds = time.perf_counter() - started
    (out / REPORT_FILE).write_text(json.dumps({"report": report.to_dict(), "options": options.fingerprint()},
                                              indent=2) + "\n")
    return report


def _prepare_out(out: Path, options: ConvertOptions) -> None:
    """Create OUT, refuse one converted with other options, remove leftovers of a crash."""
    state = out / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    recorded = state / "options.json"
    wanted = json.dumps(options.fingerprint(), sort_keys=True)
    if recorded.exists() and recorded.read_text() != wanted:
        raise ConversionError(f"{out} holds a conversion made with options {recorded.read_text()}, "
                              f"not {wanted}; convert into an empty folder")
    recorded.write_text(wanted)
    for leftover in out.rglob("*.tmp"):
        leftover.unlink()


def _finish(out: Path, shard_names: list[str], annotation_rejects: list[dict], report: ConvertReport) -> None:
    """Assemble manifest, index and rejects from the per-shard state files."""
    manifest_rows = []
    audio_rejects: list[dict] = []
    index = StreamingTableWriter(out / INDEX_FILE, INDEX_SCHEMA)
    for name in shard_names:
        state = json.loads(_state_path(out, name).read_text("utf-8"))
        if state["manifest"]["num_samples"]:
            manifest_rows.append(state["manifest"])
        index.write(state["index"])
        audio_rejects.extend(state["rejections"])
    index.close()
    rejects = sorted(annotation_rejects + audio_rejects, key=lambda r: (r["source"], r["ordinal"]))
    write_table(out / MANIFEST_FILE, manifest_rows, MANIFEST_SCHEMA)
    write_table(out / REJECTS_FILE, rejects, REJECTS_SCHEMA)
    report.shards = len(manifest_rows)
    report.written = sum(r["num_samples"] for r in manifest_rows)
    report.audio_seconds = sum(r["audio_seconds"] for r in manifest_rows)
    report.rejected = len(rejects)
    by_reason: dict[str, int] = {}
    for r in rejects:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    report.rejected_by_reason = dict(sorted(by_reason.items()))


def _state_path(out: Path, name: str) -> Path:
    return out / STATE_DIR / (name + ".json")


def _read_files(batch: dict[str, np.ndarray], root: str) -> Iterator[dict[str, list]]:
    """Ray UDF: annotation file paths in, rows of samples and rejections out (as JSON).

    Unknown-stem warnings are the driver's to report; they are silenced here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownStemWarning)
        for path in batch["path"]:
            rows = _empty_rows()
            for item in iter_file(Path(root), Path(path)):
                if isinstance(item, Sample):
                    _append(rows, "sample", item.split, item.modality, item.task, item.to_json())
                else:
                    _append(rows, "reject", "", "", "", json.dumps(item.to_dict(), ensure_ascii=False))
                if len(rows["kind"]) >= _ROW_BATCH:
                    yield rows
                    rows = _empty_rows()
            if rows["kind"]:
                yield rows


def _empty_rows() -> dict[str, list]:
    return {"kind": [], "split": [], "modality": [], "task": [], "payload": []}


def _append(rows: dict[str, list], kind: str, split: str, modality: str, task: str, payload: str) -> None:
    rows["kind"].append(kind)
    rows["split"].append(split)
    rows["modality"].append(modality)
    rows["task"].append(task)
    rows["payload"].append(payload)


def _assign_shards(batch, shard_counts: dict, seed: int):
    """Ray UDF: add the ``shard`` column (relative shard path) to a batch of sample rows."""
    import pyarrow as pa

    names = []
    for split, modality, task, payload in zip(batch["split"].to_pylist(), batch["modality"].to_pylist(),
                                              batch["task"].to_pylist(), batch["payload"].to_pylist()):
        count = shard_counts[(split, modality, task)]
        key = json.loads(payload)["key"]
        names.append(shard_name(split, modality, task, shard_index(key, seed, count)))
    return batch.append_column("shard", pa.array(names, pa.string()))


def _write_shard_group(batch, out: str, audio_root: str, audio_mode: str, seed: int):
    """Ray UDF: all rows of one shard in, the shard written (or found done) out."""
    import pyarrow as pa

    out_path = Path(out)
    name = batch["shard"][0].as_py()
    state_path = _state_path(out_path, name)
    if state_path.exists():
        state = json.loads(state_path.read_text("utf-8"))
        if not state["manifest"]["num_samples"] or (out_path / name).exists():
            handled = state["manifest"]["num_samples"] + len(state["rejections"])
            return pa.table({"shard": [name], "handled": [handled], "reused": [True]})
    samples = [Sample.from_json(p) for p in batch["payload"].to_pylist()]
    result = write_shard(out_path, name, samples, Path(audio_root), audio_mode, seed)
    _save_state(state_path, result)
    return pa.table({"shard": [name], "handled": [len(samples)], "reused": [False]})


def _save_state(path: Path, result: ShardResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({
        "manifest": result.manifest, "index": result.index,
        "rejections": [r.to_dict() for r in result.rejections],
    }, ensure_ascii=False), "utf-8")
    temporary.replace(path)
