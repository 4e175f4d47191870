"""Per-prompt numbers into means with paired bootstrap confidence intervals, and reward-model win rates.

Every variant is measured on the same prompts, so one set of bootstrap resamples of the prompt indices is
drawn per eval and shared by every variant and metric: intervals of differences are then paired (the
prompt-to-prompt variation that all variants share cancels), which is what makes a small eval decisive.
"""

from __future__ import annotations

import numpy as np


class Bootstrap:
    """Resamples of prompt indices, drawn once per eval (seeded) and reused for every statistic."""

    def __init__(self, n_prompts: int, n_resamples: int, confidence: float, seed: int = 0):
        rng = np.random.default_rng(seed)
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
    w[a][b] + w[b][a] = 1 hold by construction, for the means and (mirrored) for the intervals."""
    names = list(rewards)
    matrix: dict[str, dict[str, dict]] = {a: {} for a in names}
    for i, a in enumerate(names):
        for b in names[i:]:
            s = boot.summary(
                wins(rewards[a], rewards[b]) if a != b else np.where(np.isnan(rewards[a]), np.nan, 0.5)
            )
            if s is None:
                continue
            matrix[a][b] = s
            if a != b:
                matrix[b][a] = mirrored(s)
    return matrix
