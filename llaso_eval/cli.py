"""``llaso-eval``: generate answers, score prediction files and report on them (all printing and exit codes live here).

Exit status: 0 when scoring ran (records that could not be scored are listed on stderr
and counted per stem as ``rejected``), 2 on bad input (a missing or empty folder, an
unreadable scores file, an unreachable judge).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .judge import Judge, JudgeError
from .score import NO_JUDGE, DirectoryScore, StemScore

SHOW_PROBLEMS = 20
"""How many unscorable records are printed one by one before a count."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llaso-eval", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_generate(commands)
    _add_score(commands)
    _add_report(commands)
    args = parser.parse_args(argv)
    return args.run(args)


def _add_judge_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LLM judge (AQA, IP, SCR, EE); without one these stems are skipped")
    group.add_argument("--judge-url", default=None, metavar="URL",
                       help="an OpenAI-compatible server (http://HOST:PORT or .../v1); needs --judge-model")
    group.add_argument("--judge-model", default=None, metavar="NAME", help="the model name sent to --judge-url")
    group.add_argument("--judge-key-env", default="OPENAI_API_KEY", metavar="VAR",
                       help="environment variable holding the API key, if any (default OPENAI_API_KEY)")
    group.add_argument("--judge-hf", type=Path, default=None, metavar="MODEL_DIR",
                       help="a local Hugging Face causal LM folder as judge (instead of --judge-url)")
    group.add_argument("--judge-workers", type=int, default=8, metavar="N",
                       help="judge requests in flight at once (default 8)")


def _add_generate(commands) -> None:
    generate = commands.add_parser(
        "generate", help="answer an eval corpus's shards with an exported model (under torchrun)",
        description="Run as: torchrun --nproc_per_node N -m llaso_eval generate --model EXPORT "
                    "--shards DIR --out DIR (or plain `llaso-eval generate` for one process).")
    generate.add_argument("--model", type=Path, required=True, help="a llaso_train export folder (RUN/export)")
    generate.add_argument("--shards", type=Path, required=True, help="a converted corpus (llaso-shard convert)")
    generate.add_argument("--out", type=Path, required=True, help="a new or empty folder for the predictions")
    generate.add_argument("--splits", nargs="+", default=["test"], help="splits to answer (default: test)")
    generate.add_argument("--modalities", nargs="+", default=None, help="modalities to answer (default: all)")
    generate.add_argument("--tasks", nargs="+", default=None, help="tasks to answer (default: all)")
    generate.add_argument("--batch-size", type=int, default=8, help="samples per rank and step (default 8)")
    generate.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens (default 128)")
    generate.add_argument("--num-workers", type=int, default=1, help="DataLoader workers per rank (default 1)")
    generate.add_argument("--zero-stage", type=int, choices=(0, 3), default=3,
                          help="3: weights partitioned over the ranks (default); 0: a full copy per rank")
    generate.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from .generate import GenerateOptions, generate

    try:
        options = GenerateOptions(
            model=args.model, shards=args.shards, out=args.out, splits=tuple(args.splits),
            modalities=tuple(args.modalities) if args.modalities else None,
            tasks=tuple(args.tasks) if args.tasks else None, batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens, num_workers=args.num_workers, zero_stage=args.zero_stage)
        summary = generate(options)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"llaso-eval generate: {error}", file=sys.stderr)
        return 2
    if summary is not None:
        print(f"answered {summary['predicted']} of {summary['samples']} samples in {len(summary['files'])} files "
              f"under {args.out}; missing {len(summary['missing'])}, skipped {summary['skipped_by_reason'] or 'none'}")
        if summary["missing"]:
            print(f"missing samples are listed in {args.out / 'generation.json'}", file=sys.stderr)
            return 1
    return 0


def _add_score(commands) -> None:
    score = commands.add_parser("score", help="score every prediction file of a folder, per file and per task")
    score.add_argument("pred_dir", type=Path, help="folder of <stem>_test.json / .jsonl prediction files")
    score.add_argument("--json", action="store_true",
                       help="print one JSON object keyed by file stem (metric, value, n, abstention_rate, ...)")
    _add_judge_options(score)
    score.set_defaults(run=_run_score)


