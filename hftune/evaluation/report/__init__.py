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

from pathlib import Path

from hftune.artifacts import write_text
from hftune.evaluation.report.html import render_html
from hftune.evaluation.report.markdown import render_markdown
from hftune.evaluation.report.results import CAVEAT_MARK, HEADLINE, reward_caveats
from hftune.evaluation.report.sections import metrics_table
from hftune.evaluation.report.table import plain

__all__ = [
    "CAVEAT_MARK",
    "render_html",
    "render_markdown",
    "reward_caveats",
    "summary_table",
    "write_reports",
]


def write_reports(out_dir: Path, results: dict, samples: list[dict]) -> None:
    """Write out_dir/report.md and out_dir/report.html (each written atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "report.md", render_markdown(results, samples))
    write_text(out_dir / "report.html", render_html(results, samples))


def summary_table(results: dict) -> str:
    """A short plain-text table printed at the end of `hftune eval`: one row per variant, columns = the
    headline metrics present (reward, win rate vs the baseline, verifier, exact_match, kl_to_sft, length,
    eos_rate, loop_rate...), each as `mean [ci_low, ci_high]`; missing -> '-'. A marked reward cell (a
    variant that never trained against the reward model) has its footnote below the table."""
    table = metrics_table(results, only=HEADLINE)
    grid = [[c.text for c in table.header], *([plain(c) for c in row] for row in table.rows)]
    widths = [max(len(row[i]) for row in grid) for i in range(len(table.header))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in grid)
    return "\n".join([*(line.rstrip() for line in lines), *(f"\n{note}" for note in table.footnotes)])
