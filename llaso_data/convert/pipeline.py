"""Convert a corpus into stratified WebDataset shards with Ray Data.

The pipeline (the driver holds counts and shard names only, never the records):

1. read: one Ray task per annotation file streams it into rows (a normalised sample or a
   rejection, as JSON), so a 12M-record file never sits in one process's memory whole;
   the rows stay in Ray's object store (materialised once);
2. count: each block is tallied where it lies (samples per (split, modality, task), plus
   its rejections) and the driver adds the tallies up: each stratum gets
   ``ceil(n / samples_per_shard)`` shards. No shuffle;
3. assign + shuffle: a seeded hash of the key picks the shard (a pure function of key,
   seed and count); one sort by shard, with boundaries computed from the counts rather
   than sampled, moves the sample metadata (never audio) so that each write task gets
   whole shards (one shard per task up to 256 shards);
4. write: the task writing a shard reads its audio itself (loose files, or members of
   zip parts through the member index that ``archive_table`` builds in Ray tasks before
   step 1 and caches in ``OUT/.archives``), writes the tar atomically and records its rows
   in ``OUT/.state/<shard>.json``;
5. finish: manifest, index and rejects are assembled from the state files in sorted order,
   and the accounting identity ``read = written + rejected`` is checked.

A re-run with the same options reuses every shard whose tar exists and whose state file
records the same inputs (its samples' JSON, its clips' paths, sizes and mtimes: see
:mod:`~llaso_data.convert.resume`), rewrites the others and deletes shards no longer
produced, so a killed conversion resumes, and a conversion of changed sources updates,
to the bytes a fresh conversion would write. One conversion at a time holds OUT (see
:mod:`~llaso_data.convert.lock`).

Ray must be initialised by the caller (CLI or ``pipelines/``); this module never starts
or stops a cluster.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from llaso_data.convert.archive_table import CACHE_DIR, build_member_index
from llaso_data.convert.lock import OutputBusyError, out_lock
from llaso_data.convert.resume import ARCHIVE_CLIP, changed_sources, shard_input_digest, source_fingerprint
from llaso_data.convert.shard_writer import ShardResult, shard_index, shard_name, write_shard
from llaso_data.ingest.archives import ArchiveSet, ArchiveSource, AudioSource, refuse_archive_root
from llaso_data.ingest.corpus import UnknownStemWarning, annotation_files, corpus_root, iter_file
from llaso_data.ingest.paths import AudioPathError, AudioRoot
from llaso_data.ingest.validate import FileContext
from llaso_data.manifest import (INDEX_FILE, INDEX_SCHEMA, MANIFEST_FILE, MANIFEST_SCHEMA, REJECTS_FILE,
                               REJECTS_SCHEMA, REPORT_FILE, StreamingTableWriter, write_table)
from llaso_data.records import Sample
from llaso_data.storage import StorageError, Store, is_url, open_store

STATE_DIR = ".state"
SOURCES_FILE = "sources.json"
_ROW_BATCH = 4096
# Write tasks: many small ones balance the CPUs best (a task start costs ~10 ms); past
# 256 shards a task takes several, so that the shuffle's pieces (read blocks x write
# tasks) stay few, but never over 20,000 samples of metadata.
_MIN_WRITE_TASKS = 256
_WRITE_TASKS_PER_CPU = 4
_MAX_SAMPLES_PER_WRITE_TASK = 20_000


@dataclass(frozen=True)
class ConvertOptions:
    """What to convert and how.

    ``audio_root`` defaults to the corpus folder (the folder of SRC when SRC is a file).
    ``audio_archives``: glob patterns (or paths) of zip parts to read the audio from in
    place, instead of loose files under ``audio_root`` (the two exclude each other).
    ``samples_per_shard`` is a target; shard sizes vary around it (seeded hash assignment).
    Paths may be given as ``str`` or ``Path``; ``out`` may also be an object-store URL
    (``s3://bucket/prefix``, kept as a string).
    """

    source: Path
    out: Path | str
    audio_root: Path | None = None
    audio_mode: str = "passthrough"
    samples_per_shard: int = 1000
    seed: int = 0
    audio_archives: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("source", "out", "audio_root"):  # str or Path in, Path kept (a URL stays a str)
            if getattr(self, name) is not None and not (name == "out" and is_url(self.out)):
                object.__setattr__(self, name, Path(getattr(self, name)))
        if isinstance(self.samples_per_shard, bool) or not isinstance(self.samples_per_shard, int):
            raise ValueError(f"samples_per_shard must be an integer, not {self.samples_per_shard!r}")
        object.__setattr__(self, "audio_archives", tuple(str(p) for p in self.audio_archives))
        if self.audio_archives and self.audio_root is not None:
            raise ValueError("give --audio-root (loose files) or --audio-archives (zip parts), not both")
        if self.samples_per_shard < 1:
            raise ValueError("samples_per_shard must be at least 1")
        if self.audio_mode not in ("passthrough", "flac16k"):
            raise ValueError(f"audio mode must be passthrough or flac16k, not {self.audio_mode!r}")

    @property
    def resolved_audio_root(self) -> Path:
        return (self.audio_root or corpus_root(self.source)).resolve()

    def fingerprint(self) -> dict:
        """The options that determine the output bytes (paths are not among them).
        ``format`` 3: flac16k writes libFLAC level 0 in 4,096-sample frames and keeps a
        16 kHz mono 16-bit FLAC source as it is (format 1 wrote libsndfile's default level;
        an OUT converted with another format is refused, not mixed)."""
        return {"audio_mode": self.audio_mode, "samples_per_shard": self.samples_per_shard,
                "seed": self.seed, "format": 3}


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
    shards_removed: int = 0
    sources_changed: list = field(default_factory=list)
    audio_seconds: float = 0.0
    rejected_by_reason: dict = field(default_factory=dict)
    unknown_stems: list = field(default_factory=list)
    single_objects: list = field(default_factory=list)  # .json files holding one object: one record each
    seconds: float = 0.0
    stage_seconds: dict = field(default_factory=dict)  # [archives,] read, count, write (incl. shuffle), finish
    archives: dict = field(default_factory=dict)  # zip parts: see archive_table.TableReport

    @property
    def identity_holds(self) -> bool:
        return self.read == self.written + self.rejected

    def to_dict(self) -> dict:
        return {**asdict(self), "identity_holds": self.identity_holds}


class ConversionError(RuntimeError):
    """The conversion cannot start or go on: the output folder is busy, unusable or holds
    a conversion made with other options, or a failure that is not about one record (a
    full disk, a permission) stopped it. The message is one line naming the path."""


class RunError(RuntimeError):
    """Raised inside a Ray task for a failure that is not about one record; carries the
    one-line message the driver reports."""


def convert(options: ConvertOptions, on_progress: Callable[[Progress], None] | None = None,
            write_tasks: int | None = None) -> ConvertReport:
    """Run the conversion on the current Ray cluster; returns its report (also written to
    ``OUT/report.json``). Raises :class:`ConversionError` for an incompatible OUT.

    ``write_tasks`` is how many write tasks the shards are cut into (default: one per
    shard up to 256 shards; beyond that 256, or four per CPU of the cluster, or as many
    as keep a task under 20,000 samples, whichever is most). It changes how work is
    spread, never the output bytes."""
    started = time.perf_counter()
    out = open_store(options.out)
    state = _make_state_dir(out)
    try:
        # flock guards a local OUT; an object store offers no lock: one conversion per prefix
        lock = out_lock(state) if state is not None else contextlib.nullcontext()
        lock.__enter__()
    except OutputBusyError as error:
        raise ConversionError(str(error)) from None
    try:
        _prepare_out(out, options)
        return _convert(options, out, started, on_progress, write_tasks)
    except ConversionError:
        raise
    except Exception as error:  # Ray wraps what a task raised: find our one-line cause
        cause = _run_error(error)
        if cause is None:
            raise
        raise ConversionError(cause) from None
    finally:
        with contextlib.suppress(OSError):
            out.remove_temporaries()
        lock.__exit__(None, None, None)


def _run_error(error: BaseException) -> str | None:
    """The message of the :class:`RunError` (or local ``OSError``) behind ``error``, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error) is RunError:  # not Ray's wrapper, whose text is a whole traceback
            return str(error).splitlines()[0]  # Ray Data appends lines of advice to the message
        if isinstance(error, OSError) and error.filename:
            return f"{error.filename}: {error.strerror or error}"
        if isinstance(error, StorageError):  # its message names the URL
            return str(error).splitlines()[0]
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def _make_state_dir(out: Store) -> Path | None:
    """Create ``OUT/.state`` (for a local OUT; returns it) and check that OUT takes writes;
    :class:`ConversionError` when it cannot be used."""
    local = out.local_path
    if local is not None and local.exists() and not local.is_dir():
        raise ConversionError(f"{out.url}: exists and is not a folder")
    try:
        if local is not None:
            (local / STATE_DIR).mkdir(parents=True, exist_ok=True)
        out.write_bytes(f"{STATE_DIR}/probe-{os.getpid()}", b"")
        out.delete(f"{STATE_DIR}/probe-{os.getpid()}")
    except OSError as error:
        raise ConversionError(f"{out.url}: cannot write there: {error.strerror or error}") from None
    return local / STATE_DIR if local is not None else None


