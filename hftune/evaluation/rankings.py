"""Two readings of the reward-model win rates that the raw matrix does not give: a win rate against the
baseline corrected for reply length, and a ranking of every scored variant with intervals.

Length-controlled (LC) win rate, after AlpacaEval 2's. A reward model that likes long replies makes any
variant that learned to talk longer look better; the LC win rate asks what the win rate would be at equal
length. Per prompt, y = the variant's win over the baseline (1 / 0.5 / 0; a seeded variant: the mean over
its runs, as in the win-rate matrix) and d = its greedy reply's length minus the baseline's (tokens; seeded:
the mean over runs). A logistic regression y ~ sigmoid(b0 + b1 * tanh(d / s)), s the std of d over the
prompts, fractional y allowed, is fitted by Newton's method with a small ridge (so a perfectly separable
fit, a variant that wins on every prompt, stays finite). The LC win rate is sigmoid(b0): the fitted win rate
at d = 0. The tanh bounds the pull of a few very long replies. When every prompt has the same d (s = 0) the
length effect cannot be told from the intercept, and the LC win rate is the raw one. Wins decided by the sign
of d alone, with no prompt of equal length, leave the win rate at d = 0 undetermined: the ridge picks one.

Ranking. Each variant's score is its mean win rate against every other scored variant (Chatbot Arena's
"average win rate"); its rank is 1 + the number of variants with a higher score. The score gets the eval's
paired bootstrap CI, and the rank an interval: the CI's quantiles of the variant's rank over the same
resamples. The score depends on which variants are evaluated (a weak base model lifts everyone's).

Both refit or recompute on every resample of `stats.Bootstrap` (the same prompt indices as every other
interval of the eval), as weights: a resample is how many times it drew each prompt, so every resample's
fit is done at once, vectorised.

Where they go in results.json (only when the reward model scored the variants, as for `win_rates`):
- `variants[v]["lc_win_rate"]`: {mean, ci_low, ci_high, n, length_coef} for each scored variant other than
  the baseline, when lengths were measured; `length_coef` is b1 (None when s = 0);
- `ranking`: [{variant, score: {mean, ci_low, ci_high, n}, rank, rank_ci: [low, high]}, ...], best first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hftune.evaluation import stats

RIDGE = 1e-2  # on both coefficients: enough to keep a separable fit finite, negligible against ~n / 4
# Newton steps at most: a separable fit grows its coefficients by about 1 a step until the ridge holds them;
# the resamples start from the fit on all prompts, close to their own, so they need only a few.
NEWTON_STEPS = 200
RESAMPLE_STEPS = 30
TOLERANCE = 1e-8


def add(results: dict, stacks: dict[str, dict[str, np.ndarray]], boot: stats.Bootstrap) -> None:
    """Add `lc_win_rate` to each scored variant and `ranking` to `results` (in place), from the per-prompt
    rewards and lengths of every variant (`stacks`: metric -> (runs, prompts), as `seeds.fold` gives)."""
    scored = [v for v in results.get("win_rates") or {} if "reward" in stacks.get(v, {})]
    if len(scored) < 2:
        return
    rewards = {v: stacks[v]["reward"] for v in scored}
    base = results.get("baseline")
    if base in scored and "length" in stacks[base]:
        for v in scored:
            if v != base and "length" in stacks[v]:
                y = stats.pairwise_wins(rewards[v], rewards[base])
                d = stats.run_mean(stacks[v]["length"]) - stats.run_mean(stacks[base]["length"])
                lc = lc_win_rate(y, d, boot)
                if lc is not None:
                    results["variants"][v]["lc_win_rate"] = lc
    results["ranking"] = ranking(rewards, boot)


def resample_weights(boot: stats.Bootstrap) -> np.ndarray:
    """(resamples, prompts): how many times each resample drew each prompt."""
    b, n = boot.indices.shape
    flat = (boot.indices + np.arange(b)[:, None] * n).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def lc_win_rate(wins, length_diff, boot: stats.Bootstrap) -> dict[str, Any] | None:
    """The LC win rate of per-prompt wins `wins` (in [0, 1]) given per-prompt length differences (variant
    minus baseline), with its bootstrap CI; None when no prompt has both."""
    y, d = np.asarray(wins, dtype=np.float64), np.asarray(length_diff, dtype=np.float64)
    present = ~(np.isnan(y) | np.isnan(d))
    n = int(present.sum())
    if n == 0:
        return None
    scale = float(d[present].std())
    if scale == 0.0:  # no length variation to fit: the length effect is the intercept's
        return {**boot.summary(np.where(present, y, np.nan)), "length_coef": None}
    x = np.where(present, np.tanh(np.where(present, d, 0.0) / scale), 0.0)
    y = np.where(present, y, 0.0)
    b0, b1 = fit_logistic(x, y, present[None, :].astype(np.float64), (0.0, 0.0), NEWTON_STEPS)
    r0, _ = fit_logistic(x, y, resample_weights(boot) * present, (b0[0], b1[0]), RESAMPLE_STEPS)
    low, high = np.quantile(_sigmoid(r0), [boot.alpha, 1.0 - boot.alpha])
    return {
        "mean": float(_sigmoid(b0[0])),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": n,
        "length_coef": float(b1[0]),
    }


def fit_logistic(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, start: tuple[float, float], steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge logistic regression y ~ sigmoid(b0 + b1 x) of fractional outcomes, one fit per row of
    `weights` (resamples, prompts), all at once: Newton's method on the penalised log-likelihood (2 x 2
    systems solved in closed form) from `start`, at most `steps` steps. Returns (b0, b1), one per row."""
    rows = weights.shape[0]
    b0, b1 = np.full(rows, float(start[0])), np.full(rows, float(start[1]))
    wx, wxx = weights * x, weights * x * x
    for _ in range(steps):
        p = _sigmoid(b0[:, None] + b1[:, None] * x)
        r = y - p
        g0 = (weights * r).sum(axis=1) - RIDGE * b0
        g1 = (wx * r).sum(axis=1) - RIDGE * b1
        h = p * (1.0 - p)
        h00 = (weights * h).sum(axis=1) + RIDGE
        h01 = (wx * h).sum(axis=1)
        h11 = (wxx * h).sum(axis=1) + RIDGE
        det = h00 * h11 - h01 * h01
        step0, step1 = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        b0, b1 = b0 + step0, b1 + step1
        if max(np.abs(step0).max(), np.abs(step1).max()) < TOLERANCE:
            break
    return b0, b1


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + e^-z), without overflow


