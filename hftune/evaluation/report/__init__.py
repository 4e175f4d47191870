"""Human-readable outputs of `hftune eval`: report.md, a self-contained report.html and a terminal summary.

Everything here is rendered from the two files the harness already wrote (results.json and samples.jsonl),
so a report can be re-rendered without regenerating or rescoring anything. Nothing is computed here that
could disagree with results.json: means, intervals and win rates are only formatted, and the plots use
the per-prompt numbers from the samples. Every string that came from a user or a model (suite and
variant names, prompts, responses, descriptions) is escaped for its target format, because model output
is arbitrary text and a report is opened in a browser.

The HTML file has no external resources (its plots are inline PNGs) so it can be mailed or archived as
one file; a small inline script checks on load that every plot decoded and records the outcome in the
page title and a `data-plots-ok` attribute on <body>, which the tests read through headless Chromium.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Column order of the metric tables: outcome metrics first, then cost / health metrics, then any metric this
# module does not know (alphabetically), so a new metric shows up without a change here.
METRIC_ORDER = (
    "reward",
    "expected_reward",
    "verifier",
    "exact_match",
    "rouge_l",
    "bleu",
    "kl_to_sft",
    "length",
    "eos_rate",
    "loop_rate",
    "repeated_ngram_fraction",
    "distinct_1",
    "distinct_2",
)
# The terminal summary keeps to these so it stays readable; "win_rate" is the win rate vs the baseline.
HEADLINE = ("reward", "win_rate", "verifier", "exact_match", "kl_to_sft", "length", "eos_rate", "loop_rate")
EXAMPLES = 5
MAX_EXAMPLE_CHARS = 600
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


# ----------------------------------------------------------------------------------------------- public API


def write_reports(out_dir: Path, results: dict, samples: list[dict]) -> None:
    """Write out_dir/report.md and out_dir/report.html (each written to a temp file then os.replace'd)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "report.md", render_markdown(results, samples))
    _write_atomic(out_dir / "report.html", render_html(results, samples))


def summary_table(results: dict) -> str:
    """A short plain-text table printed at the end of `hftune eval`: one row per variant, columns = the
    headline metrics present (reward, win rate vs the baseline, verifier, exact_match, kl_to_sft, length,
    eos_rate, loop_rate...), each as `mean [ci_low, ci_high]`; missing -> '-'."""
    present = set(_metric_names(results)) | ({"win_rate"} if _baseline_win_rates(results) else set())
    columns = [m for m in HEADLINE if m in present]
    header = ["variant", *(_metric_label(results, m) for m in columns)]
    names = _variant_names(results)
    table = [header] + [[n, *(_interval(_stat(results, n, m)) for m in columns)] for n in names]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table)
    return "\n".join(line.rstrip() for line in lines)


# ------------------------------------------------------------------------------------------ results access


def _variant_names(results: dict) -> list[str]:
    return list(results.get("variants") or {})


def _metric_names(results: dict) -> list[str]:
    """Every metric any variant has, known ones in METRIC_ORDER, then the rest alphabetically."""
    found = {m for v in (results.get("variants") or {}).values() for m in (v.get("metrics") or {})}
    return [m for m in METRIC_ORDER if m in found] + sorted(found - set(METRIC_ORDER))


def _diff_metric_names(results: dict) -> list[str]:
    found = {m for v in (results.get("variants") or {}).values() for m in (v.get("vs_baseline") or {})}
    return [m for m in _metric_names(results) if m in found] + sorted(found - set(_metric_names(results)))


def _baseline(results: dict) -> str | None:
    baseline = results.get("baseline")
    return baseline if baseline in (results.get("variants") or {}) else None


def _baseline_win_rates(results: dict) -> dict[str, dict]:
    """variant -> P(variant beats the baseline), from the win-rate matrix."""
    baseline = _baseline(results)
    if baseline is None:
        return {}
    rows = results.get("win_rates") or {}
    return {a: row[baseline] for a, row in rows.items() if isinstance(row, dict) and baseline in row}


def _stat(results: dict, variant: str, metric: str) -> dict | None:
    """The {mean, ci_low, ci_high, n} of one cell; `win_rate` is the win rate against the baseline."""
    if metric == "win_rate":
        return _baseline_win_rates(results).get(variant)
    return ((results.get("variants") or {}).get(variant, {}).get("metrics") or {}).get(metric)


