"""Conversion throughput: the Ray pipeline against a one-process ShardWriter and ``tar``,
and from zip parts against the same files unpacked.

Writes ONE corpus in the LLaSO-Eval layout (``text_audio/<stem>_test.json``, four task
files, record shapes copied from ``tests/fixtures/llaso_eval_sample/text_audio``) with N
records (default 10,000), each pointing at its own clip of 4-12 s (uniform). Clips are
mostly 16 kHz mono 16-bit wav (90 %), plus FLAC (6 %: half 16 kHz mono, half 44.1 kHz
stereo) and MP3 (4 %, 24 kHz mono), written with soundfile. The signal is a slice of a
speech-like source (harmonics + shaped noise under a syllable-rate envelope), so FLAC
compresses it about as well as speech. About 2.6 GB for 10,000 records: real corpora hold
millions, so the default is large enough that Ray's fixed cost per conversion (reported
on its own, below) is small next to the work, as it is on a real corpus.

Then it measures, on that same corpus, in ``--repeats`` rounds (default 3) that run every
method once in turn, so that all of them meet the machine in the same states (the best
run of each counts):

* ``tar``: ``tar -cf OUT -C ROOT -T filelist`` of every audio file (the raw copy rate);
* ``single_process_shardwriter``: what a user would write: one process iterates
  ``llaso_data.ingest.corpus.iter_corpus``, reads each clip's bytes, checks that they decode
  with the same check the pipeline applies in passthrough (``llaso_data.convert.transcode.check_decodes``)
  and writes json + audio with ``webdataset.ShardWriter(maxcount=1000)``;
* ``ray_passthrough`` / ``ray_flac16k``: ``llaso_data.convert.convert`` with
  ``samples_per_shard=1000`` on a local Ray with ``--cpus`` CPUs (default 2). The wall
  time covers Ray Data planning and execution and the final manifest/index, not
  ``ray.init``; tiny conversions (8 records) run first so that worker start-up is not
  counted: the first one's time and a warm one's (the fixed cost of a conversion) are
  reported as ``ray_first_convert_8_records_seconds`` / ``ray_warm_convert_8_records_seconds``.
  Each Ray figure also gives the conversion's own stage times (``stage_seconds``: read,
  count, write including the shuffle, finish).

* ``ray_zip_passthrough``: the same passthrough conversion with the audio read in place
  from zip parts (``audio_archives``; ``--files-per-part`` clips per part, stored, built
  with ``zipfile`` under a wrapping folder, so the shared-root rule is exercised; the
  annotation files are copied to a folder of their own). Each run converts into a fresh
  OUT, so its time includes building the member table (Ray tasks, one per part). Goal:
  ``zip_passthrough_over_loose_passthrough`` >= 0.9 (samples/s).

Member-table build rate (once, outside the rounds): a part of ``--table-members``
(default 100,000) empty stored members is written with ``zipfile``; then, best of
``--repeats``, ``read_central_directory`` on it (seconds per central directory, members
per CPU-second) against ``zipfile.ZipFile(part).infolist()`` in the same run, and
``write_part_table`` (what a Ray task does per part: parse + Parquet).

Page cache: before EVERY timed run all audio files (and zip parts) are read once (``cat FILES >
/dev/null``), so every method starts with the audio in a warm cache, and ``sync`` flushes
what earlier runs wrote; output goes to the same disk (a fresh folder per run, deleted
afterwards).

MB/s is always input audio bytes per second, so ``passthrough_over_tar`` compares like
with like. Goals: ``passthrough_over_single_process`` >= 1.5 (samples/s),
``passthrough_over_tar`` >= 0.5 (MB/s), ``flac16k_audio_seconds_per_s_per_core`` >= 2000.

Every method also reports ``cpu_seconds``: user + system CPU time of this process, its
children (``tar``) and, for Ray, every process of the local Ray (driver, raylet, GCS,
workers). On a machine shared with other work the wall-clock figures fall with the load
(the 1-minute load average is reported at start and end); the ``per_cpu_second``
figures, which the load changes far less, say what the work itself costs.

    python bench/convert.py                 # readable table
    python bench/convert.py --json          # one JSON object
    python bench/convert.py --profile flac16k   # also cProfile write_shard outside Ray
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parents[1]
try:
    import llaso_data  # noqa: F401  (installed, or on PYTHONPATH: lets a patched copy be measured)
except ImportError:
    sys.path.insert(0, str(REPO))
FIXTURES = REPO / "tests" / "fixtures" / "llaso_eval_sample" / "text_audio"
TASK_FILES = ("ASR_test.json", "meld_ER_classification_test.json",
              "common-voice_gender_classification_test.json", "vctk_accent_classification_test.json")
SAMPLES_PER_SHARD = 1000
GOALS = {"passthrough_over_single_process": 1.5, "passthrough_over_tar": 0.5,
         "flac16k_audio_seconds_per_s_per_core": 2000, "zip_passthrough_over_loose_passthrough": 0.9}
ZIP_ROOT = "LLaSO-audio/"


# --------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------


def _speech_like(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A speech-like mono signal: voiced harmonics plus shaped noise, syllable envelope."""
    n = int(seconds * rate)
    t = np.arange(n, dtype=np.float64) / rate
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.3 * t) + rng.uniform(-20, 20)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 9))
    noise = rng.standard_normal(n)
    noise = np.convolve(noise, np.ones(6) / 6, mode="same")  # low-pass a little
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6.28)), 0, None) ** 2
    pauses = (np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 6.28)) > -0.7).astype(np.float64)
    signal = (0.25 * voiced + 0.05 * noise) * (0.1 + envelope) * pauses + 0.002 * rng.standard_normal(n)
    return (0.6 * signal / max(np.abs(signal).max(), 1e-9)).astype(np.float32)


