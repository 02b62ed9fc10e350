"""Ingestion benchmark: streaming reader + validation against ``json.load`` of one file.

Writes a JSON array of N records (default 2,000,000) shaped like LLaSO-Align's one
multi-GB file ``text_audio/ASR_stage1_train.json``: the real MLS ASR records of
tests/fixtures cycled with a unique ``index`` and voice path, pretty-printed as released.
Then it measures in fresh child
processes, one after the other, on the same file:

* ``stream``: ``llaso_data.ingest.corpus.scan``, what ``llaso-shard scan FILE`` runs (read +
  validate + build samples + count them);
* ``json_load``: ``json.load`` of the whole file (what LLaSO's loader does per rank).

Each child reports wall time, CPU time and peak RSS (``VmHWM``). Both run on one core:
records per CPU-second is records/s per core, and unlike the wall-clock rate it does not
drop when other processes share the machine. Goals: at least 50,000 records per
CPU-second, peak RSS under 300 MB and under a tenth of ``json.load``'s.

    python bench/ingest.py --json            # 2M records, about 1.1 GB on disk
    python bench/ingest.py --records 200000  # quicker
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "llaso_eval_sample"
GOALS = {"stream_records_per_cpu_s": 50_000, "stream_peak_rss_mb": 300, "rss_ratio_stream_over_json_load": 0.1}


def write_corpus_file(path: Path, records: int) -> None:
    """A ``text_audio/`` JSON array of ``records`` ASR records, streamed to disk."""
    templates = json.loads((FIXTURES / "text_audio" / "ASR_test.json").read_text("utf-8"))
    with open(path, "w", encoding="utf-8") as out:
        out.write("[\n")
        for i in range(records):
            template = templates[i % len(templates)]
            record = dict(template, index=i, voice=[template["voice"][0].replace(".wav", f"_{i}.wav")])
            out.write(("" if i == 0 else ",\n") + json.dumps(record, ensure_ascii=False, indent=2))
        out.write("\n]\n")


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Unlike ``ru_maxrss`` it is not inherited
    from the parent across fork + exec."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


def child_stream(path: Path) -> dict:
    from llaso_data.ingest.corpus import scan

    report = scan(path)
    return {"records": report.read, "rejected": report.read - report.valid}


def child_json_load(path: Path) -> dict:
    with open(path, encoding="utf-8") as stream:
        data = json.load(stream)
    return {"records": len(data), "rejected": 0}


def run_child(mode: str, path: Path) -> dict:
    """Run one measurement in a fresh interpreter; returns its JSON report."""
    output = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--file", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=("stream", "json_load"))
    parser.add_argument("--file", type=Path)
    args = parser.parse_args()

    if args.child:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = (child_stream if args.child == "stream" else child_json_load)(args.file)
        result["seconds"] = time.perf_counter() - start
        result["cpu_seconds"] = time.process_time() - cpu_start
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text_audio" / "ASR_stage1_train.json"
        path.parent.mkdir()
        write_corpus_file(path, args.records)
        size_mb = path.stat().st_size / 2**20
        stream = run_child("stream", path)
        baseline = run_child("json_load", path)
    figures = {
        "records": args.records,
        "file_mb": round(size_mb, 1),
        "stream_records_per_cpu_s": round(stream["records"] / stream["cpu_seconds"]),
        "stream_records_per_s": round(stream["records"] / stream["seconds"]),
        "stream_peak_rss_mb": round(stream["peak_rss_mb"], 1),
        "stream_seconds": round(stream["seconds"], 2),
        "json_load_records_per_cpu_s": round(baseline["records"] / baseline["cpu_seconds"]),
        "json_load_records_per_s": round(baseline["records"] / baseline["seconds"]),
        "json_load_peak_rss_mb": round(baseline["peak_rss_mb"], 1),
        "json_load_seconds": round(baseline["seconds"], 2),
        "rss_ratio_stream_over_json_load": round(stream["peak_rss_mb"] / baseline["peak_rss_mb"], 4),
        "records_match": stream["records"] == baseline["records"] == args.records,
    }
    figures["goals_met"] = {
        "stream_records_per_cpu_s": figures["stream_records_per_cpu_s"] >= GOALS["stream_records_per_cpu_s"],
        "stream_peak_rss_mb": figures["stream_peak_rss_mb"] < GOALS["stream_peak_rss_mb"],
        "rss_ratio_stream_over_json_load":
            figures["rss_ratio_stream_over_json_load"] < GOALS["rss_ratio_stream_over_json_load"],
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:<34} {value}")


if __name__ == "__main__":
    main()