def _convert(options: ConvertOptions, out: Store, started: float,
             on_progress: Callable[[Progress], None] | None, write_tasks: int | None) -> ConvertReport:
    import ray
    import ray.data

    source = Path(options.source).resolve()
    root = corpus_root(source)
    files = annotation_files(source)
    sources = source_fingerprint(root, files)
    sources_path = f"{STATE_DIR}/{SOURCES_FILE}"
    before = json.loads(out.read_text(sources_path)) if out.exists(sources_path) else None
    contexts = [FileContext.for_path(root, p) for p in files]
    from llaso_data.ingest.readers import holds_single_object

    report = ConvertReport(unknown_stems=[c.source for c in contexts if not c.stem.known],
                           single_objects=[c.source for c, p in zip(contexts, files)
                                           if p.suffix.lower() == ".json" and holds_single_object(p)],
                           sources_changed=[] if before is None else changed_sources(before, sources))

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Task-based sort shuffle: hash shuffle starts aggregator actors, ~10 s of fixed cost
    # on a small machine, for no gain at metadata sizes.
    context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    # Per-operator resource reservation starts the write tasks one at a time and leaves
    # ~0.2 s between tasks on a CPU (measured on 2 CPUs). It guards streaming pipelines
    # against a starved downstream operator; here every execution ends in a barrier
    # (materialise, or the sort before the writes), so there is nothing to guard.
    context.op_resource_reservation_enabled = False

    stages = _StageClock(report.stage_seconds, started)
    audio = _audio_source(options, out, report)
    if options.audio_archives:
        stages.end("archives")
    rows = ray.data.from_items([{"path": str(p)} for p in files], override_num_blocks=max(len(files), 1))
    rows = rows.map_batches(_read_files, fn_kwargs={"root": str(root)}, batch_size=1).materialize()
    stages.end("read")

    counts: dict[tuple[str, str, str], int] = {}
    annotation_rejects: list[dict] = []
    for batch in rows.map_batches(_tally, batch_size=None, batch_format="pyarrow").iter_batches(
            batch_size=None, batch_format="pyarrow"):
        for split, modality, task, count, payload in zip(*(batch[c].to_pylist() for c in _TALLY_COLUMNS)):
            if payload:
                annotation_rejects.append(json.loads(payload))
            else:
                counts[(split, modality, task)] = counts.get((split, modality, task), 0) + count
    plan = ShardPlan.from_counts(counts, options.samples_per_shard)
    report.read = plan.samples + len(annotation_rejects)
    stages.end("count")

    cpus = int(ray.cluster_resources().get("CPU", 1))
    partitions = plan.partitions(write_tasks or max(_MIN_WRITE_TASKS, _WRITE_TASKS_PER_CPU * cpus,
                                                    math.ceil(plan.samples / _MAX_SAMPLES_PER_WRITE_TASK)))
    written = (rows.map_batches(_assign_shards, fn_kwargs={"plan": plan, "seed": options.seed},
                                batch_size=None, batch_format="pyarrow")
               .sort("shard_id", boundaries=partitions)
               .map_batches(_write_shards, fn_kwargs={"out": out.url, "audio": audio,
                                                      "audio_mode": options.audio_mode, "seed": options.seed,
                                                      "identity": options.fingerprint()},
                            batch_size=None, batch_format="pyarrow"))
    shard_names: list[str] = []
    samples_done = 0
    for batch in written.iter_batches(batch_size=None, batch_format="pyarrow"):
        for name, handled, reused in zip(batch["shard"].to_pylist(), batch["handled"].to_pylist(),
                                         batch["reused"].to_pylist()):
            shard_names.append(name)
            samples_done += handled
            report.shards_reused += reused
        if on_progress:
            on_progress(Progress(len(shard_names), plan.shards, samples_done, plan.samples,
                                 time.perf_counter() - started))
    if len(set(shard_names)) != len(shard_names):  # each shard is one task's: never split
        raise RuntimeError("a shard was written by more than one task; its tar may be incomplete")
    stages.end("write")
    del rows  # the read rows are no longer needed: let Ray free (or unspill) them
    report.shards_removed = _remove_stale(out, set(shard_names))
    _finish(out, sorted(shard_names), annotation_rejects, report)
    stages.end("finish")
    report.seconds = time.perf_counter() - started
    out.write_text(REPORT_FILE, json.dumps({"report": report.to_dict(), "options": options.fingerprint()},
                                           indent=2) + "\n")
    out.write_text(sources_path, json.dumps(sources, indent=1, sort_keys=True))
    return report