def ranking(rewards: dict[str, np.ndarray], boot: stats.Bootstrap) -> list[dict[str, Any]]:
    """Every variant's mean win rate against all the others, with its CI, rank and rank interval, best
    first. `rewards`: per-prompt rewards per variant (a seeded one: (runs, prompts))."""
    names = list(rewards)
    weights = resample_weights(boot)
    k = len(names)
    point = np.full((k, k), np.nan)
    measured = np.zeros(k, dtype=int)  # prompts on which a variant met at least one other
    resampled = np.full((weights.shape[0], k, k), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i == j:
                continue
            wins = stats.pairwise_wins(rewards[a], rewards[b])
            present = ~np.isnan(wins)
            if not present.any():
                continue
            measured[i] = max(measured[i], int(present.sum()))
            filled = np.where(present, wins, 0.0)
            point[i, j] = filled[present].mean()
            counts = weights @ present
            resampled[:, i, j] = np.where(counts > 0, weights @ filled / np.maximum(counts, 1), np.nan)
    score = np.nanmean(point, axis=1)
    scores = np.nanmean(resampled, axis=2)  # (resamples, variants)
    rank = _ranks(score[None, :])[0]
    ranks = _ranks(scores)
    out = []
    for i in np.argsort(-score, kind="stable"):
        low, high = np.quantile(scores[:, i], [boot.alpha, 1.0 - boot.alpha])
        out.append(
            {
                "variant": names[i],
                "score": {
                    "mean": float(score[i]),
                    "ci_low": float(low),
                    "ci_high": float(high),
                    "n": int(measured[i]),
                },
                "rank": int(rank[i]),
                "rank_ci": [
                    int(np.quantile(ranks[:, i], boot.alpha, method="lower")),
                    int(np.quantile(ranks[:, i], 1.0 - boot.alpha, method="higher")),
                ],
            }
        )
    return out


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Per row, each column's rank: 1 + how many columns score higher (ties share the better rank)."""
    return 1 + (scores[:, None, :] > scores[:, :, None]).sum(axis=2)
