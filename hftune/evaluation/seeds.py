"""Seed variance made visible: one variant trained with several seeds (`rlhf_models: {rlhf: [runs/ppo-seed1,
runs/ppo-seed2]}`, which `hftune pipeline` writes for an RL stage with `seeds: [1, 2]`) is evaluated as one
variant whose claims must survive the seeds.

Each seed run generates its own replies and gets its own per-prompt metrics, like any variant (the harness
names the runs `rlhf@ppo-seed1`, ... : `suite.seed_runs`). `measures.aggregate` then folds them:

- `fold`: the variant's per-prompt value is the mean over its runs, so the usual bootstrap over prompts stays
  paired with every other variant (same prompts, same resamples); win rates per prompt are the mean over runs
  of the wins (`stats.pairwise_wins`).
- `annotate`: beside each prompt-level summary, a `seeds` block over the per-seed means, and for the
  comparison with the baseline (paired differences, win rate) a verdict `survives_seeds`.

Why a t-interval and what it means. The per-seed means are a handful of independent draws of "what this recipe
gives when trained again"; a bootstrap over 2-5 values is meaningless (over 2 it is just [min, max], which
covers the mean half the time), so the interval is Student's t over the per-seed means, n - 1 degrees of
freedom: mean +- t * sd / sqrt(n), assuming per-seed means scatter roughly normally. With 2 seeds it has one
degree of freedom (t = 12.7 at 95%): the interval is mean +- 6.35 * |x1 - x2|, so it excludes 0 only when the
two seeds agree to within about a sixth of their mean. That is deliberate: two seeds say little about the
spread between seeds, and a claim resting on two must not hide a disagreement. When two variants both have
seeds (no seed of one is paired with one of the other), their difference gets Welch's interval. Seeds that all
give the same number give a zero-width interval: check that the seed reached the runs.

The seed interval holds the prompts fixed (every run answers the same prompts), and the prompt-level bootstrap
holds the runs fixed; a claim needs both. So `survives_seeds` is true only when both intervals exclude the
null (0 for a difference, 0.5 for a win rate) on the same side. A single-run variant gets no `seeds` block and
no verdict: one seed cannot show whether a difference survives another.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from hftune import artifacts
from hftune.evaluation import stats

logger = logging.getLogger(__name__)

INTERVAL = "student-t over the per-seed means (n - 1 df); welch when both sides have seeds"
CLAIM_RULE = (
    "survives_seeds: the prompt-level bootstrap CI and the seed-level CI both exclude the null (0 for a "
    "difference, 0.5 for a win rate) on the same side"
)


def fold(
    per_prompt: dict[str, dict[str, np.ndarray]], groups: dict[str, list[str]]
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]]]:
    """Fold each group's runs (run name -> per-prompt metrics) into one variant.

    Returns (folded, stacks): `folded` has every variant with 1-D per-prompt arrays (a group's: the mean over
    its runs, NaN-aware), in the order of `per_prompt` (a group where its first run was); `stacks` has, for
    every variant, each metric as a (runs, prompts) array (one row for a single run). Only metrics every run
    of a group has are kept."""
    run_of = {run: variant for variant, members in groups.items() for run in members}
    folded: dict[str, dict[str, np.ndarray]] = {}
    stacks: dict[str, dict[str, np.ndarray]] = {}
    for name, metrics in per_prompt.items():
        variant = run_of.get(name)
        if variant is None:
            folded[name] = dict(metrics)
            stacks[name] = {m: stats.runs(values) for m, values in metrics.items()}
            continue
        if variant in folded:
            continue
        members = [r for r in groups[variant] if r in per_prompt]
        shared = [m for m in metrics if all(m in per_prompt[r] for r in members)]
        stacks[variant] = {
            m: np.stack([np.asarray(per_prompt[r][m], dtype=np.float64) for r in members]) for m in shared
        }
        folded[variant] = {m: stats.run_mean(stack) for m, stack in stacks[variant].items()}
    return folded, stacks


def run_means(stack) -> np.ndarray:
    """Each run's mean over the prompts it was measured on (NaN for a run with none)."""
    stack = stats.runs(stack)
    present = ~np.isnan(stack)
    counts = present.sum(axis=1)
    sums = np.where(present, stack, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def block(per_seed, confidence: float, method: str = "t") -> dict[str, Any]:
    """The `seeds` block of one number: {n, per_seed, mean, ci_low, ci_high, sd, method}; `ci_*` are None
    with fewer than 2 measured seeds."""
    values = [None if np.isnan(x) else float(x) for x in np.asarray(per_seed, dtype=np.float64)]
    t = stats.t_interval([np.nan if x is None else x for x in values], confidence)
    return {
        "n": t["n"],
        "per_seed": values,
        "mean": t["mean"],
        "ci_low": t["ci_low"],
        "ci_high": t["ci_high"],
        "sd": t["sd"],
        "method": method,
    }


def difference_block(a, b, confidence: float) -> dict[str, Any] | None:
    """The seed-level interval of mean(a) - mean(b), for per-prompt stacks (runs, prompts) of two variants
    answering the same prompts; None when neither has several runs.

    One side with several runs: per run, the mean over prompts of the paired difference against the other
    side's single run, then a t-interval. Both with several runs: Welch's interval of the per-seed means."""
    a, b = stats.runs(a), stats.runs(b)
    if len(a) == 1 and len(b) == 1:
        return None
    if len(a) > 1 and len(b) > 1:
        ma, mb = run_means(a), run_means(b)
        w = stats.welch_interval(ma, mb, confidence)
        return {
            "n": int(min((~np.isnan(ma)).sum(), (~np.isnan(mb)).sum())),
            "per_seed": [None if np.isnan(x) else float(x) for x in ma],
            "per_seed_other": [None if np.isnan(x) else float(x) for x in mb],
            "mean": w["mean"],
            "ci_low": w["ci_low"],
            "ci_high": w["ci_high"],
            "df": w["df"],
            "method": "welch",
        }
    return block(run_means(a - b), confidence)  # broadcasting pairs every run with the single one


def win_block(a, b, confidence: float) -> dict[str, Any] | None:
    """The seed-level interval of P(a beats b) from reward stacks: per run of the side with several runs, its
    win rate over the prompts against the other side's single run (t-interval, cut to [0, 1]). None when
    neither or both have several runs (with seeds on both sides no run of one is paired with a run of the
    other)."""
    a, b = stats.runs(a), stats.runs(b)
    if (len(a) > 1) == (len(b) > 1):
        return None
    out = block(run_means(stats.wins(a, b)), confidence)
    if out["ci_low"] is not None:  # a rate: the t-interval cut to [0, 1]
        out["ci_low"], out["ci_high"] = max(0.0, out["ci_low"]), min(1.0, out["ci_high"])
    return out


def survives(prompt_level: dict | None, seed_level: dict | None, null: float) -> bool:
    """True only when both intervals exclude `null` on the same side."""
    if not prompt_level or not seed_level:
        return False
    bounds = [prompt_level.get(k) for k in ("ci_low", "ci_high")] + [
        seed_level.get(k) for k in ("ci_low", "ci_high")
    ]
    if any(x is None or not np.isfinite(x) for x in bounds):
        return False
    p_low, p_high, s_low, s_high = bounds
    return (p_low > null and s_low > null) or (p_high < null and s_high < null)


def mirrored(seed_level: dict) -> dict:
    """The seeds block of 1 - x from that of x (b's win rate over a)."""
    out = {**seed_level, "per_seed": [None if x is None else 1.0 - x for x in seed_level["per_seed"]]}
    out["mean"] = None if seed_level["mean"] is None else 1.0 - seed_level["mean"]
    if seed_level["ci_low"] is not None:
        out["ci_low"], out["ci_high"] = 1.0 - seed_level["ci_high"], 1.0 - seed_level["ci_low"]
    return out


def run_info(groups: dict[str, list[str]], paths: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Per seeded variant, its runs in order: name, folder and the seed its manifest records (or None)."""
    out = {}
    for variant, members in groups.items():
        rows = []
        for run in members:
            folder = paths.get(run)
            manifest = artifacts.read_manifest(folder) if folder else None
            rows.append({"run": run, "model": folder, "seed": (manifest or {}).get("seed")})
        out[variant] = rows
    return out


def annotate(
    variants: dict[str, dict],
    win_rates: dict[str, dict[str, dict]],
    stacks: dict[str, dict[str, np.ndarray]],
    groups: dict[str, list[str]],
    baseline: str | None,
    confidence: float,
    paths: dict[str, str],
) -> None:
    """Add the seed-level statistics to `aggregate`'s variants and win-rate matrix, in place:

    - `variants[v]["seed_runs"]`: the runs of a seeded variant (name, folder, seed);
    - `variants[v]["metrics"][m]["seeds"]`: the block of the per-seed means;
    - `variants[v]["vs_baseline"][m]["seeds"]` and `["survives_seeds"]` wherever either side has seeds;
    - `win_rates[a][b]["seeds"]` (and mirrored `[b][a]`) when exactly one side has seeds, and
      `["survives_seeds"]` on each variant's win rate against the baseline."""
    seeded = {v for v, s in stacks.items() if any(len(x) > 1 for x in s.values())}
    for variant, rows in run_info({v: m for v, m in groups.items() if v in seeded}, paths).items():
        if variant in variants:
            variants[variant]["seed_runs"] = rows
    for v, entry in variants.items():
        if v in seeded:
            for m, summary in entry["metrics"].items():
                if m in stacks[v]:
                    summary["seeds"] = block(run_means(stacks[v][m]), confidence)
            reward = entry["metrics"].get("reward", {}).get("seeds")
            if reward and reward["n"] > 1 and reward["sd"] == 0.0:
                logger.warning(
                    "%s: every seed run gave the same mean reward (%s): check that the runs really differ",
                    v, reward["mean"],
                )  # fmt: skip
        if baseline is None or v == baseline or not ({v, baseline} & seeded):
            continue
        for m, summary in entry["vs_baseline"].items():
            if m in stacks[v] and m in stacks[baseline]:
                seed_level = difference_block(stacks[v][m], stacks[baseline][m], confidence)
                if seed_level is not None:
                    summary["seeds"] = seed_level
                    summary["survives_seeds"] = survives(summary, seed_level, 0.0)
    for a, row in win_rates.items():
        for b, summary in row.items():
            if a == b or (a in seeded) == (b in seeded) or "seeds" in summary:
                continue
            seed_level = win_block(stacks[a]["reward"], stacks[b]["reward"], confidence)
            if seed_level is None:
                continue
            summary["seeds"] = seed_level
            win_rates[b][a]["seeds"] = mirrored(seed_level)
    if baseline is not None:
        for a, row in win_rates.items():
            if a != baseline and baseline in row and "seeds" in row[baseline]:
                row[baseline]["survives_seeds"] = survives(row[baseline], row[baseline]["seeds"], 0.5)