def _add_report(commands) -> None:
    report = commands.add_parser("report", help="tables and a chart (PNG + HTML) for one or more runs side by side")
    report.add_argument("inputs", type=Path, nargs="+",
                        help="prediction folders (scored now) or JSON files written by `score --json`")
    report.add_argument("--out", type=Path, required=True, help="folder for report.png, report.html, scores.json")
    report.add_argument("--names", default=None, help="comma-separated run names (default: the input names)")
    _add_judge_options(report)
    report.set_defaults(run=_run_report)


def _judge_from(args: argparse.Namespace) -> Judge | None:
    """The judge the options ask for, or None; raises ValueError on contradictory options."""
    if args.judge_url and args.judge_hf:
        raise ValueError("give --judge-url or --judge-hf, not both")
    if bool(args.judge_url) != bool(args.judge_model):
        raise ValueError("--judge-url and --judge-model go together")
    if args.judge_url:
        from .judge import OpenAIJudge

        return OpenAIJudge(args.judge_url, args.judge_model, os.environ.get(args.judge_key_env) or None)
    if args.judge_hf:
        from .judge import HFJudge

        try:
            return HFJudge(args.judge_hf)
        except (OSError, ValueError) as error:
            raise ValueError(f"--judge-hf {args.judge_hf}: cannot load the model: {error}") from None
    return None


def _score_dir(pred_dir: Path, judge: Judge | None, workers: int) -> DirectoryScore:
    """Score a folder, reporting unscorable records and skipped judge stems on stderr."""
    from .score import score_directory

    def progress(stem: StemScore) -> None:
        if judge is not None and stem.metric == "judge":
            print(f"judged {stem.stem}: {stem.n} records", file=sys.stderr)

    result = score_directory(pred_dir, judge, workers, progress=progress)
    for problem in result.problems[:SHOW_PROBLEMS]:
        print(f"not scored: {problem}", file=sys.stderr)
    if len(result.problems) > SHOW_PROBLEMS:
        print(f"not scored: ... {len(result.problems) - SHOW_PROBLEMS} more records", file=sys.stderr)
    skipped = [s.stem for s in result.stems.values() if s.skipped == NO_JUDGE]
    if skipped:
        print(f"notice: {pred_dir}: {len(skipped)} stem(s) need an LLM judge and none is configured; "
              f"reported with value null: {', '.join(skipped)}. "
              f"Score them with --judge-url URL --judge-model NAME, or --judge-hf MODEL_DIR.", file=sys.stderr)
    for stem in result.stems.values():
        if stem.skipped and stem.skipped != NO_JUDGE:
            print(f"notice: {stem.file}: not scored: {stem.skipped}", file=sys.stderr)
    return result


def _run_score(args: argparse.Namespace) -> int:
    from .report import Run, format_run

    try:
        judge = _judge_from(args)
        result = _score_dir(args.pred_dir, judge, args.judge_workers)
    except (ValueError, JudgeError) as error:  # PredictionDirError is a ValueError
        print(f"llaso-eval score: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print(format_run(Run.of(args.pred_dir.name, str(args.pred_dir), result.stems)))
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from .report import Run, format_comparison, load_scores, write_report

    names = args.names.split(",") if args.names else [p.stem if p.is_file() else p.name for p in args.inputs]
    if len(names) != len(args.inputs):
        print(f"llaso-eval report: {len(names)} names for {len(args.inputs)} inputs", file=sys.stderr)
        return 2
    try:
        judge = _judge_from(args)
        runs = []
        for name, source in zip(names, args.inputs):
            stems = load_scores(source) if source.is_file() else _score_dir(source, judge, args.judge_workers).stems
            runs.append(Run.of(name, str(source), stems))
        paths = write_report(runs, args.out)
    except (ValueError, JudgeError) as error:  # PredictionDirError is a ValueError
        print(f"llaso-eval report: {error}", file=sys.stderr)
        return 2
    print(format_comparison(runs))
    print(f"report written: {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
