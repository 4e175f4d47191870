"""Per-prompt numbers into means with paired bootstrap confidence intervals, and reward-model win rates.

Every variant is measured on the same prompts, so one set of bootstrap resamples of the prompt indices is
drawn per eval and shared by every variant and metric: intervals of differences are then paired (the
prompt-to-prompt variation that all variants share cancels), which is what makes a small eval decisive.

Across training seeds (`evaluation/seeds.py`) the unit is a seed, not a prompt, and there are only a few:
`t_interval` gives Student's t-interval over per-seed means (`t_quantile` computes its quantile, no SciPy).
"""

from __future__ import annotations

import math

import numpy as np


class Bootstrap:
    """Resamples of prompt indices, drawn once per eval (seeded) and reused for every statistic."""

    def __init__(self, n_prompts: int, n_resamples: int, confidence: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.confidence = confidence
        self.indices = rng.integers(0, n_prompts, size=(n_resamples, n_prompts))
        self.alpha = (1.0 - confidence) / 2.0

    def summary(self, per_prompt) -> dict[str, float | int] | None:
        """Mean and CI of a per-prompt array (NaN = not measured for that prompt, left out)."""
        values = np.asarray(per_prompt, dtype=np.float64)
        present = ~np.isnan(values)
        n = int(present.sum())
        if n == 0:
            return None
        filled = np.where(present, values, 0.0)
        sums = filled[self.indices].sum(axis=1)
        counts = present[self.indices].sum(axis=1)
        means = sums[counts > 0] / counts[counts > 0]
        low, high = np.quantile(means, [self.alpha, 1.0 - self.alpha]) if len(means) else (np.nan, np.nan)
        return {
            "mean": float(values[present].mean()),
            "ci_low": float(low),
            "ci_high": float(high),
            "n": n,
        }


def wins(a, b, tolerance: float = 1e-6) -> np.ndarray:
    """Per prompt: 1 where reward a beats b, 0 where it loses, 0.5 for a tie (within `tolerance`)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = np.where(a > b + tolerance, 1.0, np.where(b > a + tolerance, 0.0, 0.5))
    return np.where(np.isnan(a) | np.isnan(b), np.nan, out)


def mirrored(summary: dict) -> dict:
    """The summary of 1 - x from that of x: b's win rate over a from a's over b."""
    return {
        **summary,
        "mean": 1.0 - summary["mean"],
        "ci_low": 1.0 - summary["ci_high"],
        "ci_high": 1.0 - summary["ci_low"],
    }


def win_rate_matrix(rewards: dict[str, np.ndarray], boot: Bootstrap) -> dict[str, dict[str, dict]]:
    """w[a][b] = P(a's reply gets a higher reward than b's on a prompt), ties half. w[a][a] = 0.5 and
    w[a][b] + w[b][a] = 1 hold by construction, for the means and (mirrored) for the intervals.

    A variant trained with several seeds gives a 2-D array (one row of per-prompt rewards per seed run): its
    per-prompt win is the mean over its runs (and over the other variant's runs), so the prompt-level
    bootstrap stays paired with every other variant."""
    names = list(rewards)
    matrix: dict[str, dict[str, dict]] = {a: {} for a in names}
    for i, a in enumerate(names):
        for b in names[i:]:
            s = boot.summary(pairwise_wins(rewards[a], rewards[b]) if a != b else _half(rewards[a]))
            if s is None:
                continue
            matrix[a][b] = s
            if a != b:
                matrix[b][a] = mirrored(s)
    return matrix


def runs(values) -> np.ndarray:
    """Per-prompt values as (runs, prompts): a 1-D array is one run."""
    values = np.asarray(values, dtype=np.float64)
    return values[None, :] if values.ndim == 1 else values


def run_mean(values) -> np.ndarray:
    """Per prompt, the mean over runs of the values measured (NaN where no run measured that prompt)."""
    values = runs(values)
    present = ~np.isnan(values)
    counts = present.sum(axis=0)
    sums = np.where(present, values, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def pairwise_wins(a, b) -> np.ndarray:
    """Per prompt, the mean over every (run of a, run of b) pair of `wins` (1-D arrays: plain `wins`)."""
    a, b = runs(a), runs(b)
    return run_mean(wins(a[:, None, :], b[None, :, :]).reshape(-1, a.shape[1]))


def _half(values) -> np.ndarray:
    return np.where(np.isnan(run_mean(values)), np.nan, 0.5)


def t_quantile(p: float, df: float) -> float:
    """The p-quantile (0 < p < 1) of Student's t distribution with `df` > 0 degrees of freedom: the inverse
    of its CDF (through the regularized incomplete beta function), found by bisection."""
    if not 0 < p < 1 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:  # heavy tails (df = 1): the quantile can be far out
        low, high = high, high * 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


def t_cdf(t: float, df: float) -> float:
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (Numerical Recipes' continued fraction, modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below this point
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h / a


def t_interval(values, confidence: float) -> dict[str, float | int | None]:
    """Mean and Student's t-interval of a few independent values (per-seed means): mean +- t * sd / sqrt(n)
    with n - 1 degrees of freedom. NaN values are left out; fewer than 2 values give no interval."""
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "sd": None, "n": 0}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None, "sd": None, "n": n}
    sd = float(x.std(ddof=1))
    half = t_quantile(1.0 - (1.0 - confidence) / 2.0, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "sd": sd, "n": n}


def welch_interval(a, b, confidence: float) -> dict[str, float | int | None]:
    """Mean(a) - mean(b) with Welch's t-interval, for two independent sets of per-seed means (two variants
    each trained with its own seeds: no seed of one is paired with a seed of the other)."""
    a, b = (np.asarray(v, dtype=np.float64) for v in (a, b))
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2:
        return {"mean": None, "ci_low": None, "ci_high": None, "df": None}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    mean = float(a.mean() - b.mean())
    se = math.sqrt(va + vb)
    if se == 0.0:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "df": float(len(a) + len(b) - 2)}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    half = t_quantile(1.0 - (1.0 - confidence) / 2.0, df) * se
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "df": float(df)}