def _clip_format(i: int) -> tuple[str, int, int]:
    """(extension, rate, channels) of clip ``i``: 90 % wav 16k, 6 % flac, 4 % mp3."""
    slot = i % 50
    if slot in (7, 32):
        return "mp3", 24000, 1
    if slot in (3, 19, 41):
        return "flac", (16000, 44100)[(i // 50) % 2], (1, 2)[(i // 50) % 2]
    return "wav", 16000, 1


def write_corpus(root: Path, samples: int, seed: int = 0, seconds_range: tuple[float, float] = (4.0, 12.0)) -> dict:
    """Write the corpus under ``root`` (clip lengths uniform in ``seconds_range``); return
    its audio file list, bytes and seconds."""
    rng = np.random.default_rng(seed)
    sources = {rate: _speech_like(40.0, rate, rng) for rate in (16000, 24000, 44100)}
    files: list[str] = []
    seconds_total = 0.0
    per_file = [samples // len(TASK_FILES) + (1 if k < samples % len(TASK_FILES) else 0)
                for k in range(len(TASK_FILES))]
    ordinal = 0
    for name, count in zip(TASK_FILES, per_file):
        templates = json.loads((FIXTURES / name).read_text("utf-8"))
        task = name.removesuffix("_test.json")
        records = []
        for i in range(count):
            ext, rate, channels = _clip_format(ordinal)
            seconds = float(np.round(rng.uniform(*seconds_range), 3))
            source = sources[rate]
            start = int(rng.integers(0, len(source) - int(seconds * rate)))
            wave = source[start:start + int(seconds * rate)] * rng.uniform(0.3, 1.0)
            if channels == 2:
                wave = np.stack([wave, np.roll(wave, 37) * 0.8], axis=1)
            relative = f"bench_audio/{task}/{i // 250:03d}/{task}_{i:06d}.{ext}"
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            subtype = "MPEG_LAYER_III" if ext == "mp3" else "PCM_16"
            soundfile.write(path, wave, rate, subtype=subtype)
            files.append(relative)
            seconds_total += len(wave) / rate
            template = templates[i % len(templates)]
            record = {**template, "voice": [relative.replace(f"/{task}_", f"\\{task}_")]}
            if "index" in template or task == "ASR":
                record["index"] = i
            records.append(record)
            ordinal += 1
        folder = root / "text_audio"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", "utf-8")
    size = sum((root / f).stat().st_size for f in files)
    return {"files": files, "bytes": size, "seconds": seconds_total}


def write_parts(root: Path, files: list[str], parts: Path, per_part: int) -> list[str]:
    """Pack the audio files into stored zip parts of ``per_part`` clips under ZIP_ROOT."""
    import zipfile

    parts.mkdir(parents=True)
    written = []
    for number, first in enumerate(range(0, len(files), per_part)):
        path = parts / f"bench-audio.part{number:04d}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as part:
            for relative in files[first:first + per_part]:
                part.write(root / relative, ZIP_ROOT + relative)
        written.append(str(path))
    return written


def annotations_only(root: Path, target: Path) -> Path:
    for path in (root / "text_audio").glob("*.json"):
        (target / "text_audio").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / "text_audio" / path.name)
    return target


def member_table_rate(scratch: Path, members: int, repeats: int) -> dict:
    """Seconds per central directory of a part with ``members`` empty stored members:
    ours (parse; parse + Parquet) against zipfile's ``infolist`` in the same run."""
    import zipfile

    from llaso_data.convert.archive_table import write_part_table
    from llaso_data.ingest.zipparts import read_central_directory

    part = scratch / "table-bench.zip"
    with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED) as archive:
        for i in range(members):
            archive.writestr(f"{ZIP_ROOT}speaker_{i % 997:03d}/clip_{i:07d}_EN-US_1.0_1.wav", b"")
    timings: dict[str, list[tuple[float, float]]] = {"ours": [], "ours_with_parquet": [], "zipfile_infolist": []}
    for _ in range(repeats):
        for name, run in (("ours", lambda: read_central_directory(str(part))),
                          ("ours_with_parquet", lambda: write_part_table(str(part), str(scratch / "t.parquet"))),
                          ("zipfile_infolist", lambda: zipfile.ZipFile(part).infolist())):
            cpu, start = time.process_time(), time.perf_counter()
            run()
            timings[name].append((time.perf_counter() - start, time.process_time() - cpu))
    result = {"members": members, "part_mb": round(part.stat().st_size / 2**20, 1)}
    for name, runs in timings.items():
        seconds, cpu = min(runs)
        result[name] = {"seconds_per_central_directory": round(seconds, 3),
                        "members_per_cpu_second": round(members / max(cpu, 1e-9))}
    result["zipfile_over_ours_seconds"] = round(result["zipfile_infolist"]["seconds_per_central_directory"]
                                                / result["ours"]["seconds_per_central_directory"], 2)
    part.unlink()
    return result


