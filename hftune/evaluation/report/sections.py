"""The sections of an eval report, built from results.json and samples.jsonl: one builder per section,
shared by report.md and report.html, and (the metrics table) by the model card.

Means, intervals and win rates are only formatted here, never recomputed, so nothing a report says can
disagree with results.json.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from typing import Any

from hftune.evaluation import verdict as verdicts
from hftune.evaluation.report import rankings, tasks
from hftune.evaluation.report.results import (
    CAVEAT_MARK,
    REWARD_METRICS,
    baseline,
    caveat_footnote,
    confidence,
    decoding_settings,
    diff_metric_names,
    direction,
    finite,
    info,
    judged_pairs,
    label,
    metric_names,
    reward_caveats,
    stat,
    variant_names,
    win_rate_names,
)
from hftune.evaluation.report.table import (
    MARKS,
    Cell,
    Definition,
    Example,
    Reply,
    Section,
    Table,
    number,
    stat_cell,
)

EXAMPLES = 5
MAX_EXAMPLE_CHARS = 600
HOW_TO_READ = [
    "Every number is the mean over the evaluated prompts with a {conf} confidence interval from a paired "
    "bootstrap over prompts: all variants answer the same prompts and share the same resamples, so "
    "prompt-to-prompt variation cancels in the differences.",
    "Differences are variant minus baseline, per prompt, then bootstrapped; a marked difference has an "
    "interval that excludes 0 (▲ better, ▼ worse by the metric's direction, ● changed where the metric has "
    "no preferred direction).",
    "Win rate (row beats column) is the fraction of prompts on which the reward model scores the row's "
    "reply above the column's; ties count half, so 0.5 means no difference and w(A,B) + w(B,A) = 1.",
    "Each metric is measured on greedy replies, on sampled replies or analytically, as listed under "
    "Metrics; the decoding settings are those recorded for this eval, not a checkpoint's generation config.",
]


def report(results: dict, samples: list[dict]) -> list[Section]:
    """Every section of report.md and report.html, in order; a section with nothing to say is left out."""
    parts = [
        verdict(results),
        variants(results),
        configs(results),
        held_out(results),
        *clean_subset(results),
        decoding(results),
        metrics(results),
        diffs(results),
        tasks.section(results),
        win_rates(results),
        rankings.section(results),
        judge(results),
        how_to_read(results),
        examples(results, samples),
    ]
    return [part for part in parts if part is not None]


def verdict(results: dict) -> Section | None:
    """The answer first: one line per claim (results.json's `verdicts`, the lines the terminal prints), and
    the rule they and the tables' marks follow."""
    entries = verdicts.entries(results)
    if not entries:
        return None
    note = [Cell(verdicts.RULE.format(conf=confidence(results)))]
    items = []
    for entry in entries:
        head, segments = verdicts.parts(entry)
        items.append(
            [Cell(f"{head}.", strong=True), Cell(f" {entry.get('why', '')} "), Cell(" · ".join(segments))]
        )
    return Section("verdict", "Verdict", note=note, items=items)


def variants(results: dict) -> Section:
    rows = [
        [
            Cell(name, tag="baseline" if name == baseline(results) else None),
            Cell(str(v.get("kind", ""))),
            Cell(_models(v.get("model")), code=True),
        ]
        for name, v in (results.get("variants") or {}).items()
    ]
    return Section("variants", "Variants", table=Table(_header("variant", "kind", "model"), rows, "narrow"))


def configs(results: dict) -> Section | None:
    """The keys on which the variants' training configs differ (results.json's `config_diff`), one column a
    variant: what to read first when two models differ."""
    diff = results.get("config_diff")
    if not isinstance(diff, dict) or not diff.get("keys"):
        return None
    names = list(diff.get("variants") or [])
    rows = [
        [Cell(key, code=True), *(Cell(values.get(n, "—"), code=n in values) for n in names)]
        for key, values in diff["keys"].items()
    ]
    note = (
        "The keys of the training configs (each run's config.hftune.yaml) on which the variants differ; a "
        "key one stage alone has is left out (— where a variant's stage has no such key). A variant trained "
        "with several seeds shows each run's value where its runs differ."
    )
    if diff.get("unread"):
        note += " Not read: " + "; ".join(f"{n} ({why})" for n, why in diff["unread"].items()) + "."
    table = Table(_header("key", *names), rows, "narrow")
    return Section("configs", "Config diff", note=[Cell(note)], table=table)


def _models(model: Any) -> str:
    """A variant's model, or its seed runs' models (one variant trained with several seeds)."""
    if isinstance(model, list):
        return f"{len(model)} seeds: " + ", ".join(map(str, model))
    return str(model or "-")


def held_out(results: dict) -> Section | None:
    """Where the prompts come from and the contamination audit: every stage behind the evaluated models,
    and how many evaluated prompts it trained on (a non-zero count is flagged)."""
    audit = results.get("contamination")
    if not audit:
        return None
    n = audit.get("n_prompts", 0)
    rows = [
        [
            Cell(str(stage.get("stage", "?"))),
            Cell(folder, code=True),
            Cell(", ".join(stage.get("used_by") or [])),
            Cell(f"{stage.get('overlap', 0)} of {n}", mark="worse" if stage.get("overlap") else None),
        ]
        for folder, stage in (audit.get("stages") or {}).items()
    ]
    seen = len(audit.get("contaminated_prompts") or [])
    verdict = (
        f"{seen} of the {n} evaluated prompts were trained on by a stage below; the metrics on the "
        f"{audit.get('clean_prompts')} clean prompts alone follow."
        if seen
        else f"None of the {n} evaluated prompts was trained on by any stage behind these models."
    )
    note = [
        Cell(f"Prompts held out by {results.get('held_out_by') or 'the suite'}. "),
        Cell(verdict, strong=bool(seen)),
    ]
    repeats = _repeats(results.get("duplicates"))
    if repeats:
        note.append(Cell(repeats))
    if audit.get("unaudited"):
        note.append(
            Cell(f" Not audited (no record of their training data): {', '.join(audit['unaudited'])}.")
        )
    table = Table(_header("stage", "folder", "behind", "evaluated prompts it trained on"), rows, "narrow")
    return Section("held_out", "Held-out check", note=note, table=table)


def _repeats(duplicates: dict | None, shown: int = 3) -> str | None:
    """The sentence on prompts the suite repeated (each evaluated once, so no interval counts one twice)."""
    if not duplicates or not duplicates.get("n_dropped"):
        return None
    listed = [
        f"“{_clip(r.get('prompt'))}” ×{r.get('count')}" for r in (duplicates.get("repeated") or [])[:shown]
    ]
    return (
        f" The suite's {duplicates.get('n_rows')} rows hold {duplicates.get('n_distinct')} distinct prompts: "
        f"{duplicates['n_dropped']} repeats were dropped before generating, so each prompt counts once in "
        f"every interval" + (f" (most repeated: {', '.join(listed)})." if listed else ".")
    )


def clean_subset(results: dict) -> list[Section]:
    """The metrics again on the prompts no stage trained on, when the suite allowed contamination."""
    clean = results.get("clean_subset")
    if not clean:
        return []
    table = metrics_table({**results, "variants": clean.get("variants") or {}})
    note = [
        Cell(
            f"The same metrics on the {clean.get('n_prompts')} prompts no stage behind the models trained on."
        )
    ]
    return [Section("clean_subset", "Metrics on the clean prompts", note=note, table=table)]


def decoding(results: dict) -> Section:
    items = [
        [Cell(mode, strong=True), Cell(": "), Cell(settings, code=True)]
        for mode, settings in decoding_settings(results)
    ]
    return Section("decoding", "Decoding", items=items or [[Cell("not recorded")]])


def _metric_header(results: dict, metric: str) -> Cell:
    about = info(results, metric)
    return Cell(
        label(results, metric),
        higher_is_better=about.get("higher_is_better"),
        title=str(about.get("description", "")),
        detail=str(about["decoding"]) if about.get("decoding") else None,
    )


def metrics_table(results: dict, only: Collection[str] | None = None) -> Table:
    """One row per variant, one column per metric (`only` those, if given): mean [CI] in each cell. The
    reward cells of a variant that never trained against the reward model are marked, with a footnote."""
    columns = [m for m in metric_names(results) if only is None or m in only]
    header = [Cell("variant"), *(_metric_header(results, m) for m in columns)]
    caveats = reward_caveats(results)
    rows = [
        [
            Cell(n),
            *(_caveat(stat_cell(stat(results, n, m)), n in caveats and m in REWARD_METRICS) for m in columns),
        ]
        for n in variant_names(results)
    ]
    return Table(header, rows, "stats", _footnotes(results, *rows))


def _caveat(cell: Cell, marked: bool) -> Cell:
    """A reward-model cell of a variant that never trained against that reward model: marked (when it has a
    number)."""
    return replace(cell, note=CAVEAT_MARK) if marked and cell.text != "-" else cell


def _footnotes(results: dict, *cells: list[Cell], short: bool = False) -> list[str]:
    """The reward-model caveat, under a table with a cell that carries its mark (`short`: a reminder)."""
    note = caveat_footnote(results, short=short)
    return [note] if note and any(c.note == CAVEAT_MARK for row in cells for c in row) else []


def metrics(results: dict) -> Section:
    columns = metric_names(results)
    if not columns:
        return Section("metrics", "Metrics", empty="No metrics were computed.")
    level = confidence(results)
    note = f"Each cell: mean and {level} CI; ↑ higher is better, ↓ lower is better; - not measured."
    glossary = [
        Definition(
            label(results, m),
            str(info(results, m).get("decoding", "?")),
            str(info(results, m).get("description", "")),
        )
        for m in columns
    ]
    return Section(
        "metrics",
        "Metrics",
        note=[Cell(note)],
        table=metrics_table(results),
        glossary_title="What each metric is",
        glossary=glossary,
    )


def diffs(results: dict) -> Section:
    base = baseline(results)
    columns = diff_metric_names(results)
    title = f"Paired differences vs {base}" if base else "Paired differences"
    if base is None or not columns:
        return Section("diffs", title, empty="No baseline or no paired differences were computed.")
    caveats = reward_caveats(results)
    rows = []
    for name in variant_names(results):
        differences = (results["variants"][name].get("vs_baseline") or {}) if name != base else {}
        if differences:
            marked = name in caveats
            cells = (
                _caveat(_difference(results, m, differences.get(m)), marked and m in REWARD_METRICS)
                for m in columns
            )
            rows.append([Cell(name), *cells])
    note = (
        f"Variant minus {base}, paired per prompt; marked where the {confidence(results)} CI excludes 0: "
        f"{MARKS['better']} better, {MARKS['worse']} worse, {MARKS['changed']} changed (for metrics without "
        "a preferred direction)."
    )
    seeded = any(
        v.get("seed_runs") or any("seeds" in (d or {}) for d in (v.get("vs_baseline") or {}).values())
        for v in (results.get("variants") or {}).values()
    )
    if seeded:
        note += (
            " For a variant trained with several seeds, a difference is marked ▲ / ▼ / ● only if its "
            "interval across seeds (a t-interval over the per-seed means) excludes 0 as well; where it does "
            f"not, the mark is hollow: {MARKS['better_prompts']} / {MARKS['worse_prompts']} / "
            f"{MARKS['changed_prompts']}, over prompts but not across seeds. The verdicts follow this rule."
        )
    header = [Cell("variant"), *(_metric_header(results, m) for m in columns)]
    table = Table(header, rows, "stats", _footnotes(results, *rows, short=True))
    return Section("diffs", title, note=[Cell(note)], table=table)


def _difference(results: dict, metric: str, difference: dict | None) -> Cell:
    return stat_cell(difference, signed=True, mark=direction(results, metric, difference))


def win_rates(results: dict) -> Section:
    matrix = results.get("win_rates") or {}
    names = win_rate_names(results)
    if len(names) < 2:
        return Section(
            "win_rates", "Win rates", empty="Not computed (needs a reward model and two variants)."
        )
    caveats = reward_caveats(results)
    # The whole matrix is the reward model's verdict: a variant that never trained against it is marked once,
    # where its row and its column are named.
    named = [Cell(n, note=CAVEAT_MARK if n in caveats else None) for n in names]
    rows = [
        [named[i], *(_win_rate((matrix.get(a) or {}).get(b)) for b in names)] for i, a in enumerate(names)
    ]
    note = "P(row beats column) by the reward model; ties count half."
    table = Table(
        [Cell("row \\ column"), *named], rows, "stats matrix", _footnotes(results, named, short=True)
    )
    return Section("win_rates", "Win rates (row beats column)", note=[Cell(note)], table=table)


def _win_rate(rate: dict | None) -> Cell:
    cell = stat_cell(rate)
    return replace(cell, shade=rate["mean"]) if isinstance(rate, dict) and finite(rate.get("mean")) else cell


def judge(results: dict) -> Section | None:
    verdicts = results.get("judge")
    if not verdicts:
        return None
    rows = [[Cell(a), Cell(b), stat_cell(j), stat_cell(rm)] for a, b, j, rm in judged_pairs(results)]
    note = [
        Cell("Judge model: "),
        Cell(str(verdicts.get("model", "?")), code=True),
        Cell(f"; disagreements with the reward model: {verdicts.get('n_disagreements', '-')}"),
    ]
    header = _header("A", "B", "judge: P(A beats B)", "reward model: P(A beats B)")
    return Section("judge", "LLM judge", note=note, table=Table(header, rows, "stats narrow"))


def how_to_read(results: dict) -> Section:
    items = [[Cell(text.format(conf=confidence(results)))] for text in HOW_TO_READ]
    return Section("how_to_read", "How to read this", items=items)


def examples(results: dict, samples: list[dict]) -> Section | None:
    if not samples:
        return None
    shown = [_example(results, sample) for sample in samples[:EXAMPLES]]
    return Section("examples", f"Examples (first {len(shown)} prompts, greedy replies)", examples=shown)


def _example(results: dict, sample: dict) -> Example:
    replies = sample.get("variants") or {}
    known = variant_names(results)
    order = [n for n in known if n in replies] + [n for n in replies if n not in known]
    reference = sample.get("reference")
    return Example(
        index=str(sample.get("prompt_index", "?")),
        prompt=_clip(sample.get("prompt")),
        reference=None if reference is None else _clip(reference),
        replies=[_reply(name, replies[name] or {}) for name in order],
    )


def _reply(name: str, reply: dict) -> Reply:
    return Reply(
        variant=name,
        reward=number(reply.get("reward"), 3),
        tokens="-" if reply.get("length") is None else str(reply["length"]),
        facts=facts(reply),
        response=_clip(reply.get("response")),
    )


def facts(reply: dict) -> list[str]:
    """What is shown above a reply (here and in the prompt browser): reward, length, EOS, verifier."""
    out = [f"reward {number(reply.get('reward'), 3)}"] if finite(reply.get("reward")) else []
    if reply.get("length") is not None:
        out.append(f"{reply['length']} tokens")
    if reply.get("ended") is False:
        out.append("no EOS")
    if finite(reply.get("verified")):
        score = reply["verified"]
        out.append("✔ correct" if score >= 1 else "✘ wrong" if score <= 0 else f"verifier {score:.2f}")
    return out


def _clip(text: Any) -> str:
    text = "" if text is None else str(text)
    return (
        text
        if len(text) <= MAX_EXAMPLE_CHARS
        else text[:MAX_EXAMPLE_CHARS] + (f"… [{len(text) - MAX_EXAMPLE_CHARS} more characters]")
    )


def _header(*texts: str) -> list[Cell]:
    return [Cell(t) for t in texts]