def _remove_stale(out: Store, current: set[str]) -> int:
    """Delete the tars and state files of shards this run did not produce (left by an
    earlier run over other sources); returns how many shards went."""
    removed = 0
    for name in out.list(suffix=".tar"):
        if not name.startswith(STATE_DIR + "/") and name not in current:
            out.delete(name)
            removed += 1
    for name in out.list(STATE_DIR, suffix=".tar.json"):
        if name[len(STATE_DIR) + 1:-len(".json")] not in current:
            out.delete(name)
    return removed


@dataclass(frozen=True)
class ShardPlan:
    """How many shards each stratum gets, and a global number for every shard slot.

    Stratum ``k`` (in sorted order) owns the slots ``first[k] .. first[k] + count[k] - 1``;
    a sample goes to slot ``first[k] + shard_index(key, seed, count[k])``. Holds one entry
    per stratum, never per sample.
    """

    strata: tuple[tuple[str, str, str], ...]
    samples_per_stratum: tuple[int, ...]
    shards_per_stratum: tuple[int, ...]

    @classmethod
    def from_counts(cls, counts: dict[tuple[str, str, str], int], samples_per_shard: int) -> "ShardPlan":
        strata = tuple(sorted(counts))
        return cls(strata, tuple(counts[s] for s in strata),
                   tuple(math.ceil(counts[s] / samples_per_shard) for s in strata))

    @property
    def samples(self) -> int:
        return sum(self.samples_per_stratum)

    @property
    def shards(self) -> int:
        """Shard slots; an upper bound on the shards written (a slot may draw no sample)."""
        return sum(self.shards_per_stratum)

    def first_slots(self) -> dict[tuple[str, str, str], tuple[int, int]]:
        """stratum -> (its first global slot, its shard count)."""
        firsts = itertools.accumulate(self.shards_per_stratum, initial=0)
        return {s: (first, n) for s, first, n in zip(self.strata, firsts, self.shards_per_stratum)}

    def partitions(self, wanted: int) -> list[int]:
        """Sort boundaries (global slots) cutting the slots into at most ``wanted`` runs of
        about equal expected sample counts, never splitting a shard. Ray sorts the sample
        rows by slot into these runs; each run is one write task."""
        expected = [n / k for n, k in zip(self.samples_per_stratum, self.shards_per_stratum) for _ in range(k)]
        target = sum(expected) / max(min(wanted, len(expected)), 1)
        boundaries, filled = [], 0.0
        for slot, size in enumerate(expected):
            # a new run starts at the first slot whose middle lies past the next multiple of target
            if slot and filled + size / 2 >= target * (len(boundaries) + 1):
                boundaries.append(slot)
            filled += size
        return boundaries or [len(expected)]  # Ray samples boundaries of its own when given none


