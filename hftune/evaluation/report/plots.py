"""The plots of report.html, as inline base64 PNGs: reward and length per prompt, the win-rate heatmap,
reward against KL and the training curves. They use the per-prompt numbers of samples.jsonl and the
intervals, per-seed means and training curves (`hftune.evaluation.curves`) of results.json. A variant trained
with several seeds shows as the mean over its seed runs (as its table row does) and as each run.

A plot without data (or one that fails) comes back with a note in its place: a broken plot must not cost
the rest of the report at the end of a long eval.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hftune.evaluation.report.results import finite, seed_run_names, variant_names, win_rate_names

logger = logging.getLogger(__name__)

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


@dataclass
class Plot:
    title: str
    caption: str
    png: str | None = None  # base64; None when skipped
    note: str = ""
    variants: list[str] = field(default_factory=list)  # the names drawn (variants and seed runs)


Drawn = tuple[str, list[str]]  # a plot's base64 PNG and the names (variants, seed runs) it shows


class _Skip(Exception):
    """A plot has no data to show; the message says why (shown in its place)."""


def render_plots(results: dict, samples: list[dict]) -> list[Plot]:
    """The report plots, in PLOTS order."""
    import matplotlib

    plots = []
    # Text in the figures is user data (variant names): never parse it as mathtext.
    with matplotlib.rc_context({"text.parse_math": False, "font.size": 9}):
        for title, caption, builder in PLOTS:
            try:
                png, drawn = builder(results, samples)
                plots.append(Plot(title, caption, png=png, variants=drawn))
            except _Skip as skip:
                plots.append(Plot(title, caption, note=str(skip)))
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
    order = variant_names(results)
    return [PALETTE[(order.index(n) if n in order else len(order)) % len(PALETTE)] for n in names]


@dataclass
class Box:
    """One box of a per-prompt distribution plot."""

    label: str
    values: list[float]  # one per prompt
    color: str
    run: bool = False  # one seed run of a seeded variant: drawn lighter, right after its variant's box


def distribution_boxes(results: dict, samples: list[dict], field: str) -> list[Box]:
    """The boxes of a per-prompt plot of one field of the greedy replies, in variant order (the table's rows).

    samples.jsonl keeps a seeded variant's replies under its runs' names (`rlhf@ppo-seed1`, ...), never the
    variant's, so its box is what its table row reports, the per-prompt mean over the runs (as
    `seeds.fold` folds them), followed by one lighter box per run to show the spread across seeds."""
    names = variant_names(results)
    boxes = []
    for name, color in zip(names, _colors(results, names), strict=True):
        runs = seed_run_names(results, name)
        if not runs:
            boxes.append(Box(name, _measured(_column(samples, field, name)), color))
            continue
        columns = [_column(samples, field, run) for run in runs]
        boxes.append(Box(name, _measured([_mean(values) for values in zip(*columns, strict=True)]), color))
        pale = _lighter(color)
        boxes += [
            Box(run, _measured(column), pale, run=True) for run, column in zip(runs, columns, strict=True)
        ]
    return [box for box in boxes if box.values]


def _column(samples: list[dict], field: str, name: str) -> list[float | None]:
    """Per prompt, one field of `name`'s greedy reply (None where it has none)."""
    values = [((s.get("variants") or {}).get(name) or {}).get(field) for s in samples]
    return [float(v) if finite(v) else None for v in values]


def _mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values measured (None where none was), like `stats.run_mean` for one prompt."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _measured(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def _lighter(color: str, amount: float = 0.45) -> str:
    """`color` blended towards white: the same hue, so a seed run reads as part of its variant."""
    from matplotlib.colors import to_hex, to_rgb

    return to_hex([c + (1.0 - c) * amount for c in to_rgb(color)])


