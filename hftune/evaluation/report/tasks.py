"""The per-task section of an eval report: results.json's `tasks` (a suite's `tasks` tags each prompt), one
row per task with its number of prompts, each variant's headline metric over that task's prompts and its
paired difference against the baseline, marked by the rule of every other table (`results.direction`).
`measures.task_subtotals` computes the numbers; nothing is recomputed here."""

from __future__ import annotations

from dataclasses import replace

from hftune.evaluation.report.results import (
    CAVEAT_MARK,
    HEADLINE,
    REWARD_METRICS,
    baseline,
    caveat_footnote,
    confidence,
    direction,
    info,
    reward_caveats,
    variant_names,
)
from hftune.evaluation.report.table import MARKS, Cell, Section, Table, stat_cell

# The one metric the table shows, the first of these any task has: correctness where a verifier says it,
# else the reward model's score, else the next headline metric.
PREFERRED = ("verifier", "reward", *(m for m in HEADLINE if m not in ("verifier", "reward")))


def section(results: dict) -> Section | None:
    """The per-task table; None when the suite tagged no tasks."""
    tasks = results.get("tasks") or {}
    measured = {m for entry in tasks.values() for v in (entry.get("variants") or {}).values() for m in v}
    metric = next((m for m in PREFERRED if m in measured), None)
    if metric is None:
        return None
    base = baseline(results)
    names = [v for v in variant_names(results) if any(v in (e.get("variants") or {}) for e in tasks.values())]
    compared = [v for v in names if base is not None and v != base]
    about = info(results, metric)
    header = [
        Cell("task"),
        Cell("n", title="The task's prompts: every interval in its row is over these alone."),
        *(
            Cell(
                v,
                tag="baseline" if v == base else None,
                higher_is_better=about.get("higher_is_better"),
                title=str(about.get("description", "")),
                detail=metric,
            )
            for v in names
        ),
        *(Cell(f"{v} − {base}", detail=f"{metric}, paired") for v in compared),
    ]
    caveats = reward_caveats(results) if metric in REWARD_METRICS else {}
    rows = []
    for task, entry in tasks.items():
        found, paired = entry.get("variants") or {}, entry.get("vs_baseline") or {}
        means = [_marked(stat_cell((found.get(v) or {}).get(metric)), v in caveats) for v in names]
        differences = [
            _marked(_difference(results, metric, (paired.get(v) or {}).get(metric)), v in caveats)
            for v in compared
        ]
        rows.append([Cell(task), Cell(str(entry.get("n", "-")), number=True), *means, *differences])
    footnotes = [note] if caveats and (note := caveat_footnote(results, short=True)) else []
    return Section(
        "tasks",
        f"By task ({metric})",
        note=_note(results, metric, base),
        table=Table(header, rows, "stats", footnotes),
    )


def _difference(results: dict, metric: str, difference: dict | None) -> Cell:
    return stat_cell(difference, signed=True, mark=direction(results, metric, difference))


def _marked(cell: Cell, caveat: bool) -> Cell:
    """A reward cell of a variant that never trained against the reward model carries the caveat's mark."""
    return replace(cell, note=CAVEAT_MARK) if caveat and cell.text != "-" else cell


def _note(results: dict, metric: str, base: str | None) -> list[Cell]:
    level = confidence(results)
    text = (
        f"The suite tags each prompt with a task; each cell is the {metric} over that task's prompts alone "
        f"(n, per task), mean and {level} CI, so a task with few prompts has a wide interval."
    )
    if base is not None:
        text += (
            f" Differences are variant minus {base}, paired per prompt, marked where the CI excludes 0: "
            f"{MARKS['better']} better, {MARKS['worse']} worse, {MARKS['changed']} changed."
        )
    if results.get("seed_info"):
        text += (
            " A variant trained with several seeds is the mean over its runs; its difference is marked "
            f"{MARKS['better']} / {MARKS['worse']} only if it also holds across the seeds on that task's "
            f"prompts, else hollow ({MARKS['better_prompts']} / {MARKS['worse_prompts']}): the verdicts' "
            "rule."
        )
    return [Cell(text + " Every headline metric per task is in results.json: "), Cell("tasks", code=True)]
