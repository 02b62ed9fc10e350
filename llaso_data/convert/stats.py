"""Corpus statistics from ``manifest.parquet`` alone: samples, hours and shards per stratum.

:func:`corpus_stats` aggregates the manifest; :func:`format_stats_table` renders the rows
for a terminal; :func:`write_chart` draws them as a PNG (matplotlib, Agg) or as one
self-contained HTML page (a table and inline SVG bars, no scripts).
"""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path

from llaso_data.manifest import read_manifest
from llaso_data.tasks import MODALITIES

GROUP = ("split", "modality", "task", "category")
"""The columns a stats row is keyed by."""
METRICS = ("samples", "hours")
"""What a chart's bars can measure."""
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_SVG_BAR = 18
"""Height of one SVG bar row (pixels)."""
_SVG_LABEL = 160
"""Width of the SVG task-label column (pixels)."""
_SVG_VALUE = 90
"""Width kept right of the longest bar for its value (pixels)."""
_SVG_WIDTH = 640
"""Total SVG width (pixels)."""


def corpus_stats(out: Path | str) -> list[dict]:
    """One row per (split, modality, task, category) of the corpus in ``out`` (a folder or
    an ``s3://`` prefix), sorted:
    those four keys plus ``samples`` (count), ``hours`` (audio hours) and ``shards`` (count)."""
    totals: dict[tuple, dict] = defaultdict(lambda: {"samples": 0, "seconds": 0.0, "shards": 0})
    for row in read_manifest(out).to_pylist():
        total = totals[tuple(row[c] for c in GROUP)]
        total["samples"] += row["num_samples"]
        total["seconds"] += row["audio_seconds"]
        total["shards"] += 1
    return [{**dict(zip(GROUP, key)), "samples": t["samples"], "hours": t["seconds"] / 3600, "shards": t["shards"]}
            for key, t in sorted(totals.items())]


def format_stats_table(rows: list[dict]) -> str:
    """The rows as an aligned text table with a total line (hours to 3 decimals)."""
    header = f"{'split':<6} {'modality':<11} {'task':<24} {'category':<15} {'samples':>10} {'hours':>10} {'shards':>7}"
    lines = [header, "-" * len(header)]
    lines += [f"{r['split']:<6} {r['modality']:<11} {r['task']:<24} {r['category']:<15} "
              f"{r['samples']:>10,} {r['hours']:>10.3f} {r['shards']:>7,}" for r in rows]
    lines.append("-" * len(header))
    lines.append(f"{'total':<59} {sum(r['samples'] for r in rows):>10,} "
                 f"{sum(r['hours'] for r in rows):>10.3f} {sum(r['shards'] for r in rows):>7,}")
    return "\n".join(lines)


