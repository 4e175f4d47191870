"""The plots of report.html, as inline base64 PNGs: reward and length per prompt, the win-rate heatmap and
reward against KL. They use the per-prompt numbers of samples.jsonl and the intervals of results.json.

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
from dataclasses import dataclass

from hftune.evaluation.report.results import finite, variant_names, win_rate_names

logger = logging.getLogger(__name__)

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


@dataclass
class Plot:
    title: str
    caption: str
    png: str | None = None  # base64; None when skipped
    note: str = ""


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
                plots.append(Plot(title, caption, png=builder(results, samples)))
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


def _per_prompt(samples: list[dict], field: str, names: Iterable[str]) -> dict[str, list[float]]:
    """variant -> the finite per-prompt values of one field of the greedy responses."""
    out: dict[str, list[float]] = {}
    for name in names:
        values = [((s.get("variants") or {}).get(name) or {}).get(field) for s in samples]
        kept = [float(v) for v in values if finite(v)]
        if kept:
            out[name] = kept
    return out


def _reward_plot(results: dict, samples: list[dict]) -> str:
    data = _per_prompt(samples, "reward", variant_names(results))
    if not data:
        raise _Skip("no per-prompt rewards in samples.jsonl (no reward model).")
    return _distribution(results, data, "reward (greedy reply)")


def _length_plot(results: dict, samples: list[dict]) -> str:
    data = _per_prompt(samples, "length", variant_names(results))
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


def _win_rate_plot(results: dict, samples: list[dict]) -> str:
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
    return _png(fig)


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
    if not (finite(low) and finite(high)):
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