def _info(results: dict, metric: str) -> dict:
    if metric == "win_rate":
        reward = (results.get("metric_info") or {}).get("reward") or {}
        return {
            "decoding": reward.get("decoding", "greedy"),
            "higher_is_better": True,
            "description": f"P(reward of this variant's reply > {_baseline(results)}'s), ties count half.",
        }
    return (results.get("metric_info") or {}).get(metric) or {}


def _metric_label(results: dict, metric: str) -> str:
    return f"win vs {_baseline(results)}" if metric == "win_rate" else metric


def _per_prompt(samples: list[dict], field: str, names: Iterable[str]) -> dict[str, list[float]]:
    """variant -> the finite per-prompt values of one field of the greedy responses."""
    out: dict[str, list[float]] = {}
    for name in names:
        values = [((s.get("variants") or {}).get(name) or {}).get(field) for s in samples]
        finite = [float(v) for v in values if _finite(v)]
        if finite:
            out[name] = finite
    return out


# -------------------------------------------------------------------------------------------- formatting


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _decimals(*xs: Any) -> int:
    # One precision per cell, from its largest magnitude, so the mean and its bounds line up.
    magnitude = max((abs(x) for x in xs if _finite(x)), default=0.0)
    return 3 if magnitude < 10 else 1 if magnitude < 1000 else 0


def _num(x: Any, decimals: int, signed: bool = False) -> str:
    return f"{x:{'+' if signed else ''}.{decimals}f}" if _finite(x) else "-"


def _interval(stat: dict | None, signed: bool = False) -> str:
    """`mean [ci_low, ci_high]`, just the mean when the interval is undefined, '-' when missing."""
    if not stat or not _finite(stat.get("mean")):
        return "-"
    mean, low, high = stat["mean"], stat.get("ci_low"), stat.get("ci_high")
    d = _decimals(mean, low, high)
    if not (_finite(low) and _finite(high)):
        return _num(mean, d, signed)
    return f"{_num(mean, d, signed)} [{_num(low, d, signed)}, {_num(high, d, signed)}]"


def _excludes_zero(stat: dict | None) -> bool:
    if not stat or not (_finite(stat.get("ci_low")) and _finite(stat.get("ci_high"))):
        return False
    return stat["ci_low"] > 0 or stat["ci_high"] < 0


def _direction(results: dict, metric: str, stat: dict | None) -> str | None:
    """'better' / 'worse' for a difference whose CI excludes 0 (by the metric's direction), 'changed' when
    the metric has no preferred direction, None when the difference is not significant."""
    if not _excludes_zero(stat):
        return None
    higher = _info(results, metric).get("higher_is_better")
    if higher is None:
        return "changed"
    return "better" if (stat["mean"] > 0) == bool(higher) else "worse"


def _clip(text: Any, limit: int = MAX_EXAMPLE_CHARS) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more characters]"


def _confidence(results: dict) -> str:
    level = (results.get("suite") or {}).get("confidence", 0.95)
    return f"{level:.0%}" if _finite(level) else "95%"


def _decoding_lines(results: dict) -> list[tuple[str, str]]:
    """(mode, "key=value, ...") for each recorded decoding mode, in the order the harness wrote them."""
    out = []
    for mode, settings in (results.get("decoding") or {}).items():
        if isinstance(settings, dict):
            out.append((str(mode), ", ".join(f"{k}={_json_scalar(v)}" for k, v in settings.items())))
        else:
            out.append((str(mode), _json_scalar(settings)))
    return out


