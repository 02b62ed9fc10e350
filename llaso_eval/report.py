"""Render scored runs: text tables for a terminal, and a report folder with a chart.

A *run* is the stem scores of one prediction folder (scored now) or of one JSON file
written by ``llaso-eval score --json``. :func:`write_report` writes, for one or several
runs side by side (in the order given; :func:`leaderboard` sorts them by overall score):

* ``report.png``: normalised score (0..1) per task, per category and overall, one bar per run;
* ``report.html``: one self-contained page (the chart inline, the overall/category, task
  and stem tables, what each metric means);
* ``report.md``: the normalised scores per task, category and overall as a Markdown table;
* ``scores.json``: every run's stem scores and summary.

Each judged task's score is marked by where its verdicts came from (:func:`verdict_mark`):
``c`` the judge cache (the cache file or LLaSO's ``gpt_result``), ``l`` the live judge,
``m`` records without a verdict (left out; ``-`` when none has one).
"""

from __future__ import annotations

import base64
import html
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

from .score import StemScore
from .summary import Summary, category_rank, summarize, task_rank

REPORT_FILES = ("report.png", "report.html", "report.md", "scores.json")
MARK_LEGEND = ("judged tasks: c = verdicts from the judge cache (cache file or LLaSO's gpt_result), "
               "l = from the live judge, m = records without a verdict, left out (- m: none has one)")
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94")
_METRIC_NOTES = {
    "wer": "word error rate after normalisation (lower is better); normalised 1 - WER",
    "cer": "character error rate, CJK text (lower is better); normalised 1 - CER",
    "per": "phone error rate over IPA symbols (lower is better); normalised 1 - PER",
    "accuracy": "exactly one label named and it is the gold; abstention = not exactly one label named",
    "mae": "mean absolute error of the first number (lower is better); normalised mean max(0, 1 - |err|/S)",
    "exact_match": "share of the gold's integer scores reproduced exactly",
    "judge": "LLM judge score 1..5; normalised (score - 1) / 4",
}


@dataclass(frozen=True)
class Run:
    """A named set of stem scores and its summary; ``source`` is where it came from."""

    name: str
    source: str
    stems: dict[str, StemScore]
    summary: Summary

    @classmethod
    def of(cls, name: str, source: str, stems: dict[str, StemScore]) -> "Run":
        return cls(name, source, stems, summarize(stems.values()))