class _StageClock:
    """Records into ``seconds[name]`` the time since the previous stage ended."""

    def __init__(self, seconds: dict, started: float):
        self._seconds, self._last = seconds, started

    def end(self, name: str) -> None:
        now = time.perf_counter()
        self._seconds[name] = round(now - self._last, 3)
        self._last = now


def _audio_source(options: ConvertOptions, out: Store, report: ConvertReport) -> AudioSource:
    """The folder of loose files, or the zip parts with their member index (built in Ray
    tasks, cached under ``OUT/.archives``, or for an OUT on an object store under
    ``.archives`` next to the first part: the cache must be a folder every node shares, as
    the parts are). Raises :class:`ConversionError` for a loose root that holds zip parts,
    a pattern that matches nothing and a bad part."""
    try:
        if not options.audio_archives:
            refuse_archive_root(options.resolved_audio_root)
            return AudioRoot(options.resolved_audio_root)
        archives = ArchiveSet.from_patterns(options.audio_archives)
        cache = out.local_path if out.local_path is not None else Path(archives.parts[0].path).parent
        index, table = build_member_index(archives, cache / CACHE_DIR)
    except ValueError as error:
        raise ConversionError(str(error)) from None
    report.archives = {**asdict(table), "parts": len(archives.parts)}
    return ArchiveSource(index)