def warm_cache(root: Path, files: list[str]) -> None:
    """Read every audio file once (``cat > /dev/null``) so the page cache is warm."""
    subprocess.run(["xargs", "-0", "cat"], input="\0".join(str(root / f) for f in files).encode(),
                   stdout=subprocess.DEVNULL, check=True)


def cpu_seconds() -> float:
    """User + system CPU seconds used so far by this process, its finished children and
    its live descendants (a local Ray's raylet, GCS and workers, with their own finished
    children)."""
    import psutil

    total = 0.0
    for process in (psutil.Process(), *psutil.Process().children(recursive=True)):
        try:
            total += sum(process.cpu_times()[:4])  # user, system, children_user, children_system
        except psutil.NoSuchProcess:
            pass
    return total


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------


def run_tar(root: Path, files: list[str], scratch: Path) -> dict:
    listing = scratch / "filelist.txt"
    listing.write_text("\n".join(files) + "\n")
    target = scratch / "audio.tar"
    cpu, start = cpu_seconds(), time.perf_counter()
    subprocess.run(["tar", "-cf", str(target), "-C", str(root), "-T", str(listing)], check=True)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    size = target.stat().st_size
    target.unlink()
    return {"seconds": seconds, "cpu_seconds": cpu, "out_bytes": size}


