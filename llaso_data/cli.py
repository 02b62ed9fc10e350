"""``llaso-shard``: the command-line entry point (all printing and exit codes live here)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from llaso_data.storage import is_url

from llaso_data.ingest.corpus import ScanReport, UnknownStemWarning, scan
from llaso_data.ingest.readers import SingleObjectWarning


def main(argv: list[str] | None = None) -> int:
    warnings.simplefilter("always", UnknownStemWarning)
    warnings.simplefilter("always", SingleObjectWarning)
    warnings.formatwarning = lambda message, category, *_: f"warning: {message}\n"
    parser = _build_parser()
    args = parser.parse_args(argv)
    return args.run(args)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llaso-shard", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write a synthetic corpus in the LLaSO layout")
    synth.add_argument("out", type=Path)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--samples-per-task", type=int, default=6)
    synth.add_argument("--faults", action="store_true", help="add faulty records covering every rejection reason")
    synth.set_defaults(run=_run_synth)

    scan = commands.add_parser("scan", help="read a corpus and count samples and rejections")
    scan.add_argument("src", type=Path, help="an annotation file or a corpus folder")
    scan.add_argument("--audio-root", type=Path, default=None,
                      help="also check that every audio file exists under this folder")
    scan.add_argument("--audio-archives", nargs="+", default=(), metavar="GLOB",
                      help="also check that every clip is a member of these zip parts (glob patterns or paths)")
    scan.add_argument("--json", action="store_true", help="print one JSON object")
    scan.add_argument("--show-rejects", type=int, default=5, metavar="N",
                      help="print the first N rejections with file, record and reason (default 5)")
    scan.set_defaults(run=_run_scan)

    convert = commands.add_parser("convert", help="convert a corpus into stratified WebDataset shards with Ray")
    convert.add_argument("src", type=Path, help="an annotation file or a corpus folder")
    convert.add_argument("out", type=location,
                         help="output folder or s3://bucket/prefix (created; a re-run resumes)")
    convert.add_argument("--audio-root", type=Path, default=None,
                         help="folder the voice paths are relative to (default: the corpus folder)")
    convert.add_argument("--audio-archives", nargs="+", default=(), metavar="GLOB",
                         help="read the audio in place from these zip parts (glob patterns or paths, "
                              "e.g. 'LLaSO-Instruct/*.zip') instead of loose files")
    convert.add_argument("--address", default=None,
                         help="Ray cluster address (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    convert.add_argument("--audio", choices=("passthrough", "flac16k"), default="passthrough",
                         help="keep original bytes (checked) or store mono 16 kHz FLAC")
    convert.add_argument("--samples-per-shard", type=_positive, default=1000)
    convert.add_argument("--seed", type=int, default=0)
    convert.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    convert.set_defaults(run=_run_convert)

    verify = commands.add_parser("verify", help="re-hash every shard against the manifest and check its structure")
    verify.add_argument("out", type=location, help="converted corpus: folder or s3://bucket/prefix")
    verify.set_defaults(run=_run_verify)

    stats = commands.add_parser("stats", help="samples, hours and shards per split/modality/task")
    stats.add_argument("out", type=location, help="converted corpus: folder or s3://bucket/prefix")
    stats.add_argument("--chart", type=Path, default=None, help="write a chart (.png, .svg or .html)")
    stats.add_argument("--metric", choices=("hours", "samples"), default="hours")
    stats.set_defaults(run=_run_stats)

    plan = commands.add_parser("plan", help="preview an epoch's mixture over one or more converted corpora")
    plan.add_argument("out", type=location, nargs="+",
                      help="converted corpora, folders or s3://bucket/prefix (the sources, in order)")
    plan.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per source (default 1)")
    plan.add_argument("--mixing", choices=("natural", "uniform", "temperature", "explicit"), default="natural")
    plan.add_argument("--temperature", type=float, default=1.0)
    plan.add_argument("--task-weights", default=None, metavar="TASK=W,...", help="weights of explicit mixing")
    plan.add_argument("--splits", nargs="+", default=["train"], help="splits to use ('all' for every split)")
    plan.add_argument("--modalities", nargs="+", default=None)
    plan.add_argument("--tasks", nargs="+", default=None)
    size = plan.add_mutually_exclusive_group()
    size.add_argument("--batch-size", type=int, default=None, help="fixed batches (default 8)")
    size.add_argument("--max-tokens", type=int, default=None, help="dynamic batches under this token budget")
    plan.add_argument("--max-length", type=int, default=None, help="drop samples estimated longer (tokens)")
    plan.add_argument("--template-tokens", type=int, default=0,
                      help="tokens the chat template adds to every sample, counted against --max-length "
                           "(system prompt, headers; the trainer measures it with its tokenizer)")
    plan.add_argument("--audio-tokens-per-second", type=float, default=10.0,
                      help="audio tokens per second of audio (Whisper's 50 frames/s over the stack; default 10)")
    plan.add_argument("--chars-per-token", type=float, default=4.0)
    plan.add_argument("--world-size", type=int, default=1)
    plan.add_argument("--epoch", type=int, default=0)
    plan.add_argument("--seed", type=int, default=0)
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.set_defaults(run=_run_plan)
    return parser


def _positive(text: str) -> int:
    """argparse type: an integer of at least 1 (a usage error, exit 2, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _run_synth(args: argparse.Namespace) -> int:
    from llaso_synth.corpus import write_corpus

    try:
        summary = write_corpus(args.out, seed=args.seed, samples_per_task=args.samples_per_task, faults=args.faults)
    except (FileExistsError, ValueError) as error:
        print(f"llaso-shard synth: {error}", file=sys.stderr)
        return 2
    print(f"wrote {summary.records} records ({summary.valid} valid), {summary.audio_files} audio files, "
          f"{summary.audio_seconds / 3600:.2f} h of audio under {summary.root}")
    return 0


def _run_scan(args: argparse.Namespace) -> int:
    if not args.src.exists():
        print(f"llaso-shard scan: {args.src}: no such file or folder", file=sys.stderr)
        return 2
    if args.audio_root is not None and not args.audio_root.is_dir():
        print(f"llaso-shard scan: --audio-root {args.audio_root}: no such folder", file=sys.stderr)
        return 2
    try:
        audio = _scan_audio(args.audio_root, args.audio_archives)
    except ValueError as error:
        print(f"llaso-shard scan: {error}", file=sys.stderr)
        return 2
    report = scan(args.src, audio=audio, max_examples=args.show_rejects)
    for rejection in report.examples:
        print(f"rejected: {rejection}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        _print_report(report)
    return 0


def location(text: str) -> str | Path:
    """A command-line location: an object-store URL stays a string, anything else is a Path."""
    return text if is_url(text) else Path(text)


def _scan_audio(audio_root: Path | None, patterns: list[str]):
    """What ``scan`` checks clips against: None, a loose-file root, or zip parts (their
    central directories read in this process). Raises ValueError for bad options or parts."""
    from llaso_data.ingest.archives import ArchiveSet, ArchiveSource, MemberIndex, refuse_archive_root
    from llaso_data.ingest.paths import AudioRoot

    if patterns and audio_root is not None:
        raise ValueError("give --audio-root (loose files) or --audio-archives (zip parts), not both")
    if patterns:
        return ArchiveSource(MemberIndex.build(ArchiveSet.from_patterns(patterns)))
    if audio_root is None:
        return None
    refuse_archive_root(audio_root)
    return AudioRoot(audio_root)


def _run_convert(args: argparse.Namespace) -> int:
    from llaso_data.convert.pipeline import ConvertOptions

    try:
        options = ConvertOptions(args.src, args.out, args.audio_root, args.audio, args.samples_per_shard, args.seed,
                                 args.audio_archives)
    except ValueError as error:
        print(f"llaso-shard convert: {error}", file=sys.stderr)
        return 2
    return run_conversion(options, args.address, args.num_cpus)


MISSING_AUDIO_WARNING = 0.5
"""Share of records rejected as ``audio_missing`` above which conversion warns that the
audio root is likely wrong."""


def _audio_place(options) -> str:
    """Where a conversion looks for audio, in words: the zip-part patterns or the folder."""
    return " ".join(options.audio_archives) if options.audio_archives else str(options.resolved_audio_root)


def run_conversion(options, address: str | None, num_cpus: int | None = None) -> int:
    """Run a conversion with a progress line on stderr; shared by the CLI and ``pipelines/``.
    Exit status 0 when the accounting identity holds, 1 when it fails, 2 on bad options."""
    import ray

    from llaso_data.convert.pipeline import ConversionError, convert
    from llaso_data.convert.ray_local import init_ray

    if not options.source.exists():
        print(f"llaso-shard convert: {options.source}: no such file or folder", file=sys.stderr)
        return 2
    if options.audio_root is not None and not options.audio_root.is_dir():
        print(f"llaso-shard convert: --audio-root {options.audio_root}: no such folder", file=sys.stderr)
        return 2
    started_local = init_ray(address, num_cpus)
    try:
        report = convert(options, on_progress=_ProgressLine())
    except ConversionError as error:
        print(f"llaso-shard convert: {error}", file=sys.stderr)
        return 2
    finally:
        if started_local:
            ray.shutdown()
    if sys.stderr.isatty():
        print(file=sys.stderr)
    for stem in report.unknown_stems:
        print(f"warning: {stem}: stem matches no known task; kept with the stem as task", file=sys.stderr)
    for source in report.single_objects:
        print(f"warning: {source}: holds one JSON object, not an array; read as one record", file=sys.stderr)
    print(f"read {report.read:,} records: wrote {report.written:,} samples "
          f"({report.audio_seconds / 3600:.2f} h of audio) in {report.shards} shards "
          f"({report.shards_reused} reused), rejected {report.rejected:,} in {report.seconds:.1f} s")
    for reason, count in report.rejected_by_reason.items():
        print(f"  rejected {reason:<26} {count:>9,}")
    missing = report.rejected_by_reason.get("audio_missing", 0)
    if report.read and missing > MISSING_AUDIO_WARNING * report.read:
        print(f"warning: {missing:,} of {report.read:,} records miss their audio under "
              f"{_audio_place(options)}: is the audio option right?", file=sys.stderr)
    if report.sources_changed:
        print(f"sources changed since the last run: {', '.join(report.sources_changed)}")
    if report.archives:
        tables = report.archives
        print(f"audio archives: {tables['parts']:,} parts ({tables['parts_read']:,} central directories read, "
              f"{tables['parts_cached']:,} cached), {tables['members']:,} members, "
              f"{tables['unsafe']:,} absolute or '..' names left out")
    if not report.identity_holds:
        print(f"llaso-shard convert: accounting failed: read {report.read} != written {report.written} "
              f"+ rejected {report.rejected}", file=sys.stderr)
        return 1
    print(f"accounting: read {report.read:,} = written {report.written:,} + rejected {report.rejected:,}")
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    from llaso_data.convert.verify import verify

    report = verify(args.out)
    for shard, problems in sorted(report.problems.items()):
        print(f"BAD {shard}", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    print(f"verified {report.shards_checked} shards, {report.samples_checked:,} samples: "
          f"{'OK' if report.ok else f'{len(report.problems)} with problems'}")
    return 0 if report.ok else 1


def _run_stats(args: argparse.Namespace) -> int:
    from llaso_data.convert.stats import corpus_stats, format_stats_table, write_chart

    try:
        rows = corpus_stats(args.out)
    except OSError as error:
        print(f"llaso-shard stats: {args.out}: cannot read the manifest: {error}", file=sys.stderr)
        return 2
    print(format_stats_table(rows))
    if args.chart:
        try:
            write_chart(rows, args.chart, metric=args.metric)
        except OSError as error:
            print(f"llaso-shard stats: {args.chart}: cannot write the chart: {error.strerror or error}",
                  file=sys.stderr)
            return 2
        print(f"chart written to {args.chart}")
    return 0


def _run_plan(args: argparse.Namespace) -> int:
    from llaso_data.stream.plan import Batching, Mixing, PlanConfig, Selection, Source
    from llaso_data.stream.preview import preview

    try:
        weights = args.weights or [1.0] * len(args.out)
        if len(weights) != len(args.out):
            raise ValueError(f"{len(weights)} weights for {len(args.out)} sources")
        splits = None if args.splits == ["all"] else tuple(args.splits)
        selection = Selection(splits, *(None if v is None else tuple(v) for v in (args.modalities, args.tasks)))
        task_weights = None
        if args.task_weights:
            pairs = [item.split("=", 1) for item in args.task_weights.split(",")]
            task_weights = {task: float(weight) for task, weight in pairs}
        batching = Batching(batch_size=None if args.max_tokens else (args.batch_size or 8),
                            max_tokens=args.max_tokens, audio_tokens_per_second=args.audio_tokens_per_second,
                            chars_per_token=args.chars_per_token, max_length=args.max_length,
                            template_tokens=args.template_tokens)
        names = [out.rstrip("/").rsplit("/", 1)[-1] if is_url(out) else out.resolve().name for out in args.out]
        sources = [Source(out, selection, weight, name if names.count(name) == 1 else f"{name}-{number}")
                   for number, (out, weight, name) in enumerate(zip(args.out, weights, names))]
        config = PlanConfig(sources, Mixing(args.mixing, args.temperature, task_weights), batching, seed=args.seed)
        if args.world_size < 1:
            raise ValueError("--world-size must be >= 1")
        summary = preview(config, args.world_size, args.epoch)
    except (OSError, ValueError) as error:
        print(f"llaso-shard plan: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print("\n".join(summary.lines()))
    return 0


class _ProgressLine:
    """Conversion progress on stderr: redrawn in place on a terminal (at most 4 times a
    second), one line every 10 s otherwise (logs, ``ray job submit``)."""

    def __init__(self):
        self._tty = sys.stderr.isatty()
        self._last = float("-inf")

    def __call__(self, progress) -> None:
        finished = progress.samples_done == progress.samples_total
        if progress.elapsed - self._last < (0.25 if self._tty else 10.0) and not finished:
            return
        self._last = progress.elapsed
        rate = progress.samples_done / max(progress.elapsed, 1e-9)
        remaining = (progress.samples_total - progress.samples_done) / rate if rate else float("inf")
        line = (f"converting: {progress.shards_done}/{progress.shards_total} shards, "
                f"{progress.samples_done:,}/{progress.samples_total:,} samples, {rate:,.0f} samples/s, "
                f"ETA {remaining:,.0f} s")
        print(f"\r{line}   " if self._tty else line, end="" if self._tty else "\n", file=sys.stderr, flush=True)


def _print_report(report: ScanReport) -> None:
    print(f"{'split':<6} {'modality':<11} {'task':<28} {'category':<15} {'count':>9}")
    for (split, modality, task, category), count in sorted(report.samples.items()):
        print(f"{split:<6} {modality:<11} {task:<28} {category:<15} {count:>9,}")
    print(f"\n{report.files} files, {report.read:,} records read: "
          f"{report.valid:,} valid, {report.read - report.valid:,} rejected")
    for reason, count in sorted(report.rejected.items()):
        print(f"  rejected {reason:<26} {count:>9,}")


if __name__ == "__main__":
    sys.exit(main())