def _reward_plot(results: dict, samples: list[dict]) -> Drawn:
    boxes = distribution_boxes(results, samples, "reward")
    if not boxes:
        raise _Skip("no per-prompt rewards in samples.jsonl (no reward model).")
    return _distribution(boxes, "reward (greedy reply)"), [box.label for box in boxes]


def _length_plot(results: dict, samples: list[dict]) -> Drawn:
    boxes = distribution_boxes(results, samples, "length")
    if not boxes:
        raise _Skip("no response lengths in samples.jsonl.")
    return _distribution(boxes, "tokens (greedy reply)"), [box.label for box in boxes]


def _distribution(boxes: list[Box], ylabel: str) -> str:
    """Box plot per variant with every prompt as a jittered point (few prompts: the points matter)."""
    fig = _new_figure()
    ax = fig.add_subplot()
    drawn = ax.boxplot([b.values for b in boxes], widths=0.5, patch_artist=True, showfliers=False)
    for patch, median, box in zip(drawn["boxes"], drawn["medians"], boxes, strict=True):
        patch.set(facecolor=box.color, alpha=0.25, edgecolor=box.color)
        median.set(color="#777777" if box.run else "black", linewidth=1.0 if box.run else 1.5)
    jitter = random.Random(0)  # fixed, so re-rendering a report gives the same picture
    for i, box in enumerate(boxes, start=1):
        xs = [i + jitter.uniform(-0.15, 0.15) for _ in box.values]
        size, alpha = (8, 0.6) if box.run else (14, 0.8)
        ax.scatter(
            xs, box.values, s=size, color=box.color, alpha=alpha, edgecolors="white", linewidths=0.4, zorder=3
        )
    crowded = len(boxes) > 4
    ax.set_xticks(
        range(1, len(boxes) + 1),
        [b.label for b in boxes],
        rotation=30 if crowded else 0,
        ha="right" if crowded else "center",
        rotation_mode="anchor",
    )
    for tick, box in zip(ax.get_xticklabels(), boxes, strict=True):
        if box.run:
            tick.set(color="#555555", fontsize=7.5)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _win_rate_plot(results: dict, samples: list[dict]) -> Drawn:
    import matplotlib
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    matrix = results.get("win_rates") or {}
    names = win_rate_names(results)
    if len(names) < 2:
        raise _Skip("no win-rate matrix (needs a reward model and two variants).")
    values = np.array([[_cell_mean(matrix, a, b) for b in names] for a in names], dtype=float)
    fig = _new_figure()
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=TwoSlopeNorm(0.5, 0.0, 1.0))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            rate = (matrix.get(a) or {}).get(b)
            if rate and finite(rate.get("mean")):
                color = "white" if abs(rate["mean"] - 0.5) > 0.3 else "black"
                ax.text(j, i, _heat_label(rate, a == b), ha="center", va="center", color=color, fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("column (opponent)")
    ax.set_ylabel("row (wins)")
    fig.colorbar(image, ax=ax, label="P(row beats column)", shrink=0.85)
    return _png(fig), names


def _heat_label(rate: dict, diagonal: bool) -> str:
    text = f"{rate['mean']:.2f}"
    if not diagonal and finite(rate.get("ci_low")) and finite(rate.get("ci_high")):
        text += f"\n[{rate['ci_low']:.2f}, {rate['ci_high']:.2f}]"
    return text


def _cell_mean(matrix: dict, a: str, b: str) -> float:
    rate = (matrix.get(a) or {}).get(b) or {}
    return rate["mean"] if finite(rate.get("mean")) else math.nan


def _reward_kl_points(results: dict) -> list[tuple[str, dict, dict, bool]]:
    """(variant, kl stat, reward stat, reward is the greedy fallback) for variants that have both."""
    points = []
    for name in variant_names(results):
        metrics = results["variants"][name].get("metrics") or {}
        kl = metrics.get("kl_to_sft")
        reward = metrics.get("expected_reward") or metrics.get("reward")
        if kl and reward and finite(kl.get("mean")) and finite(reward.get("mean")):
            points.append((name, kl, reward, "expected_reward" not in metrics))
    return points


def seed_points(results: dict, variant: str, kl: dict, reward: dict) -> list[tuple[str, float, float]]:
    """(run, KL, reward) of each seed run of a seeded variant, from the `seeds` blocks of the variant's two
    stats: their `per_seed` are each run's mean over the prompts, in `seed_runs` order, of the same
    per-prompt numbers whose mean over runs is the variant's point. results.json keeps no per-run interval,
    so these points have none."""
    runs = seed_run_names(results, variant)
    kls = (kl.get("seeds") or {}).get("per_seed") or []
    rewards = (reward.get("seeds") or {}).get("per_seed") or []
    if not (len(runs) == len(kls) == len(rewards)):
        return []  # not one value per run: which value belongs to which run cannot be told
    return [(run, x, y) for run, x, y in zip(runs, kls, rewards, strict=True) if finite(x) and finite(y)]


def _reward_kl_plot(results: dict, samples: list[dict]) -> Drawn:
    points = _reward_kl_points(results)
    if not points:
        raise _Skip("no variant has both a reward and kl_to_sft.")
    fig = _new_figure()
    ax = fig.add_subplot()
    colors = _colors(results, [p[0] for p in points])
    drawn = []
    for (name, kl, reward, fallback), color in zip(points, colors, strict=True):
        drawn.append(name)
        for run, x, y in seed_points(results, name, kl, reward):
            drawn.append(run)
            ax.plot(x, y, "o", markersize=5, markerfacecolor="white", markeredgecolor=color, alpha=0.9)
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
    return _png(fig), drawn


def _error(stat: dict) -> list[list[float]] | None:
    low, high, mean = stat.get("ci_low"), stat.get("ci_high"), stat["mean"]
    if not (finite(low) and finite(high)):
        return None
    return [[max(mean - low, 0.0)], [max(high - mean, 0.0)]]


# The panels of the training-curves plot: results.json's `training` quantities (hftune.evaluation.curves),
# in this order, with their axis labels.
CURVES = {"reward": "reward", "margin": "DPO reward margin", "kl": "KL", "length": "reply length (tokens)"}


@dataclass
class Curve:
    """One line of a training-curves panel."""

    steps: list[float]
    values: list[float]
    low: list[float] | None = None  # the band around a mean across seeds (min and max), or None
    high: list[float] | None = None


def training_curves(results: dict, quantity: str) -> dict[str, tuple[list[Curve], Curve | None]]:
    """variant -> (each run's curve, the mean across its seed runs with a min-max band, or None for a
    variant with one run) of one quantity of results.json's `training` block, in variant order."""
    block = results.get("training") or {}
    order = variant_names(results)
    out = {}
    for variant in [*(v for v in order if v in block), *(v for v in block if v not in order)]:
        runs = [_curve(series, quantity) for series in ((block[variant] or {}).get("runs") or {}).values()]
        runs = [c for c in runs if c.steps]
        if runs:
            out[variant] = (runs, seed_mean(runs) if len(runs) > 1 else None)
    return out


def _curve(series: dict, quantity: str) -> Curve:
    pairs = [(s, v) for s, v in zip(series.get("step") or [], series.get(quantity) or [], strict=False)]
    kept = [(float(s), float(v)) for s, v in pairs if finite(s) and finite(v)]
    return Curve([s for s, _ in kept], [v for _, v in kept])


def seed_mean(runs: list[Curve]) -> Curve | None:
    """The mean across runs and its min-max band, at every step two or more runs cover. The runs need not
    share steps (a run an alarm stopped early, another log interval): each is interpolated linearly onto the
    union of steps within its own first and last step, never extrapolated."""
    import numpy as np

    grid = np.array(sorted({s for run in runs for s in run.steps}))
    stack = np.array(
        [
            np.where(
                (grid >= run.steps[0]) & (grid <= run.steps[-1]),
                np.interp(grid, run.steps, run.values),
                np.nan,
            )
            for run in runs
        ]
    )
    covered = (~np.isnan(stack)).sum(axis=0) >= 2
    if not covered.any():
        return None
    stack, grid = stack[:, covered], grid[covered]
    return Curve(
        grid.tolist(),
        np.nanmean(stack, axis=0).tolist(),
        np.nanmin(stack, axis=0).tolist(),
        np.nanmax(stack, axis=0).tolist(),
    )


def _training_plot(results: dict, samples: list[dict]) -> Drawn:
    panels = {q: lines for q in CURVES if (lines := training_curves(results, q))}
    if not panels:
        raise _Skip("no training curves in results.json (no trained variant, or its run folders had no log).")
    columns = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / columns)
    fig = _new_figure(height=1.0 + 2.3 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    keys = {q: _logged_names(results, q) for q in panels}
    legend = {}
    for ax, (quantity, lines) in zip(axes, panels.items(), strict=False):
        for (variant, (runs, mean)), color in zip(lines.items(), _colors(results, lines), strict=True):
            width, alpha = (0.8, 0.45) if mean is not None else (1.6, 1.0)  # seeds: thin, under the mean
            for run in runs:
                [line] = ax.plot(run.steps, run.values, color=color, linewidth=width, alpha=alpha)
            if mean is not None:
                ax.fill_between(mean.steps, mean.low, mean.high, color=color, alpha=0.15, linewidth=0)
                [line] = ax.plot(mean.steps, mean.values, color=color, linewidth=1.8)
            legend.setdefault(variant, line)  # named as in the tables
        ax.set_title(f"{CURVES[quantity]} [{keys[quantity]}]", fontsize=8.5)
        ax.grid(alpha=0.3)
        ax.set_xlabel("step")
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    fig.legend(
        list(legend.values()),
        list(legend),
        loc="outside lower center",
        ncols=min(len(legend), 3),
        frameon=False,
    )
    return _png(fig), list(legend)


def _logged_names(results: dict, quantity: str) -> str:
    """The names a quantity was logged under (`objective/scores`, `reward`...), for a panel's title."""
    block = results.get("training") or {}
    names = {str(((v or {}).get("metrics") or {}).get(quantity)) for v in block.values()}
    return ", ".join(sorted(names - {"None"}))


_SEEDS = (
    " A variant trained with several seeds: its box (named as in the tables) is the per-prompt mean over its "
    "seed runs, followed by a lighter box per run, so the spread across seeds shows."
)
# (title, caption, builder): the builder returns a base64 PNG and the names it drew, or raises _Skip.
PLOTS: tuple[tuple[str, str, Callable[[dict, list[dict]], Drawn]], ...] = (
    (
        "Reward per prompt",
        "Reward-model score of each prompt's greedy reply (box: quartiles)." + _SEEDS,
        _reward_plot,
    ),
    ("Win rates", "P(row beats column) by the reward model, ties half; white = 0.5 = even.", _win_rate_plot),
    (
        "Reward vs KL to SFT",
        "Expected reward of sampled replies (* greedy reward where there are no samples) against the KL "
        "to the SFT model; bars are the CIs. A variant trained with several seeds: its point is the mean "
        "over its seed runs, the hollow circles each run's own mean (results.json has no interval per run).",
        _reward_kl_plot,
    ),
    ("Response length", "Tokens in each prompt's greedy reply (box: quartiles)." + _SEEDS, _length_plot),
    (
        "Training curves",
        "What each trained variant's runs logged while they trained (under the names in brackets), against "
        "the training step. A variant trained with several seeds: a thin line per seed run, the bold line "
        "(in the legend) their mean and the band their range (min to max) at each step; runs that log "
        "different steps are interpolated onto each other's steps.",
        _training_plot,
    ),
)