def _prepare_out(out: Store, options: ConvertOptions) -> None:
    """Refuse an OUT converted with other options, remove leftovers of a crash (the
    caller holds OUT's lock, so no other conversion's temporary files are among them)."""
    recorded = f"{STATE_DIR}/options.json"
    wanted = json.dumps(options.fingerprint(), sort_keys=True)
    if out.exists(recorded) and out.read_text(recorded) != wanted:
        raise ConversionError(f"{out.url} holds a conversion made with options {out.read_text(recorded)}, "
                              f"not {wanted}; convert into an empty folder")
    out.write_text(recorded, wanted)
    out.remove_temporaries()


def _finish(out: Store, shard_names: list[str], annotation_rejects: list[dict], report: ConvertReport) -> None:
    """Assemble manifest, index and rejects from the per-shard state files."""
    manifest_rows = []
    audio_rejects: list[dict] = []
    index = StreamingTableWriter(out, INDEX_FILE, INDEX_SCHEMA)
    for name in shard_names:
        state = json.loads(out.read_text(_state_path(name)))
        if state["manifest"]["num_samples"]:
            manifest_rows.append(state["manifest"])
        index.write(state["index"])
        audio_rejects.extend(state["rejections"])
    index.close()
    rejects = sorted(annotation_rejects + audio_rejects, key=lambda r: (r["source"], r["ordinal"]))
    write_table(out, MANIFEST_FILE, manifest_rows, MANIFEST_SCHEMA)
    write_table(out, REJECTS_FILE, rejects, REJECTS_SCHEMA)
    report.shards = len(manifest_rows)
    report.written = sum(r["num_samples"] for r in manifest_rows)
    report.audio_seconds = sum(r["audio_seconds"] for r in manifest_rows)
    report.rejected = len(rejects)
    by_reason: dict[str, int] = {}
    for r in rejects:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    report.rejected_by_reason = dict(sorted(by_reason.items()))


def _state_path(name: str) -> str:
    """Where shard ``name``'s state lives, relative to OUT."""
    return f"{STATE_DIR}/{name}.json"


def _read_files(batch: dict[str, np.ndarray], root: str) -> Iterator[dict[str, list]]:
    """Ray UDF: annotation file paths in, rows of samples and rejections out.

    Columns: ``kind`` (``sample`` | ``reject``), ``split``, ``modality``, ``task``, ``key``
    (empty for a rejection) and ``payload`` (the sample or rejection as JSON). Unknown-stem
    and single-object warnings are the driver's to report; they are silenced here.
    """
    from llaso_data.ingest.readers import SingleObjectWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownStemWarning)
        warnings.simplefilter("ignore", SingleObjectWarning)
        for path in batch["path"]:
            rows = _empty_rows()
            try:
                items = iter_file(Path(root), Path(path))
            except OSError as error:
                raise RunError(f"{path}: cannot read: {error.strerror or error}") from None
            for item in _guarded(items, path):
                if isinstance(item, Sample):
                    _append(rows, "sample", item.split, item.modality, item.task, item.key, item.to_json())
                else:
                    _append(rows, "reject", "", "", "", "", json.dumps(item.to_dict(), ensure_ascii=False))
                if len(rows["kind"]) >= _ROW_BATCH:
                    yield rows
                    rows = _empty_rows()
            if rows["kind"]:
                yield rows


def _guarded(items: Iterator, path: str) -> Iterator:
    """``items``, with an ``OSError`` of the annotation file itself (it vanished, a read
    failed) turned into the one-line :class:`RunError` that stops the run."""
    try:
        yield from items
    except OSError as error:
        raise RunError(f"{path}: cannot read: {error.strerror or error}") from None


def _empty_rows() -> dict[str, list]:
    return {"kind": [], "split": [], "modality": [], "task": [], "key": [], "payload": []}


def _append(rows: dict[str, list], *values: str) -> None:
    for column, value in zip(rows.values(), values):
        column.append(value)


_TALLY_COLUMNS = ("split", "modality", "task", "count", "payload")