def _json_scalar(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _judged_pairs(results: dict) -> list[tuple[str, str, dict, dict | None]]:
    """(A, B, judge's P(A beats B), reward model's P(A beats B)) once per judged pair."""
    judge = results.get("judge") or {}
    seen: set[frozenset] = set()
    out = []
    for a, row in (judge.get("win_rates") or {}).items():
        for b, stat in (row or {}).items():
            if a == b or frozenset((a, b)) in seen:
                continue
            seen.add(frozenset((a, b)))
            out.append((a, b, stat, ((results.get("win_rates") or {}).get(a) or {}).get(b)))
    return out


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
MARKS = {"better": "▲", "worse": "▼", "changed": "●"}


# -------------------------------------------------------------------------------------------- markdown


def _md(text: Any) -> str:
    """Inline-safe Markdown: HTML-escaped (a viewer renders raw HTML), Markdown syntax and pipes
    backslash-escaped, line breaks as <br> so a table cell stays one line."""
    text = html.escape("" if text is None else str(text), quote=False)
    text = re.sub(r"([\\`*\[\]{}|#~])", r"\\\1", text)
    # An underscore inside a word never starts emphasis; escaping it there would only clutter the file.
    text = re.sub(r"(?<!\w)_|_(?!\w)", r"\\_", text)
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def render_markdown(results: dict, samples: list[dict]) -> str:
    """The whole of report.md."""
    suite = _md((results.get("suite") or {}).get("name", "eval"))
    out = [f"# Eval report: {suite} ({results.get('n_prompts', len(samples))} prompts)", ""]
    for section in (
        _md_variants,
        _md_decoding,
        _md_metrics,
        _md_diffs,
        _md_win_rates,
        _md_judge,
        _md_how_to_read,
        _md_examples,
    ):
        out += section(results, samples)
    out.append("Plots (reward and length distributions, win-rate heatmap, reward vs KL) are in report.html.")
    return "\n".join(out) + "\n"


def _md_variants(results: dict, samples: list[dict]) -> list[str]:
    rows = []
    for name, v in (results.get("variants") or {}).items():
        tag = " (baseline)" if name == _baseline(results) else ""
        rows.append([_md(name) + tag, _md(v.get("kind", "")), _md(v.get("model") or "-")])
    return ["## Variants", "", *_md_table(["variant", "kind", "model"], rows)]


def _md_decoding(results: dict, samples: list[dict]) -> list[str]:
    lines = [f"- **{_md(mode)}**: {_md(settings)}" for mode, settings in _decoding_lines(results)]
    return ["## Decoding", "", *(lines or ["- not recorded"]), ""]


def _md_metrics(results: dict, samples: list[dict]) -> list[str]:
    metrics = _metric_names(results) + (["win_rate"] if _baseline_win_rates(results) else [])
    if not metrics:
        return ["## Metrics", "", "No metrics were computed.", ""]
    header = ["variant", *(_md(_metric_label(results, m)) + _md_arrow(results, m) for m in metrics)]
    rows = [[_md(n), *(_interval(_stat(results, n, m)) for m in metrics)] for n in _variant_names(results)]
    glossary = [
        f"- **{_md(_metric_label(results, m))}** ({_md(_info(results, m).get('decoding', '?'))}): "
        f"{_md(_info(results, m).get('description', ''))}"
        for m in metrics
    ]
    note = f"Each cell: mean [{_confidence(results)} CI]; ↑ higher is better, ↓ lower is better."
    return ["## Metrics", "", note, "", *_md_table(header, rows), *glossary, ""]


def _md_arrow(results: dict, metric: str) -> str:
    higher = _info(results, metric).get("higher_is_better")
    return "" if higher is None else (" ↑" if higher else " ↓")


def _md_diffs(results: dict, samples: list[dict]) -> list[str]:
    baseline = _baseline(results)
    metrics = _diff_metric_names(results)
    title = f"## Paired differences vs {_md(baseline)}" if baseline else "## Paired differences"
    if baseline is None or not metrics:
        return [title, "", "No baseline or no paired differences were computed.", ""]
    rows = []
    for name in _variant_names(results):
        diffs = (results["variants"][name].get("vs_baseline") or {}) if name != baseline else {}
        if diffs:
            rows.append([_md(name), *(_md_diff_cell(results, m, diffs.get(m)) for m in metrics)])
    note = f"Variant minus {_md(baseline)}; marked (▲ better, ▼ worse, ● changed): the "
    note += f"{_confidence(results)} CI excludes 0."
    header = ["variant", *(_md(m) + _md_arrow(results, m) for m in metrics)]
    return [title, "", note, "", *_md_table(header, rows)]


def _md_diff_cell(results: dict, metric: str, stat: dict | None) -> str:
    cell = _interval(stat, signed=True)
    direction = _direction(results, metric, stat)
    return f"**{cell} {MARKS[direction]}**" if direction else cell


def _md_win_rates(results: dict, samples: list[dict]) -> list[str]:
    matrix = results.get("win_rates") or {}
    names = _win_rate_names(results)
    if len(names) < 2:
        return ["## Win rates", "", "Not computed (needs a reward model and two variants).", ""]
    rows = [[_md(a), *(_interval((matrix.get(a) or {}).get(b)) for b in names)] for a in names]
    note = "P(row beats column) by the reward model; ties count half."
    return ["## Win rates (row beats column)", "", note, "", *_md_table(["", *map(_md, names)], rows)]


def _md_judge(results: dict, samples: list[dict]) -> list[str]:
    judge = results.get("judge")
    if not judge:
        return []
    rows = [[_md(a), _md(b), _interval(j), _interval(rm)] for a, b, j, rm in _judged_pairs(results)]
    head = f"Judge model: {_md(judge.get('model', '?'))}; disagreements with the reward model: "
    head += _md(judge.get("n_disagreements", "-"))
    header = ["A", "B", "judge: P(A beats B)", "reward model: P(A beats B)"]
    return ["## LLM judge", "", head, "", *_md_table(header, rows)]


def _md_how_to_read(results: dict, samples: list[dict]) -> list[str]:
    return ["## How to read this", "", *(f"- {t.format(conf=_confidence(results))}" for t in HOW_TO_READ), ""]


def _md_examples(results: dict, samples: list[dict]) -> list[str]:
    if not samples:
        return []
    out = [f"## Examples (first {min(EXAMPLES, len(samples))} prompts, greedy replies)", ""]
    for sample in samples[:EXAMPLES]:
        out += [f"### Prompt {sample.get('prompt_index', '?')}", ""]
        out += [f"**Prompt:** {_md(_clip(sample.get('prompt')))}"]
        if sample.get("reference") is not None:
            out += ["", f"**Reference:** {_md(_clip(sample['reference']))}"]
        rows = [
            [_md(name), _num(r.get("reward"), 3), _md(r.get("length", "-")), _md(_clip(r.get("response")))]
            for name, r in _example_replies(results, sample)
        ]
        out += ["", *_md_table(["variant", "reward", "tokens", "response"], rows)]
    return out


def _example_replies(results: dict, sample: dict) -> list[tuple[str, dict]]:
    replies = sample.get("variants") or {}
    known = _variant_names(results)
    order = [n for n in known if n in replies] + [n for n in replies if n not in known]
    return [(n, replies[n] or {}) for n in order]


# ------------------------------------------------------------------------------------------------ plots


@dataclass
class Plot:
    title: str
    caption: str
    png: str | None = None  # base64; None when skipped
    note: str = ""


class _Skip(Exception):
    """A plot has no data to show; the message says why (shown in its place)."""


def render_plots(results: dict, samples: list[dict]) -> list[Plot]:
    """The report plots; a plot without data (or one that fails) comes back with a note instead."""
    import matplotlib

    plots = []
    # Text in the figures is user data (variant names): never parse it as mathtext.
    with matplotlib.rc_context({"text.parse_math": False, "font.size": 9}):
        for title, caption, builder in PLOTS:
            try:
                plots.append(Plot(title, caption, png=builder(results, samples)))
            except _Skip as skip:
                plots.append(Plot(title, caption, note=str(skip)))
            # A broken plot must not cost the rest of the report at the end of a long eval.
            except Exception as exc:
                logger.warning("report plot %r failed", title, exc_info=True)
                plots.append(Plot(title, caption, note=f"plot failed: {type(exc).__name__}: {exc}"))
    return plots


def _new_figure(width: float = 6.4, height: float = 4.2):
    # A bare Figure on an Agg canvas, not pyplot: no global backend switch (a notebook calling this keeps
    # its own), no figure registry to leak into, nothing to close, and no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    fig.clear()
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _colors(results: dict, names: Iterable[str]) -> list[str]:
    # Colour by position in the variant list so a variant has one colour in every plot.
    order = _variant_names(results)
    return [PALETTE[(order.index(n) if n in order else len(order)) % len(PALETTE)] for n in names]


def _reward_plot(results: dict, samples: list[dict]) -> str:
    data = _per_prompt(samples, "reward", _variant_names(results))
    if not data:
        raise _Skip("no per-prompt rewards in samples.jsonl (no reward model).")
    return _distribution(results, data, "reward (greedy reply)")


def _length_plot(results: dict, samples: list[dict]) -> str:
    data = _per_prompt(samples, "length", _variant_names(results))
    if not data:
        raise _Skip("no response lengths in samples.jsonl.")
    return _distribution(results, data, "tokens (greedy reply)")


def _distribution(results: dict, data: dict[str, list[float]], ylabel: str) -> str:
    """Box plot per variant with every prompt as a jittered point (few prompts: the points matter)."""
    fig = _new_figure()
    ax = fig.add_subplot()
    names = list(data)
    colors = _colors(results, names)
    boxes = ax.boxplot([data[n] for n in names], widths=0.5, patch_artist=True, showfliers=False)
    for patch, color in zip(boxes["boxes"], colors, strict=True):
        patch.set(facecolor=color, alpha=0.25, edgecolor=color)
    for median in boxes["medians"]:
        median.set(color="black", linewidth=1.5)
    jitter = random.Random(0)  # fixed, so re-rendering a report gives the same picture
    for i, (name, color) in enumerate(zip(names, colors, strict=True), start=1):
        xs = [i + jitter.uniform(-0.15, 0.15) for _ in data[name]]
        ax.scatter(xs, data[name], s=14, color=color, alpha=0.8, edgecolors="white", linewidths=0.4, zorder=3)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20 if len(names) > 4 else 0)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _win_rate_names(results: dict) -> list[str]:
    matrix = results.get("win_rates") or {}
    known = _variant_names(results)
    return [n for n in known if n in matrix] + [n for n in matrix if n not in known]