def write_chart(rows: list[dict], path: Path, metric: str = "hours") -> None:
    """Draw ``metric`` (``"hours"`` or ``"samples"``) per task as horizontal bars coloured by
    modality, one panel per split. A ``.html`` path gets a self-contained HTML page (table and
    inline SVG); any other path an image in the format its suffix names (PNG without one)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
    panels = _panels(rows, metric)
    colours = _colours(rows)
    if path.suffix.lower() in (".html", ".htm"):
        path.write_text(_html_page(rows, panels, colours, metric), "utf-8")
    else:
        _draw_png(panels, colours, metric, path)


def _panels(rows: list[dict], metric: str) -> dict[str, list[tuple[str, str, float]]]:
    """Per split, ``(modality, task, value)`` bars summed over categories, grouped by modality."""
    sums: dict[str, dict[tuple[str, str], float]] = defaultdict(lambda: defaultdict(float))
    for r in rows:
        sums[r["split"]][(r["modality"], r["task"])] += r[metric]
    return {split: [(m, t, v) for (m, t), v in sorted(bars.items(), key=lambda kv: (_modality_rank(kv[0][0]), kv[0]))]
            for split, bars in sorted(sums.items())}


def _modality_rank(modality: str) -> tuple[int, str]:
    """Known modalities in catalogue order, then any other."""
    return (MODALITIES.index(modality), "") if modality in MODALITIES else (len(MODALITIES), modality)


def _colours(rows: list[dict]) -> dict[str, str]:
    """A fixed colour per modality (hex RGB), the same in PNG and HTML."""
    modalities = sorted({r["modality"] for r in rows}, key=_modality_rank)
    return {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(modalities)}


def _value_label(value: float, metric: str) -> str:
    return f"{value:,.0f}" if metric == "samples" else f"{value:,.3f}"


def _axis_label(metric: str) -> str:
    return "samples" if metric == "samples" else "audio hours"


def _draw_png(panels: dict, colours: dict[str, str], metric: str, path: Path) -> None:
    """Render the panels with matplotlib's Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    tallest = max((len(bars) for bars in panels.values()), default=1)
    figure = Figure(figsize=(6.0 * max(len(panels), 1), 1.6 + 0.28 * tallest), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, max(len(panels), 1), squeeze=False)[0]
    if not panels:
        axes[0].text(0.5, 0.5, "no samples", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, (split, bars) in zip(axes, panels.items()):
        positions = range(len(bars))
        container = ax.barh(positions, [v for _, _, v in bars], color=[colours[m] for m, _, _ in bars])
        ax.bar_label(container, labels=[_value_label(v, metric) for _, _, v in bars], padding=2, fontsize=7)
        ax.set_yticks(list(positions), [t for _, t, _ in bars], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(split)
        ax.set_xlabel(_axis_label(metric))
        ax.margins(x=0.15)
    if colours:
        figure.legend(handles=[Patch(color=c, label=m) for m, c in colours.items()], loc="outside lower center",
                      ncols=len(colours), fontsize=8)
    figure.savefig(path, format=path.suffix[1:].lower() or "png", dpi=120)


def _html_page(rows: list[dict], panels: dict, colours: dict[str, str], metric: str) -> str:
    """One HTML page: a legend, an SVG bar chart per split and the stats table."""
    legend = " ".join(f'<span class="key" style="background:{c}"></span>{html.escape(m)}' for m, c in colours.items())
    charts = "\n".join(f"<h2>{html.escape(split)}</h2>\n{_svg_bars(bars, colours, metric)}"
                       for split, bars in panels.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Corpus statistics</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 2px 10px; border-bottom: 1px solid #ddd; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.key {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 14px; }}
</style></head>
<body>
<h1>Corpus statistics: {_axis_label(metric)} per task</h1>
<p>{legend}</p>
{charts}
<h2>All strata</h2>
{_html_table(rows)}
</body></html>
"""


def _svg_bars(bars: list[tuple[str, str, float]], colours: dict[str, str], metric: str) -> str:
    """Horizontal bars as an inline SVG, scaled to the largest value of the panel."""
    largest = max((v for _, _, v in bars), default=0) or 1
    span = _SVG_WIDTH - _SVG_LABEL - _SVG_VALUE
    items = []
    for i, (modality, task, value) in enumerate(bars):
        y = i * _SVG_BAR
        width = value / largest * span
        label = _value_label(value, metric)
        items.append(
            f'<text x="{_SVG_LABEL - 6}" y="{y + 13}" text-anchor="end">{html.escape(task)}</text>'
            f'<rect x="{_SVG_LABEL}" y="{y + 2}" width="{width:.1f}" height="{_SVG_BAR - 4}" '
            f'fill="{colours[modality]}"><title>{html.escape(f"{modality}/{task}")}: {label}</title></rect>'
            f'<text x="{_SVG_LABEL + width + 4:.1f}" y="{y + 13}">{label}</text>')
    height = max(len(bars), 1) * _SVG_BAR
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_SVG_WIDTH}" height="{height}" '
            f'font-size="11" font-family="sans-serif">\n' + "\n".join(items) + "\n</svg>")


def _html_table(rows: list[dict]) -> str:
    """The stats rows as an HTML table with a total row."""
    head = "".join(f"<th>{c}</th>" for c in (*GROUP, "samples", "hours", "shards"))
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in GROUP)
                     + _number_cells(r["samples"], r["hours"], r["shards"]) + "</tr>" for r in rows)
    total = (f'<tr><th colspan="{len(GROUP)}">total</th>'
             + _number_cells(*(sum(r[c] for r in rows) for c in ("samples", "hours", "shards"))) + "</tr>")
    return f"<table>\n<tr>{head}</tr>\n{body}\n{total}\n</table>"


def _number_cells(samples: int, hours: float, shards: int) -> str:
    """Right-aligned table cells: sample count, audio hours (3 decimals), shard count."""
    return "".join(f'<td class="n">{v}</td>' for v in (f"{samples:,}", f"{hours:,.3f}", f"{shards:,}"))