def run_single_process(root: Path, scratch: Path) -> dict:
    """iter_corpus + read bytes + check_decodes + webdataset.ShardWriter(maxcount=1000)."""
    import webdataset
    from llaso_data.convert.transcode import check_decodes
    from llaso_data.ingest.corpus import iter_corpus
    from llaso_data.records import Sample

    out = scratch / "wds"
    out.mkdir()
    cpu, start = cpu_seconds(), time.perf_counter()
    written = 0
    with webdataset.ShardWriter(str(out / "shard-%06d.tar"), maxcount=SAMPLES_PER_SHARD, verbose=0) as sink:
        for item in iter_corpus(root):
            if not isinstance(item, Sample):
                continue
            member = {"__key__": item.key, "json": item.to_json().encode("utf-8")}
            for i, relative in enumerate(item.audio):
                path = root / relative
                data = path.read_bytes()
                check_decodes(data, path)
                member[f"audio{i}.{relative.rsplit('.', 1)[-1].lower()}"] = data
            sink.write(member)
            written += 1
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    size = _du(out)
    shutil.rmtree(out)
    return {"seconds": seconds, "cpu_seconds": cpu, "written": written, "out_bytes": size}


def run_ray(root: Path, scratch: Path, mode: str, archives: tuple[str, ...] = ()) -> dict:
    from llaso_data.convert.pipeline import ConvertOptions, convert

    out = scratch / f"ray-{mode}"
    cpu, start = cpu_seconds(), time.perf_counter()
    report = convert(ConvertOptions(root, out, audio_root=None, audio_mode=mode,
                                    samples_per_shard=SAMPLES_PER_SHARD, seed=0, audio_archives=archives))
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    size = sum(p.stat().st_size for p in out.rglob("*.tar"))
    shutil.rmtree(out)
    if not report.identity_holds or report.rejected:
        raise RuntimeError(f"conversion report looks wrong: {report.to_dict()}")
    return {"seconds": seconds, "cpu_seconds": cpu, "written": report.written, "shards": report.shards,
            "audio_seconds": report.audio_seconds, "out_bytes": size, "stage_seconds": report.stage_seconds,
            "archives": report.archives}


def best(runs: list[dict]) -> dict:
    chosen = dict(min(runs, key=lambda r: r["seconds"]))
    chosen["all_seconds"] = [round(r["seconds"], 3) for r in runs]
    return chosen


def profile_write_shard(root: Path, scratch: Path, mode: str, limit: int, top: int = 25) -> None:
    """cProfile ``write_shard`` (one process, no Ray) on the first ``limit`` samples."""
    from llaso_data.ingest.corpus import iter_corpus
    from llaso_data.records import Sample
    from llaso_data.convert.shard_writer import write_shard
    from llaso_data.ingest.paths import AudioRoot

    samples = [s for s in iter_corpus(root) if isinstance(s, Sample)][:limit]
    warm_cache(root, [a for s in samples for a in s.audio])
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    write_shard(scratch / "profile", "p.tar", samples, AudioRoot(root), mode, 0)
    profiler.disable()
    seconds = time.perf_counter() - start
    shutil.rmtree(scratch / "profile")
    print(f"# write_shard({mode}) on {len(samples)} samples: {seconds:.2f} s "
          f"({len(samples) / seconds:.0f} samples/s, one process, under cProfile)", file=sys.stderr)
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
    print(stream.getvalue(), file=sys.stderr)


