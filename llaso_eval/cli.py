"""``llaso-eval``: generate answers, score prediction files and report on them (all printing and exit codes live here).

Exit status: 0 when scoring ran (records that could not be scored are listed on stderr
and counted per stem as ``rejected``; so are judge verdicts not used), 2 on bad input (a
missing or empty folder, an unreadable scores file, an unreachable judge).

With ``--judge-cache DIR`` every verdict a live judge gives is appended to
``DIR/judge_cache.jsonl`` as it arrives (the only file scoring writes besides the report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

from llaso_data.cli import location

from .judge import DEFAULT_PROMPT_VERSION, Judge, JudgeError
from .judge_cache import CACHE_FILE, PUBLISHED_FOLDER, JudgeIdentity, Verdict, VerdictStore, cache_identity, \
    read_cache_file
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
    group = parser.add_argument_group(
        "LLM judge (AQA, IP, SCR, EE); without a judge or cached verdicts these stems are skipped")
    group.add_argument("--judge-url", default=None, metavar="URL",
                       help="an OpenAI-compatible server (http://HOST:PORT or .../v1); needs --judge-model")
    group.add_argument("--judge-model", default=None, metavar="NAME",
                       help="the model name sent to --judge-url; alone with --judge-cache, the judge whose "
                            "cached verdicts are reused (default: the only judge in the cache)")
    group.add_argument("--judge-key-env", default="OPENAI_API_KEY", metavar="VAR",
                       help="environment variable holding the API key, if any (default OPENAI_API_KEY)")
    group.add_argument("--judge-hf", type=Path, default=None, metavar="MODEL_DIR",
                       help="a local Hugging Face causal LM folder as judge (instead of --judge-url)")
    group.add_argument("--judge-workers", type=int, default=8, metavar="N",
                       help="judge requests in flight at once (default 8)")
    group.add_argument("--judge-cache", type=Path, default=None, metavar="DIR",
                       help=f"reuse verdicts from DIR/{CACHE_FILE}, DIR/{PUBLISHED_FOLDER}/ and each prediction "
                            f"folder's {PUBLISHED_FOLDER}/ (LLaSO's published verdicts); a live judge's new "
                            f"verdicts are appended to DIR/{CACHE_FILE}")


def _add_generate(commands) -> None:
    generate = commands.add_parser(
        "generate", help="answer an eval corpus's shards with an exported model (under torchrun)",
        description="Run as: torchrun --nproc_per_node N -m llaso_eval generate --model EXPORT "
                    "--shards DIR --out DIR (or plain `llaso-eval generate` for one process).")
    generate.add_argument("--model", type=Path, required=True, help="a llaso_train export folder (RUN/export)")
    generate.add_argument("--shards", type=location, required=True,
                          help="a converted corpus (llaso-shard convert): a folder or s3://bucket/prefix")
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
    from llaso_train.quiet import hide_known_noise

    from .generate import GenerateOptions, generate

    hide_known_noise()
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
    report = commands.add_parser(
        "report", help="a leaderboard: tables and a chart (PNG, HTML, Markdown) for runs side by side, "
                       "best overall score first")
    report.add_argument("inputs", type=Path, nargs="+",
                        help="prediction folders (scored now) or JSON files written by `score --json`")
    report.add_argument("--out", type=Path, required=True,
                        help="folder for report.png, report.html, report.md, scores.json")
    report.add_argument("--names", default=None, help="comma-separated run names (default: the input names)")
    _add_judge_options(report)
    report.set_defaults(run=_run_report)


def _judge_from(args: argparse.Namespace) -> Judge | None:
    """The judge the options ask for, or None; raises ValueError on contradictory options."""
    if args.judge_url and args.judge_hf:
        raise ValueError("give --judge-url or --judge-hf, not both")
    if args.judge_url and not args.judge_model:
        raise ValueError("--judge-url and --judge-model go together")
    if args.judge_model and not args.judge_url and args.judge_cache is None:
        raise ValueError("--judge-model needs --judge-url (a live judge) or --judge-cache (its cached verdicts)")
    if args.judge_model and args.judge_hf:
        raise ValueError("--judge-model names the model of --judge-url, not of --judge-hf")
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


class _CacheAppender:
    """Appends each new verdict to ``DIR/judge_cache.jsonl`` as one line, flushed at once
    (thread-safe; the folder and file are created on the first verdict)."""

    def __init__(self, path: Path):
        self.path = path
        self.written = 0
        self._stream = None
        self._lock = threading.Lock()

    def __call__(self, verdict: Verdict) -> None:
        line = verdict.to_line() + "\n"
        with self._lock:
            if self._stream is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                unterminated = self.path.exists() and self.path.stat().st_size > 0 and \
                    self.path.read_bytes()[-1:] != b"\n"
                self._stream = open(self.path, "a", encoding="utf-8")
                if unterminated:  # a line cut off by an interrupted run stays on its own line
                    self._stream.write("\n")
            self._stream.write(line)
            self._stream.flush()
            self.written += 1

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None


def _verdict_store(args: argparse.Namespace, judge: Judge | None) -> tuple[VerdictStore | None, _CacheAppender | None]:
    """The verdicts ``--judge-cache`` offers and the appender of new ones (None, None without it)."""
    folder = args.judge_cache
    if folder is None:
        return None, None
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--judge-cache {folder}: not a folder")
    cache, problems = read_cache_file(folder / CACHE_FILE)
    _show(problems, "judge cache line not used")
    if judge is not None:
        identity = JudgeIdentity(judge.model, judge.prompt_version)
    elif args.judge_model:
        identity = JudgeIdentity(args.judge_model, DEFAULT_PROMPT_VERSION)
    else:
        identity = cache_identity(cache, str(folder / CACHE_FILE))
    appender = _CacheAppender(folder / CACHE_FILE) if judge is not None else None
    print(f"judge cache {folder}: {len(cache)} verdicts"
          + (f", reusing those of {identity}" if identity is not None else ""), file=sys.stderr)
    return VerdictStore(cache, identity, (folder / PUBLISHED_FOLDER,), appender), appender


def _show(problems: list, what: str) -> None:
    for problem in problems[:SHOW_PROBLEMS]:
        print(f"{what}: {problem}", file=sys.stderr)
    if len(problems) > SHOW_PROBLEMS:
        print(f"{what}: ... {len(problems) - SHOW_PROBLEMS} more", file=sys.stderr)


def _score_dir(pred_dir: Path, judge: Judge | None, workers: int,
               store: VerdictStore | None = None) -> DirectoryScore:
    """Score a folder, reporting unscorable records, unused verdicts and skipped judge stems on stderr."""
    from .score import score_directory

    def progress(stem: StemScore) -> None:
        if judge is not None and stem.metric == "judge":
            live = (stem.verdicts or {}).get("live", 0)
            print(f"judged {stem.stem}: {stem.n} records ({live} by the live judge)",
                  file=sys.stderr)

    result = score_directory(pred_dir, judge, workers, progress=progress, verdicts=store)
    _show(result.problems, "not scored")
    _show(result.verdict_problems, "judge verdict not used")
    skipped = [s.stem for s in result.stems.values() if s.skipped == NO_JUDGE]
    if skipped:
        where = "none is configured and the judge cache has no verdicts for them" if store is not None \
            else "none is configured"
        print(f"notice: {pred_dir}: {len(skipped)} stem(s) need an LLM judge; {where}; "
              f"reported with value null: {', '.join(skipped)}. "
              f"Score them with --judge-url URL --judge-model NAME, or --judge-hf MODEL_DIR"
              + ("" if store is not None else ", or reuse verdicts with --judge-cache DIR") + ".", file=sys.stderr)
    for stem in result.stems.values():
        if stem.skipped and stem.skipped != NO_JUDGE:
            print(f"notice: {stem.file}: not scored: {stem.skipped}", file=sys.stderr)
        elif stem.value is not None and stem.verdicts and stem.verdicts["missing"]:
            print(f"notice: {stem.file}: {stem.verdicts['missing']} record(s) have no judge verdict and are "
                  f"left out; scored over {stem.n}", file=sys.stderr)
    return result


def _run_score(args: argparse.Namespace) -> int:
    from .report import Run, format_run

    appender = None
    try:
        judge = _judge_from(args)
        store, appender = _verdict_store(args, judge)
        result = _score_dir(args.pred_dir, judge, args.judge_workers, store)
    except (ValueError, JudgeError) as error:  # PredictionDirError is a ValueError
        print(f"llaso-eval score: {error}", file=sys.stderr)
        return 2
    finally:
        _close(appender)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print(format_run(Run.of(args.pred_dir.name, str(args.pred_dir), result.stems)))
    return 0


def _close(appender: _CacheAppender | None) -> None:
    if appender is not None:
        appender.close()
        if appender.written:
            print(f"judge cache: {appender.written} new verdicts appended to {appender.path}", file=sys.stderr)


def _run_report(args: argparse.Namespace) -> int:
    from .report import Run, format_comparison, leaderboard, load_scores, write_report

    names = args.names.split(",") if args.names else [p.stem if p.is_file() else p.name for p in args.inputs]
    if len(names) != len(args.inputs):
        print(f"llaso-eval report: {len(names)} names for {len(args.inputs)} inputs", file=sys.stderr)
        return 2
    appender = None
    try:
        judge = _judge_from(args)
        store, appender = _verdict_store(args, judge)
        runs = []
        for name, source in zip(names, args.inputs):
            stems = (load_scores(source) if source.is_file()
                     else _score_dir(source, judge, args.judge_workers, store).stems)
            runs.append(Run.of(name, str(source), stems))
        runs = leaderboard(runs)
        paths = write_report(runs, args.out)
    except (ValueError, JudgeError) as error:  # PredictionDirError is a ValueError
        print(f"llaso-eval report: {error}", file=sys.stderr)
        return 2
    finally:
        _close(appender)
    print(format_comparison(runs))
    print(f"report written: {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
