"""Human-readable outputs of `hftune eval`: report.md, a self-contained report.html and a terminal summary.

Everything here is rendered from the two files the harness already wrote (results.json and samples.jsonl),
so a report can be re-rendered without regenerating or rescoring anything. The modules, in the order the
data flows:

- `results`: reading results.json (variant and metric names in table order, statistics, metric info);
- `table`: the format-free model of a report (sections, tables, cells with their marks and intervals);
- `sections`: one builder per section, from results.json and samples.jsonl to that model;
- `markdown`, `html`: the two renderers (and the one escaper each), `plots`: the figures of report.html,
  `browse`: its prompt browser (every prompt's replies, sorted and filtered by a paired reward difference).

The model card (hftune.publish.card) shows the same metrics table through the same Markdown renderer.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from hftune.artifacts import write_text
from hftune.evaluation.report.html import render_html
from hftune.evaluation.report.markdown import render_markdown
from hftune.evaluation.report.results import (
    CAVEAT_MARK,
    HEADLINE,
    confidence,
    metric_names,
    reward_caveats,
    stat,
)
from hftune.evaluation.report.sections import metrics_table
from hftune.evaluation.report.table import Cell

__all__ = [
    "CAVEAT_MARK",
    "render_html",
    "render_markdown",
    "reward_caveats",
    "summary_table",
    "write_reports",
]


WIDTH = 100  # the terminal summary's widest line


def write_reports(out_dir: Path, results: dict, samples: list[dict]) -> None:
    """Write out_dir/report.md and out_dir/report.html (each written atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "report.md", render_markdown(results, samples))
    write_text(out_dir / "report.html", render_html(results, samples))


def summary_table(results: dict, width: int = WIDTH) -> str:
    """The plain-text table printed at the end of `hftune eval`, at most `width` columns wide: one row per
    variant, columns = the headline metrics present (reward, win rate vs the baseline, verifier, exact_match,
    kl_to_sft, length, eos_rate, loop_rate...), each cell `mean ±h` with h the wider side of its CI (so the
    interval is never understated); missing -> '-'. Columns that do not fit are named below the table (the
    full table, with the exact intervals, is in report.md and report.html). A marked reward cell (a variant
    that never trained against the reward model) has its footnote below the table."""
    table = metrics_table(results, only=HEADLINE)
    metrics = [m for m in metric_names(results) if m in HEADLINE]  # the table's columns, in its order
    columns = [[table.header[0].text, *(row[0].text for row in table.rows)]]
    for i, metric in enumerate(metrics, start=1):
        cells = (_compact(row[i], stat(results, row[0].text, metric)) for row in table.rows)
        columns.append([table.header[i].text, *cells])
    widths = [max(map(len, column)) for column in columns]
    cut = []
    while len(columns) > 2 and sum(widths) + 2 * (len(widths) - 1) > width:
        cut.insert(0, columns.pop()[0])
        widths.pop()
    lines = [
        "  ".join(column[i].ljust(w) for column, w in zip(columns, widths, strict=True)).rstrip()
        for i in range(len(columns[0]))
    ]
    if not table.rows:
        return "\n".join(lines)
    lines += [
        "",
        f"mean ±h: h is the wider side of the {confidence(results)} CI (exact intervals: report.md).",
    ]
    if cut:
        lines.append(f"Left out to fit {width} columns: {', '.join(cut)} (see report.md).")
    for note in table.footnotes:
        lines += ["", textwrap.fill(note, width)]
    return "\n".join(lines)


def _compact(cell: Cell, value: dict | None) -> str:
    """A statistic as `mean ±h` (h: the wider side of its interval, at the cell's precision), with its
    footnote mark."""
    text = cell.text
    if cell.ci is not None and value:
        spread = max(value["mean"] - value["ci_low"], value["ci_high"] - value["mean"])
        text += f" ±{spread:.{len(cell.text.partition('.')[2])}f}"
    return text + (f" {cell.note}" if cell.note else "")