def load_scores(path: Path) -> dict[str, StemScore]:
    """Stem scores from a file written by ``llaso-eval score --json`` (one JSON object keyed by stem)."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read scores: {error}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected one JSON object keyed by stem, as `llaso-eval score --json` prints")
    try:
        return {stem: StemScore.from_dict(stem, value) for stem, value in data.items()}
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def leaderboard(runs: list[Run]) -> list[Run]:
    """The runs by overall normalised score, best first (runs without one last; ties keep
    their order)."""
    return sorted(runs, key=lambda r: (r.summary.overall is None, -(r.summary.overall or 0.0)))


def verdict_mark(verdicts: dict[str, int] | None) -> str:
    """Where a judged score's verdicts came from: ``c`` (cache), ``l`` (live judge), ``m``
    (some records without one), in that order; ``""`` for a task that is not judged."""
    if not verdicts:
        return ""
    return "".join(mark for mark, source in (("c", "cache"), ("l", "live"), ("m", "missing"))
                   if verdicts.get(source))


def _task(run: Run, task: str):
    return next((t for t in run.summary.tasks if t.task == task), None)


def _task_mark(run: Run, task: str) -> str:
    score = _task(run, task)
    return verdict_mark(score.verdicts) if score is not None else ""


def _notes(stem: StemScore) -> str:
    """Unparsed and rejected counts, verdict sources and why a stem was skipped, comma-separated."""
    notes = [f"{stem.unparsed} unparsed"] if stem.unparsed else []
    notes += [f"{stem.rejected} rejected"] if stem.rejected else []
    if stem.verdicts:
        sources = [f"{count} {source}" for source, count in stem.verdicts.items() if count]
        notes += [f"verdicts: {' '.join(sources)}"] if sources else []
    notes += [f"skipped: {stem.skipped}"] if stem.skipped else []
    return ", ".join(notes)


def format_run(run: Run) -> str:
    """Stem, task and category tables and the overall score of one run, for a terminal."""
    lines = [f"{'stem':<40} {'task':<6} {'metric':<12} {'value':>8} {'n':>6} {'abstain':>8} {'norm':>6}  notes"]
    for stem in run.stems.values():
        lines.append(f"{stem.stem:<40} {stem.task:<6} {stem.metric or '-':<12} {_number(stem.value, 4):>8} "
                     f"{stem.n:>6} {_percent(stem.abstention_rate):>8} {_number(stem.normalized):>6}  "
                     + _notes(stem))
    lines += ["", f"{'task':<6} {'name':<40} {'category':<15} {'metric':<12} {'value':>8} {'n':>6} "
                  f"{'abstain':>8} {'norm':>6}"]
    for task in run.summary.tasks:
        lines.append(f"{task.task:<6} {task.name:<40} {task.category:<15} {task.metric or '-':<12} "
                     f"{_number(task.value, 4):>8} {task.n:>6} {_percent(task.abstention_rate):>8} "
                     f"{_number(task.normalized):>6}")
    lines.append("")
    for category, value in run.summary.categories.items():
        lines.append(f"{category:<15} normalised {_number(value)}")
    scored = len(run.summary.tasks) - len(run.summary.skipped)
    lines.append(f"overall normalised score {_number(run.summary.overall)} over {scored} tasks"
                 + (f" (no score: {', '.join(run.summary.skipped)})" if run.summary.skipped else ""))
    return "\n".join(lines)


def comparison_rows(runs: list[Run]) -> list[tuple[str, str, list[float | None]]]:
    """``(kind, label, normalised score per run)`` rows: every task of any run (catalogue
    order), then the categories, then ``overall``."""
    tasks = sorted({t.task for run in runs for t in run.summary.tasks}, key=task_rank)
    rows = [("task", task, [_task_normalized(run, task) for run in runs]) for task in tasks]
    categories = sorted({c for run in runs for c in run.summary.categories}, key=category_rank)
    rows += [("category", c, [run.summary.categories.get(c) for run in runs]) for c in categories]
    rows.append(("overall", "overall", [run.summary.overall for run in runs]))
    return rows


def _task_normalized(run: Run, task: str) -> float | None:
    score = _task(run, task)
    return score.normalized if score is not None else None


def _marked_cells(runs: list[Run]) -> list[tuple[str, str, list[str]]]:
    """:func:`comparison_rows` as text: each value to 3 decimals, a judged task's followed by
    its :func:`verdict_mark`; then a ``tasks scored`` row."""
    rows = []
    for kind, label, values in comparison_rows(runs):
        cells = [_number(v) for v in values]
        if kind == "task":
            cells = [f"{cell} {_task_mark(run, label)}".rstrip() for cell, run in zip(cells, runs)]
        rows.append((kind, label, cells))
    rows.append(("count", "tasks scored", [str(len(r.summary.tasks) - len(r.summary.skipped)) for r in runs]))
    return rows


def format_comparison(runs: list[Run]) -> str:
    """Normalised scores side by side: one row per task, category and overall (and the
    number of tasks scored), one column per run; judged tasks marked (:func:`verdict_mark`)."""
    rows = _marked_cells(runs)
    width = max(8, *(len(r.name) for r in runs), *(len(c) for _, _, cells in rows for c in cells))
    lines = [f"{'':<16}" + "".join(f" {r.name:>{width}}" for r in runs)]
    previous = "task"
    for kind, label, cells in rows:
        if kind != previous:
            lines.append("-" * len(lines[0]))
            previous = kind
        lines.append(f"{label:<16}" + "".join(f" {c:>{width}}" for c in cells))
    if any(_task_mark(run, t.task) for run in runs for t in run.summary.tasks):
        lines.append(MARK_LEGEND)
    return "\n".join(lines)


def format_markdown(runs: list[Run]) -> str:
    """:func:`format_comparison` as a Markdown table (categories and overall in bold)."""
    rows = _marked_cells(runs)
    lines = ["| | " + " | ".join(r.name for r in runs) + " |", "|---|" + "---:|" * len(runs)]
    for kind, label, cells in rows:
        shown = label if kind == "task" else f"**{label}**"
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    if any(_task_mark(run, t.task) for run in runs for t in run.summary.tasks):
        lines += ["", MARK_LEGEND[0].upper() + MARK_LEGEND[1:] + "."]
    return "\n".join(lines) + "\n"


def write_report(runs: list[Run], out_dir: Path) -> list[Path]:
    """Write :data:`REPORT_FILES` into ``out_dir`` (created); returns their paths."""
    names = [r.name for r in runs]
    if not runs or len(set(names)) != len(names):
        raise ValueError(f"runs need distinct names, got {names}")
    out_dir.mkdir(parents=True, exist_ok=True)
    png, page, markdown, scores = (out_dir / name for name in REPORT_FILES)
    _draw_png(runs, png)
    page.write_text(_html_page(runs, png.read_bytes()), "utf-8")
    markdown.write_text(format_markdown(runs), "utf-8")
    scores.write_text(json.dumps(
        {"runs": {r.name: {"source": r.source, "summary": r.summary.to_dict(),
                           "stems": {s: v.to_dict() for s, v in r.stems.items()}} for r in runs}},
        ensure_ascii=False, indent=1), "utf-8")
    return [png, page, markdown, scores]


def _draw_png(runs: list[Run], path: Path) -> None:
    """Grouped horizontal bars of normalised scores with matplotlib's Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = comparison_rows(runs)
    figure = Figure(figsize=(7.5, 1.4 + 0.22 * len(rows) * max(1.0, len(runs) / 2)), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    band = 0.8 / len(runs)
    for i, run in enumerate(runs):
        positions = [row + (i - (len(runs) - 1) / 2) * band for row in range(len(rows))]
        values = [vs[i] or 0.0 for _, _, vs in rows]
        bars = ax.barh(positions, values, height=band, color=_PALETTE[i % len(_PALETTE)])
        labels = [(_number(vs[i], 2) if vs[i] is not None else "n/a")
                  + (f" {_task_mark(run, label)}".rstrip() if kind == "task" else "")
                  for kind, label, vs in rows]
        ax.bar_label(bars, labels=labels, padding=2, fontsize=6)
    ax.set_yticks(range(len(rows)), [label for _, label, _ in rows], fontsize=8)
    for tick, (kind, _, _) in zip(ax.get_yticklabels(), rows):
        tick.set_fontweight("normal" if kind == "task" else "bold")
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("normalised score (0..1, higher is better)\n" + "\n".join(textwrap.wrap(MARK_LEGEND, 100)),
                  fontsize=7)
    ax.set_title("LLaSO-Eval: normalised score per task, category and overall")
    figure.legend(handles=[Patch(color=_PALETTE[i % len(_PALETTE)], label=r.name) for i, r in enumerate(runs)],
                  loc="outside lower center", ncols=min(len(runs), 4), fontsize=8)
    figure.savefig(path, format="png", dpi=120)


def _cell(value: str, numeric: bool = True) -> str:
    return f'<td class="n">{html.escape(value)}</td>' if numeric else f"<td>{html.escape(value)}</td>"


def _html_page(runs: list[Run], png: bytes) -> str:
    """The report page: chart, summary table, task table, stem table, metric notes."""
    run_heads = "".join(f"<th>{html.escape(r.name)}</th>" for r in runs)
    summary_rows = "\n".join(
        f"<tr><td>{html.escape(label)}</td>" + "".join(_cell(_number(v)) for v in values) + "</tr>"
        for kind, label, values in comparison_rows(runs) if kind != "task")
    task_heads = "".join(f'<th colspan="3">{html.escape(r.name)}</th>' for r in runs)
    task_sub = "<th>value</th><th>abstain</th><th>norm</th>" * len(runs)
    task_rows = []
    for _, task, _ in (row for row in comparison_rows(runs) if row[0] == "task"):
        scores = [next((t for t in r.summary.tasks if t.task == task), None) for r in runs]
        first = next(t for t in scores if t is not None)
        cells = "".join(_cell(f"{_number(t.value, 4)} {verdict_mark(t.verdicts)}".rstrip())
                        + _cell(_percent(t.abstention_rate)) + _cell(_number(t.normalized))
                        if t is not None else '<td colspan="3"></td>' for t in scores)
        task_rows.append(f"<tr><td>{html.escape(task)}</td><td>{html.escape(first.name)}</td>"
                         f"<td>{html.escape(first.category)}</td><td>{html.escape(first.metric or '-')}</td>{cells}</tr>")
    stems = dict.fromkeys(s for r in runs for s in r.stems)
    stem_rows = []
    for stem in stems:
        scores = [r.stems.get(stem) for r in runs]
        first = next(s for s in scores if s is not None)
        cells = "".join(_cell(_number(s.value, 4)) + _cell(str(s.n)) + _cell(_percent(s.abstention_rate))
                        + _cell(_notes(s), numeric=False)
                        if s is not None else '<td colspan="4"></td>' for s in scores)
        stem_rows.append(f"<tr><td>{html.escape(stem)}</td><td>{html.escape(first.task)}</td>"
                         f"<td>{html.escape(first.metric or '-')}</td>{cells}</tr>")
    stem_heads = "".join(f'<th colspan="4">{html.escape(r.name)}</th>' for r in runs)
    stem_sub = "<th>value</th><th>n</th><th>abstain</th><th>notes</th>" * len(runs)
    notes = "\n".join(f"<li><b>{m}</b>: {html.escape(text)}</li>" for m, text in _METRIC_NOTES.items())
    sources = "\n".join(f"<li><b>{html.escape(r.name)}</b>: {html.escape(r.source)}</li>" for r in runs)
    image = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>LLaSO-Eval report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ padding: 2px 8px; border-bottom: 1px solid #ddd; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
</style></head>
<body>
<h1>LLaSO-Eval report</h1>
<ul>{sources}</ul>
<img alt="normalised score per task, category and overall" src="data:image/png;base64,{image}">
<h2>Overall and categories (normalised, 0..1)</h2>
<table>
<tr><th></th>{run_heads}</tr>
{summary_rows}
</table>
<h2>Tasks</h2>
<table>
<tr><th rowspan="2">task</th><th rowspan="2">name</th><th rowspan="2">category</th><th rowspan="2">metric</th>{task_heads}</tr>
<tr>{task_sub}</tr>
{chr(10).join(task_rows)}
</table>
<h2>Files</h2>
<table>
<tr><th rowspan="2">stem</th><th rowspan="2">task</th><th rowspan="2">metric</th>{stem_heads}</tr>
<tr>{stem_sub}</tr>
{chr(10).join(stem_rows)}
</table>
<h2>Metrics</h2>
<ul>{notes}</ul>
<p>{html.escape(MARK_LEGEND[0].upper() + MARK_LEGEND[1:])}.</p>
<p>Overall: the mean of the task scores that exist, each task counting once; tasks without a
score (a judge task with no verdicts) are left out, so compare runs over the same tasks.</p>
</body></html>
"""