# --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the best counts")
    parser.add_argument("--cpus", type=int, default=2, help="num_cpus of the local Ray")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temporary folder")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", choices=("passthrough", "flac16k"), action="append", default=[],
                        help="also cProfile write_shard in this mode (to stderr); repeatable")
    parser.add_argument("--profile-samples", type=int, default=500)
    parser.add_argument("--skip-ray", action="store_true", help="only the baselines (and --profile)")
    parser.add_argument("--files-per-part", type=int, default=1000, help="clips per zip part")
    parser.add_argument("--table-members", type=int, default=100_000,
                        help="members of the part timed for the member-table build rate (0: skip)")
    args = parser.parse_args()

    load_start = round(os.getloadavg()[0], 2)  # other work on the machine skews every figure
    with tempfile.TemporaryDirectory(prefix="bench-convert-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        root, scratch = tmp / "corpus", tmp / "scratch"
        scratch.mkdir()
        start = time.perf_counter()
        corpus = write_corpus(root, args.samples)
        generate_seconds = time.perf_counter() - start
        files = corpus["files"]
        mb = corpus["bytes"] / 2**20

        parts = write_parts(root, files, tmp / "parts", args.files_per_part)
        annotations = annotations_only(root, tmp / "annotations")
        table_rate = member_table_rate(scratch, args.table_members, args.repeats) if args.table_members else None

        for mode in args.profile:
            profile_write_shard(root, scratch, mode, args.profile_samples)
        methods = {"tar": (run_tar, root, files, scratch), "single": (run_single_process, root, scratch)}
        ray_cpus = None
        cold, warm_tiny = {}, 0.0
        ray_started = False
        if not args.skip_ray:
            import ray
            from llaso_data.convert.ray_local import init_ray

            try:
                init_ray(None, num_cpus=args.cpus)
            except Exception:  # a busy machine can time out the first start; try once more
                ray.shutdown()
                init_ray(None, num_cpus=args.cpus)
            ray_started = True
            ray_cpus = int(ray.cluster_resources().get("CPU", args.cpus))
            warm_root = tmp / "warmup"
            write_corpus(warm_root, 8)
            cold = {mode: run_ray(warm_root, scratch, mode)["seconds"] for mode in ("passthrough", "flac16k")}
            warm_tiny = run_ray(warm_root, scratch, "passthrough")["seconds"]
            methods["passthrough"] = (run_ray, root, scratch, "passthrough")
            methods["flac16k"] = (run_ray, root, scratch, "flac16k")
            methods["zip_passthrough"] = (run_ray, annotations, scratch, "passthrough", tuple(parts))
        runs: dict[str, list[dict]] = {name: [] for name in methods}
        try:
            for _ in range(args.repeats):  # round robin: every method sees the machine in the same state
                for name, (method, *extra) in methods.items():
                    warm_cache(root, files + parts)
                    os.sync()  # no write-back of an earlier run's output during this one
                    runs[name].append(method(*extra))
        finally:
            if ray_started:
                ray.shutdown()
        tar, single = best(runs["tar"]), best(runs["single"])
        passthrough = best(runs["passthrough"]) if "passthrough" in runs else None
        flac = best(runs["flac16k"]) if "flac16k" in runs else None
        zipped = best(runs["zip_passthrough"]) if "zip_passthrough" in runs else None

    n, audio_s = args.samples, corpus["seconds"]
    figures: dict = {
        "corpus": {"samples": n, "audio_files": len(files), "audio_mb": round(mb, 1),
                   "audio_seconds": round(audio_s, 1), "generate_seconds": round(generate_seconds, 1),
                   "task_files": len(TASK_FILES), "samples_per_shard": SAMPLES_PER_SHARD},
        "repeats": args.repeats,
        "page_cache": "warm (all audio read once before every timed run)",
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "tar": {"seconds": round(tar["seconds"], 3), "all_seconds": tar["all_seconds"],
                "mb_per_s": round(mb / tar["seconds"], 1), "files_per_s": round(len(files) / tar["seconds"]),
                "cpu_seconds": round(tar["cpu_seconds"], 2)},
        "single_process_shardwriter": {
            "seconds": round(single["seconds"], 3), "all_seconds": single["all_seconds"],
            "samples_per_s": round(single["written"] / single["seconds"], 1),
            "audio_seconds_per_s": round(audio_s / single["seconds"]), "mb_per_s": round(mb / single["seconds"], 1),
            "cpu_seconds": round(single["cpu_seconds"], 2),
            "samples_per_cpu_second": round(single["written"] / single["cpu_seconds"], 1)},
    }
    if passthrough:
        figures["ray_cpus"] = ray_cpus
        # Not in the figures below: the first convert() after ray.init (worker start-up,
        # imports) and the fixed cost of a warm convert() of an 8-record corpus.
        figures["ray_first_convert_8_records_seconds"] = round(cold["passthrough"], 3)
        figures["ray_warm_convert_8_records_seconds"] = round(warm_tiny, 3)
        figures["ray_passthrough"] = {
            "seconds": round(passthrough["seconds"], 3), "all_seconds": passthrough["all_seconds"],
            "samples_per_s": round(passthrough["written"] / passthrough["seconds"], 1),
            "audio_seconds_per_s": round(passthrough["audio_seconds"] / passthrough["seconds"]),
            "mb_per_s": round(mb / passthrough["seconds"], 1), "shards": passthrough["shards"],
            "out_mb": round(passthrough["out_bytes"] / 2**20, 1), "stage_seconds": passthrough["stage_seconds"],
            "cpu_seconds": round(passthrough["cpu_seconds"], 2),
            "samples_per_cpu_second": round(passthrough["written"] / passthrough["cpu_seconds"], 1)}
        figures["ray_flac16k"] = {
            "seconds": round(flac["seconds"], 3), "all_seconds": flac["all_seconds"],
            "samples_per_s": round(flac["written"] / flac["seconds"], 1),
            "audio_seconds_per_s": round(flac["audio_seconds"] / flac["seconds"]),
            "audio_seconds_per_s_per_core": round(flac["audio_seconds"] / flac["seconds"] / ray_cpus),
            "shards": flac["shards"], "out_mb": round(flac["out_bytes"] / 2**20, 1),
            "stage_seconds": flac["stage_seconds"], "cpu_seconds": round(flac["cpu_seconds"], 2),
            "audio_seconds_per_cpu_second": round(flac["audio_seconds"] / flac["cpu_seconds"])}
        figures["ray_zip_passthrough"] = {
            "seconds": round(zipped["seconds"], 3), "all_seconds": zipped["all_seconds"], "parts": len(parts),
            "samples_per_s": round(zipped["written"] / zipped["seconds"], 1),
            "mb_per_s": round(mb / zipped["seconds"], 1), "stage_seconds": zipped["stage_seconds"],
            "member_table": zipped["archives"], "cpu_seconds": round(zipped["cpu_seconds"], 2),
            "samples_per_cpu_second": round(zipped["written"] / zipped["cpu_seconds"], 1)}
        ratios = {
            "zip_passthrough_over_loose_passthrough": round(
                figures["ray_zip_passthrough"]["samples_per_s"] / figures["ray_passthrough"]["samples_per_s"], 3),
            "passthrough_over_single_process": round(
                figures["ray_passthrough"]["samples_per_s"] / figures["single_process_shardwriter"]["samples_per_s"], 3),
            "passthrough_over_tar": round(figures["ray_passthrough"]["mb_per_s"] / figures["tar"]["mb_per_s"], 3),
            "flac16k_audio_seconds_per_s_per_core": figures["ray_flac16k"]["audio_seconds_per_s_per_core"],
        }
        figures["ratios"] = ratios
        figures["goals_met"] = {k: ratios[k] >= goal for k, goal in GOALS.items()}
        # Not goals: what the same work costs in CPU time, which the load does not change much.
        figures["per_cpu_second"] = {
            "passthrough_over_single_process": round(
                figures["ray_passthrough"]["samples_per_cpu_second"]
                / figures["single_process_shardwriter"]["samples_per_cpu_second"], 3),
            "flac16k_audio_seconds": figures["ray_flac16k"]["audio_seconds_per_cpu_second"],
            "zip_passthrough_over_loose_passthrough": round(
                figures["ray_zip_passthrough"]["samples_per_cpu_second"]
                / figures["ray_passthrough"]["samples_per_cpu_second"], 3),
        }
    if table_rate:
        figures["member_table"] = table_rate

    if args.json:
        print(json.dumps(figures))
        return
    for section, value in figures.items():
        if isinstance(value, dict):
            print(section)
            for name, item in value.items():
                print(f"  {name:<40} {item}")
        else:
            print(f"{section:<42} {value}")


if __name__ == "__main__":
    main()
