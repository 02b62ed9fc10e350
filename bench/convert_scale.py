"""Metadata scale: does the conversion driver's memory stay flat as the record count grows?

For each size N (default 250,000 and 2,500,000) this writes a corpus whose one annotation
file, ``LLaSO-Align/text_audio/ASR_stage1_train.json``, is a JSON array of N ASR records
shaped like ``tests/fixtures/llaso_eval_sample/text_audio/ASR_test.json`` (unique
``index``, pretty-printed as released, written streaming). Every record points at one
of a pool of 16 real 0.1 s 16 kHz mono wav clips, so the audio is real but tiny and the
run measures the metadata path (read, count, assign, shuffle, write, finish).

Each size is converted (``audio_mode="passthrough"``, ``samples_per_shard=5000``) in a
FRESH child process that starts a local Ray (``num_cpus=2``, ``--object-store-gb``,
default 3), runs ``llaso_data.convert.convert`` and reports the driver's peak resident
set (``VmHWM`` from ``/proc/self/status``: unlike ``ru_maxrss`` it is not inherited
across exec) and the wall time of ``convert`` (not ``ray.init``). Ray's own processes
(raylet, workers, object store) are not counted: the figure is the driver's.

``growth_ratio`` = driver peak RSS at the largest size / at the smallest; goal < 1.5.

Everything goes to a temporary folder under ``--workdir`` (default: the system temp
folder), deleted after each size. The 2.5M size needs about 20 GB of free disk (1.8 GB
of JSON, ~13 GB of shards, state files) and several minutes.

    python bench/convert_scale.py --sizes 20000,200000      # quick check
    python bench/convert_scale.py --json                    # 250k and 2.5M
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "llaso_eval_sample" / "text_audio" / "ASR_test.json"
ANNOTATION = "LLaSO-Align/text_audio/ASR_stage1_train.json"
POOL = 16
SAMPLES_PER_SHARD = 5000
GOAL_GROWTH = 1.5


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


def write_pool(root: Path) -> list[str]:
    """16 real 0.1 s wav clips (16 kHz mono, 16-bit); returns their voice paths."""
    import soundfile

    voices = []
    rng = np.random.default_rng(0)
    for i in range(POOL):
        path = root / "mls_english_pool" / "test_data_16000" / f"pool_{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(1600) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 20 * i) * t) + 0.01 * rng.standard_normal(1600)
        soundfile.write(path, wave.astype(np.float32), 16000, subtype="PCM_16")
        voices.append(f"mls_english_pool/test_data_16000\\pool_{i:02d}.wav")
    return voices


def write_annotation(path: Path, records: int, voices: list[str]) -> None:
    """A JSON array of ``records`` ASR records, streamed to disk (never whole in memory)."""
    templates = json.loads(FIXTURE.read_text("utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        buffer = io.StringIO()
        buffer.write("[\n")
        for i in range(records):
            template = templates[i % len(templates)]
            record = dict(template, index=i, voice=[voices[i % len(voices)]])
            buffer.write(("" if i == 0 else ",\n") + json.dumps(record, ensure_ascii=False, indent=2))
            if i % 10000 == 9999:
                out.write(buffer.getvalue())
                buffer = io.StringIO()
        buffer.write("\n]\n")
        out.write(buffer.getvalue())


def disk_free_gb(path: Path) -> float:
    return shutil.disk_usage(path).free / 2**30


def du_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def child(source: Path, out: Path, object_store_gb: float, cpus: int) -> dict:
    import ray

    from llaso_data.convert.pipeline import ConvertOptions, convert
    from llaso_data.convert.ray_local import init_ray

    rss_start = peak_rss_mb()
    init_ray(None, num_cpus=cpus, object_store_gb=object_store_gb)
    rss_after_init = peak_rss_mb()
    try:
        start = time.perf_counter()
        report = convert(ConvertOptions(source, out, audio_mode="passthrough",
                                        samples_per_shard=SAMPLES_PER_SHARD, seed=0))
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return {"seconds": seconds, "driver_peak_rss_mb": peak_rss_mb(), "rss_before_init_mb": rss_start,
            "rss_after_init_mb": rss_after_init, "report": report.to_dict()}


def run_size(records: int, workdir: Path | None, object_store_gb: float, cpus: int, log) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-scale-{records}-", dir=workdir) as tmp:
        tmp = Path(tmp)
        source = tmp / "corpus"
        start = time.perf_counter()
        voices = write_pool(source)
        write_annotation(source / ANNOTATION, records, voices)
        generate = time.perf_counter() - start
        json_mb = (source / ANNOTATION).stat().st_size / 2**20
        log(f"# {records}: wrote {json_mb:.0f} MB of JSON in {generate:.0f} s; "
            f"{disk_free_gb(tmp):.0f} GB free; converting")
        done = subprocess.run(
            [sys.executable, __file__, "--child", "--source", str(source), "--out", str(tmp / "out"),
             "--object-store-gb", str(object_store_gb), "--cpus", str(cpus)],
            capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["out_gb"] = round(du_bytes(tmp / "out") / 2**30, 2)
        result["free_gb_before_cleanup"] = round(disk_free_gb(tmp), 1)
        result["json_mb"] = round(json_mb, 1)
        result["generate_seconds"] = round(generate, 1)
    report = result.pop("report")
    ok = report["identity_holds"] and report["written"] == records and not report["rejected"]
    figures = {
        "records": records,
        "driver_peak_rss_mb": round(result["driver_peak_rss_mb"], 1),
        "driver_rss_after_init_mb": round(result["rss_after_init_mb"], 1),
        "convert_seconds": round(result["seconds"], 1),
        "samples_per_s": round(records / result["seconds"]),
        "shards": report["shards"],
        "written": report["written"],
        "report_ok": ok,
        "json_mb": result["json_mb"],
        "out_gb": result["out_gb"],
        "generate_seconds": result["generate_seconds"],
    }
    log(f"# {records}: {json.dumps(figures)}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="250000,2500000", help="comma-separated record counts")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--object-store-gb", type=float, default=3.0)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(args.source, args.out, args.object_store_gb, args.cpus)))
        return

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    runs = [run_size(n, args.workdir, args.object_store_gb, args.cpus, log) for n in sizes]
    small, large = min(runs, key=lambda r: r["records"]), max(runs, key=lambda r: r["records"])
    growth = large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"]
    figures = {
        "samples_per_shard": SAMPLES_PER_SHARD, "ray_cpus": args.cpus, "object_store_gb": args.object_store_gb,
        "runs": runs,
        "driver_peak_rss_mb": {str(r["records"]): r["driver_peak_rss_mb"] for r in runs},
        "growth_ratio": round(growth, 3),
        "size_ratio": round(large["records"] / small["records"], 1),
        "goal_growth_below": GOAL_GROWTH,
        "goal_met": growth < GOAL_GROWTH and all(r["report_ok"] for r in runs),
    }
    if args.json:
        print(json.dumps(figures))
        return
    for run in runs:
        print(f"records {run['records']:>10,}: driver peak RSS {run['driver_peak_rss_mb']:8.1f} MB, "
              f"convert {run['convert_seconds']:8.1f} s ({run['samples_per_s']} samples/s), "
              f"{run['shards']} shards, report ok: {run['report_ok']}")
    print(f"growth_ratio {figures['growth_ratio']} for {figures['size_ratio']}x the records "
          f"(goal < {GOAL_GROWTH}): {'met' if figures['goal_met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