def _win_rate_plot(results: dict, samples: list[dict]) -> str:
    import matplotlib
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    matrix = results.get("win_rates") or {}
    names = _win_rate_names(results)
    if len(names) < 2:
        raise _Skip("no win-rate matrix (needs a reward model and two variants).")
    values = np.array([[_cell_mean(matrix, a, b) for b in names] for a in names], dtype=float)
    fig = _new_figure()
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=TwoSlopeNorm(0.5, 0.0, 1.0))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            stat = (matrix.get(a) or {}).get(b)
            if stat and _finite(stat.get("mean")):
                color = "white" if abs(stat["mean"] - 0.5) > 0.3 else "black"
                ax.text(j, i, _heat_label(stat, a == b), ha="center", va="center", color=color, fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("column (opponent)")
    ax.set_ylabel("row (wins)")
    fig.colorbar(image, ax=ax, label="P(row beats column)", shrink=0.85)
    return _png(fig)


def _heat_label(stat: dict, diagonal: bool) -> str:
    text = f"{stat['mean']:.2f}"
    if not diagonal and _finite(stat.get("ci_low")) and _finite(stat.get("ci_high")):
        text += f"\n[{stat['ci_low']:.2f}, {stat['ci_high']:.2f}]"
    return text


def _cell_mean(matrix: dict, a: str, b: str) -> float:
    stat = (matrix.get(a) or {}).get(b) or {}
    return stat["mean"] if _finite(stat.get("mean")) else math.nan


def _reward_kl_points(results: dict) -> list[tuple[str, dict, dict, bool]]:
    """(variant, kl stat, reward stat, reward is the greedy fallback) for variants that have both."""
    points = []
    for name in _variant_names(results):
        metrics = results["variants"][name].get("metrics") or {}
        kl = metrics.get("kl_to_sft")
        reward = metrics.get("expected_reward") or metrics.get("reward")
        if kl and reward and _finite(kl.get("mean")) and _finite(reward.get("mean")):
            points.append((name, kl, reward, "expected_reward" not in metrics))
    return points


def _reward_kl_plot(results: dict, samples: list[dict]) -> str:
    points = _reward_kl_points(results)
    if not points:
        raise _Skip("no variant has both a reward and kl_to_sft.")
    fig = _new_figure()
    ax = fig.add_subplot()
    colors = _colors(results, [p[0] for p in points])
    for (name, kl, reward, fallback), color in zip(points, colors, strict=True):
        ax.errorbar(
            kl["mean"],
            reward["mean"],
            xerr=_error(kl),
            yerr=_error(reward),
            fmt="o",
            color=color,
            markersize=7,
            capsize=4,
            elinewidth=1.4,
        )
        label = name + ("*" if fallback else "")
        offset = {"xytext": (7, 7), "textcoords": "offset points"}
        ax.annotate(label, (kl["mean"], reward["mean"]), color=color, fontweight="bold", **offset)
    ax.set_xlabel("KL to SFT")
    ax.set_ylabel("expected reward (* greedy reward)" if any(p[3] for p in points) else "expected reward")
    ax.grid(alpha=0.3)
    ax.margins(0.2)
    return _png(fig)


def _error(stat: dict) -> list[list[float]] | None:
    low, high, mean = stat.get("ci_low"), stat.get("ci_high"), stat["mean"]
    if not (_finite(low) and _finite(high)):
        return None
    return [[max(mean - low, 0.0)], [max(high - mean, 0.0)]]


# (title, caption, builder): the builder returns a base64 PNG or raises _Skip.
PLOTS: tuple[tuple[str, str, Callable[[dict, list[dict]], str]], ...] = (
    ("Reward per prompt", "Reward-model score of each prompt's greedy reply (box: quartiles).", _reward_plot),
    ("Win rates", "P(row beats column) by the reward model, ties half; white = 0.5 = even.", _win_rate_plot),
    (
        "Reward vs KL to SFT",
        "Expected reward of sampled replies (* greedy reward where there are no samples) against the KL "
        "to the SFT model; bars are the CIs.",
        _reward_kl_plot,
    ),
    ("Response length", "Tokens in each prompt's greedy reply (box: quartiles).", _length_plot),
)


# ------------------------------------------------------------------------------------------------- html


def _h(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


# A table cell: already-escaped HTML, or (attributes, HTML) for a cell that needs a class or a style.
Cell = str | tuple[str, str]


def _html_table(header: list[str], rows: list[list[Cell]], cls: str = "") -> str:
    """The first column is a row header."""
    head = "".join(f"<th>{c}</th>" for c in header)
    body = "".join("<tr>" + "".join(_td(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    table = f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    return f'<div class="scroll">{table}</div>'


def _td(i: int, cell: Cell) -> str:
    attrs, content = cell if isinstance(cell, tuple) else ("", cell)
    tag = "th" if i == 0 else "td"
    return f"<{tag}{' ' + attrs if attrs else ''}>{content}</{tag}>"


def _html_stat(stat: dict | None, signed: bool = False, mark: str = "") -> str:
    """The mean in bold over its CI in small print (two lines keep a wide metric table in the page)."""
    text = _interval(stat, signed)
    mean, _, ci = text.partition(" [")
    mean = f'<span class="mean">{_h(mean)}{" " + mark if mark else ""}</span>'
    return mean + (f'<span class="ci">[{_h(ci)}</span>' if ci else "")


def render_html(results: dict, samples: list[dict]) -> str:
    """The whole of report.html: one file, no external resources."""
    suite = (results.get("suite") or {}).get("name", "eval")
    n_prompts = results.get("n_prompts", len(samples))
    sections = [
        _html_variants(results),
        _html_decoding(results),
        _html_metrics(results),
        _html_diffs(results),
        _html_plots(results, samples),
        _html_win_rates(results),
        _html_judge(results),
        _html_how_to_read(results),
        _html_examples(results, samples),
        _html_suite(results),
    ]
    return HTML_PAGE.format(
        title=_h(f"{suite} — hftune eval report"),
        css=CSS,
        heading=f"Eval report: {_h(suite)}",
        subtitle=_h(
            f"{n_prompts} prompts · baseline: {_baseline(results) or '-'} · {_confidence(results)} CI"
        ),
        body="\n".join(s for s in sections if s),
        script=SCRIPT,
    )


def _html_variants(results: dict) -> str:
    rows = []
    for name, v in (results.get("variants") or {}).items():
        tag = ' <span class="tag">baseline</span>' if name == _baseline(results) else ""
        rows.append([_h(name) + tag, _h(v.get("kind", "")), f"<code>{_h(v.get('model') or '-')}</code>"])
    return "<h2>Variants</h2>" + _html_table(["variant", "kind", "model"], rows, "narrow")


def _html_decoding(results: dict) -> str:
    items = "".join(f"<li><b>{_h(m)}</b>: <code>{_h(s)}</code></li>" for m, s in _decoding_lines(results))
    return f"<h2>Decoding</h2><ul>{items or '<li>not recorded</li>'}</ul>"


def _html_metric_header(results: dict, metric: str) -> str:
    info = _info(results, metric)
    higher = info.get("higher_is_better")
    arrow = "" if higher is None else (" ↑" if higher else " ↓")
    decoding = f'<span class="dec">{_h(info["decoding"])}</span>' if info.get("decoding") else ""
    label = _h(_metric_label(results, metric)) + arrow
    return f'<span title="{_h(info.get("description", ""))}">{label}</span>{decoding}'


def _html_metrics(results: dict) -> str:
    metrics = _metric_names(results) + (["win_rate"] if _baseline_win_rates(results) else [])
    if not metrics:
        return "<h2>Metrics</h2><p>No metrics were computed.</p>"
    header = ["variant", *(_html_metric_header(results, m) for m in metrics)]
    rows = [[_h(n), *(_html_stat(_stat(results, n, m)) for m in metrics)] for n in _variant_names(results)]
    glossary = "".join(_html_glossary_entry(results, m) for m in metrics)
    note = (
        f"Mean and {_confidence(results)} CI per cell; ↑ higher is better, ↓ lower is better; - not measured"
    )
    return (
        f'<h2>Metrics</h2><p class="note">{_h(note)}</p>'
        + _html_table(header, rows, "stats")
        + f"<details><summary>What each metric is</summary><dl>{glossary}</dl></details>"
    )


def _html_glossary_entry(results: dict, metric: str) -> str:
    info = _info(results, metric)
    decoding = f'<span class="dec">{_h(info.get("decoding", "?"))}</span>'
    description = _h(info.get("description", ""))
    return f"<dt>{_h(_metric_label(results, metric))} {decoding}</dt><dd>{description}</dd>"


def _html_diffs(results: dict) -> str:
    baseline = _baseline(results)
    metrics = _diff_metric_names(results)
    if baseline is None or not metrics:
        return "<h2>Paired differences</h2><p>No baseline or no paired differences were computed.</p>"
    rows = []
    for name in _variant_names(results):
        diffs = (results["variants"][name].get("vs_baseline") or {}) if name != baseline else {}
        if diffs:
            rows.append([_h(name), *(_html_diff_cell(results, m, diffs.get(m)) for m in metrics)])
    note = (
        f"Variant minus {baseline}, paired per prompt. Coloured: the {_confidence(results)} CI excludes 0 "
        "(▲ green better, ▼ red worse, ● amber changed, for metrics without a preferred direction)."
    )
    header = ["variant", *(_html_metric_header(results, m) for m in metrics)]
    return f'<h2>Paired differences vs {_h(baseline)}</h2><p class="note">{_h(note)}</p>' + _html_table(
        header, rows, "stats"
    )


def _html_diff_cell(results: dict, metric: str, stat: dict | None) -> Cell:
    direction = _direction(results, metric, stat)
    if direction is None:
        return _html_stat(stat, signed=True)
    return f'class="{direction}"', _html_stat(stat, signed=True, mark=MARKS[direction])


def _html_plots(results: dict, samples: list[dict]) -> str:
    figures = []
    for plot in render_plots(results, samples):
        if plot.png:
            body = f'<img alt="{_h(plot.title)}" src="data:image/png;base64,{plot.png}">'
        else:
            body = f'<div class="skipped">Plot skipped: {_h(plot.note)}</div>'
        figures.append(
            f"<figure><h3>{_h(plot.title)}</h3>{body}<figcaption>{_h(plot.caption)}</figcaption></figure>"
        )
    return f'<h2>Plots</h2><div class="plots">{"".join(figures)}</div>'


def _win_cell_style(mean: float) -> str:
    # Same diverging scale as the heatmap: red below 0.5, white at 0.5, blue above.
    strength = min(abs(mean - 0.5) * 2, 1.0) * 0.55
    target = (33, 102, 172) if mean > 0.5 else (178, 24, 43)
    r, g, b = (round(255 + (t - 255) * strength) for t in target)
    return f'style="background: rgb({r},{g},{b})"'


def _html_win_rates(results: dict) -> str:
    matrix = results.get("win_rates") or {}
    names = _win_rate_names(results)
    if len(names) < 2:
        return "<h2>Win rates</h2><p>Not computed (needs a reward model and two variants).</p>"
    rows = []
    for a in names:
        cells: list[Cell] = [_h(a)]
        for b in names:
            stat = (matrix.get(a) or {}).get(b)
            mean = (stat or {}).get("mean")
            cells.append((_win_cell_style(mean), _html_stat(stat)) if _finite(mean) else _html_stat(stat))
        rows.append(cells)
    note = "P(row beats column) by the reward model; ties count half."
    return f'<h2>Win rates (row beats column)</h2><p class="note">{_h(note)}</p>' + _html_table(
        ["row \\ column", *map(_h, names)], rows, "stats matrix"
    )


def _html_judge(results: dict) -> str:
    judge = results.get("judge")
    if not judge:
        return ""
    rows = [[_h(a), _h(b), _html_stat(j), _html_stat(rm)] for a, b, j, rm in _judged_pairs(results)]
    head = (
        f"Judge model: <code>{_h(judge.get('model', '?'))}</code>; "
        f"disagreements with the reward model: {_h(judge.get('n_disagreements', '-'))}"
    )
    header = ["A", "B", "judge: P(A beats B)", "reward model: P(A beats B)"]
    return f'<h2>LLM judge</h2><p class="note">{head}</p>' + _html_table(header, rows, "stats narrow")


def _html_how_to_read(results: dict) -> str:
    items = "".join(f"<li>{_h(t.format(conf=_confidence(results)))}</li>" for t in HOW_TO_READ)
    return f'<h2>How to read this</h2><ul class="read">{items}</ul>'


def _html_examples(results: dict, samples: list[dict]) -> str:
    if not samples:
        return ""
    cards = []
    for sample in samples[:EXAMPLES]:
        replies = "".join(_html_reply(name, r) for name, r in _example_replies(results, sample))
        reference = ""
        if sample.get("reference") is not None:
            text = _h(_clip(sample["reference"]))
            reference = f'<div class="ref"><b>Reference:</b> <span class="text">{text}</span></div>'
        cards.append(
            f'<div class="example"><div class="prompt"><b>Prompt {_h(sample.get("prompt_index", "?"))}:</b> '
            f'<span class="text">{_h(_clip(sample.get("prompt")))}</span></div>{reference}'
            f'<div class="replies">{replies}</div></div>'
        )
    return f"<h2>Examples (first {len(cards)} prompts, greedy replies)</h2>" + "".join(cards)


def _html_reply(name: str, reply: dict) -> str:
    facts = [f"reward {_num(reply.get('reward'), 3)}"] if _finite(reply.get("reward")) else []
    if reply.get("length") is not None:
        facts.append(f"{_h(reply['length'])} tokens")
    if reply.get("ended") is False:
        facts.append("no EOS")
    if _finite(reply.get("verified")):
        score = reply["verified"]
        facts.append("✔ correct" if score >= 1 else "✘ wrong" if score <= 0 else f"verifier {score:.2f}")
    return (
        f'<div class="reply"><div class="who">{_h(name)} <span class="facts">{_h(" · ".join(facts))}</span>'
        "</div>"
        f'<div class="text">{_h(_clip(reply.get("response")))}</div></div>'
    )


def _html_suite(results: dict) -> str:
    suite = json.dumps(results.get("suite") or {}, indent=2, default=str, ensure_ascii=False)
    return f"<details><summary>Suite settings</summary><pre>{_h(suite)}</pre></details>"


# ------------------------------------------------------------------------------------------------ files


def _write_atomic(path: Path, text: str) -> None:
    # A reader (or a crash) never sees half a report; the pid keeps concurrent writers apart.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


CSS = """
:root { --fg: #1d2329; --muted: #5b6670; --line: #dde2e7; --bg2: #f5f7f9; --accent: #2f6db5; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 14px; margin: 0 0 6px; }
.subtitle, .note, figcaption, .facts { color: var(--muted); }
.note { margin: 4px 0 8px; font-size: 13px; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
pre { background: var(--bg2); padding: 10px; overflow-x: auto; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: right; vertical-align: top; }
thead th { background: var(--bg2); text-align: center; font-weight: 600; }
tbody th { text-align: left; background: #fbfcfd; white-space: nowrap; }
table.narrow td { text-align: left; }
.stats td { white-space: nowrap; }
.mean { display: block; font-weight: 600; font-variant-numeric: tabular-nums; }
.ci { display: block; font-size: 11px; color: var(--muted); font-variant-numeric: tabular-nums; }
.dec { display: block; font-size: 10px; font-weight: 400; color: var(--muted); }
.tag { font-size: 11px; background: #e8eef7; color: var(--accent); padding: 1px 6px; border-radius: 8px; }
td.better { background: #dcf2de; } td.worse { background: #f8dcdc; } td.changed { background: #fbefd0; }
.matrix td { text-align: center; min-width: 96px; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 16px; }
figure { margin: 0; padding: 10px; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; margin-top: 4px; }
.skipped { padding: 40px 12px; text-align: center; color: var(--muted); background: var(--bg2); }
ul.read li { margin-bottom: 4px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; font-size: 13px; }
dt { font-weight: 600; } dd { margin: 0; }
details { margin: 8px 0; } summary { cursor: pointer; color: var(--accent); }
.example { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; margin: 12px 0; }
.prompt, .ref { margin-bottom: 6px; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; }
.replies { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 8px; }
.reply { background: var(--bg2); border-radius: 4px; padding: 6px 8px; font-size: 13px; }
.reply .who { font-weight: 600; margin-bottom: 2px; } .reply .facts { font-weight: 400; font-size: 12px; }
.reply .text { display: block; }
"""

# Run after load, when every data: image has decoded or failed; the tests read the title / attribute.
SCRIPT = """
window.addEventListener("load", function () {
  var broken = Array.prototype.filter.call(document.images, function (img) {
    return !(img.complete && img.naturalWidth > 0);
  }).length;
  var status = broken ? "hftune report: broken images " + broken : "hftune report: ok";
  document.title = status + " · " + document.title;
  document.body.setAttribute("data-plots-ok", broken ? "false" : "true");
});
"""

HTML_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<main>
<h1>{heading}</h1>
<div class="subtitle">{subtitle}</div>
{body}
</main>
<script>{script}</script>
</body>
</html>
"""