def _tally(block):
    """Ray UDF: one block of read rows in; out, one row per stratum with its sample count
    (``payload`` empty) and one row per rejection (``count`` 0, ``payload`` its JSON)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    samples = block.filter(pc.equal(block["kind"], "sample"))
    counts = samples.group_by(["split", "modality", "task"]).aggregate([("kind", "count")])
    rejects = block.filter(pc.equal(block["kind"], "reject"))
    return pa.table({
        "split": counts["split"].to_pylist() + [""] * rejects.num_rows,
        "modality": counts["modality"].to_pylist() + [""] * rejects.num_rows,
        "task": counts["task"].to_pylist() + [""] * rejects.num_rows,
        "count": counts["kind_count"].to_pylist() + [0] * rejects.num_rows,
        "payload": [""] * counts.num_rows + rejects["payload"].to_pylist(),
    })


def _assign_shards(block, plan: ShardPlan, seed: int):
    """Ray UDF: a block of read rows in, its sample rows out with ``shard_id`` (global
    slot, see :class:`ShardPlan`) and ``shard`` (relative shard path) added."""
    import pyarrow as pa
    import pyarrow.compute as pc

    samples = block.filter(pc.equal(block["kind"], "sample"))
    firsts = plan.first_slots()
    ids, names = [], []
    for split, modality, task, key in zip(samples["split"].to_pylist(), samples["modality"].to_pylist(),
                                          samples["task"].to_pylist(), samples["key"].to_pylist()):
        first, count = firsts[(split, modality, task)]
        index = shard_index(key, seed, count)
        ids.append(first + index)
        names.append(shard_name(split, modality, task, index))
    return (samples.select(["payload"])
            .append_column("shard_id", pa.array(ids, pa.int64()))
            .append_column("shard", pa.array(names, pa.string())))


def _write_shards(block, out: str, audio: AudioSource, audio_mode: str, seed: int, identity: dict):
    """Ray UDF: the sample rows of whole shards, sorted by ``shard_id``, in; one row per
    shard, written (or found done), out as each shard is done."""
    import pyarrow as pa

    ids = block["shard_id"].to_numpy()
    starts = [0, *(np.flatnonzero(np.diff(ids)) + 1).tolist()]
    for start, end in zip(starts, [*starts[1:], len(ids)]):
        if start == end:
            continue
        shard = block.slice(start, end - start)
        name = shard["shard"][0].as_py()
        try:
            handled, done_before = _write_shard(open_store(out), name, shard["payload"].to_pylist(), audio,
                                                audio_mode, seed, identity)
        except StorageError as error:  # names the URL
            raise RunError(f"cannot write: {error}") from None
        except OSError as error:  # not about one record: the output cannot be written
            raise RunError(f"{error.filename or open_store(out).url_of(name)}: cannot write: "
                           f"{error.strerror or error}") from None
        yield pa.table({"shard": [name], "handled": [handled], "reused": [done_before]})


def _write_shard(out: Store, name: str, payloads: list[str], audio: AudioSource, audio_mode: str,
                 seed: int, identity: dict) -> tuple[int, bool]:
    """Write shard ``name`` from its samples' JSON unless its state file records the same
    inputs (see :func:`~llaso_data.convert.resume.shard_input_digest`) and its tar exists;
    returns (samples handled, whether it was already done)."""
    samples = [Sample.from_json(p) for p in payloads]
    digest = shard_input_digest(identity, payloads, [_clip_identity(audio, path) for s in samples for path in s.audio])
    state_path = _state_path(name)
    if out.exists(state_path):
        state = json.loads(out.read_text(state_path))
        if state.get("input") == digest and (not state["manifest"]["num_samples"] or out.exists(name)):
            return state["manifest"]["num_samples"] + len(state["rejections"]), True
    _save_state(out, state_path, write_shard(out, name, samples, audio, audio_mode, seed), digest)
    return len(samples), False


def _clip_identity(audio: AudioSource, relative: str) -> str:
    """What names a clip's bytes for the resume digest: a loose file's resolved path (its
    size and mtime are added by the digest), or ``zip:<part>!<member>:<table row>`` (the
    row holds the member's offset, sizes, method and CRC-32, so changed bytes change it);
    a marker naming why it has neither."""
    try:
        if isinstance(audio, AudioRoot):
            return str(audio.resolve(relative))
        member = audio.member(relative)
        return f"{ARCHIVE_CLIP}{member.part}!{member.name}:{member.row}"
    except (AudioPathError, ValueError, OSError) as error:
        return f"unresolved:{relative}:{type(error).__name__}"


def _save_state(out: Store, path: str, result: ShardResult, digest: str) -> None:
    out.write_text(path, json.dumps({
        "input": digest, "manifest": result.manifest, "index": result.index,
        "rejections": [r.to_dict() for r in result.rejections],
    }, ensure_ascii=False))
