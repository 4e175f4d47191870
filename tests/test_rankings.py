"""Length-controlled win rates and the ranking from the pairwise wins (`evaluation/rankings.py`), and their
report section. Synthetic per-prompt numbers only: no model."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hftune.evaluation import rankings, stats
from hftune.evaluation.measures import aggregate
from hftune.evaluation.report import render_html, render_markdown
from hftune.evaluation.suite import Suite, rlhf_variants
from hftune.models.generation import Decoding

N = 300


def boot(n: int = N, resamples: int = 1000) -> stats.Bootstrap:
    return stats.Bootstrap(n, resamples, 0.95, seed=0)


def length_diffs(rng, longer: float, n: int = N) -> np.ndarray:
    """Per-prompt length differences (tokens): positive (the variant longer) on a `longer` fraction."""
    d = rng.integers(1, 40, n).astype(float)
    return np.where(rng.random(n) < longer, d, -d)


# ------------------------------------------------------------------------------------------------------
# Length-controlled win rate
# ------------------------------------------------------------------------------------------------------


def test_lc_is_the_raw_win_rate_when_lengths_do_not_differ():
    rng = np.random.default_rng(0)
    wins = rng.choice([0.0, 0.5, 1.0], N, p=[0.3, 0.1, 0.6])
    b = boot()
    for d in (np.zeros(N), np.full(N, 7.0)):  # no spread in d: nothing to fit a length effect on
        lc = rankings.lc_win_rate(wins, d, b)
        assert lc == {**b.summary(wins), "length_coef": None}


def test_a_variant_that_wins_only_by_being_longer_loses_its_edge():
    # The variant is longer on most prompts and wins exactly there; at equal length (one prompt in ten) the
    # reward model ties. Raw about 0.75; at equal length the variant is no better.
    rng = np.random.default_rng(1)
    d = length_diffs(rng, 0.8)
    d[: N // 10] = 0.0
    wins = np.sign(d) / 2 + 0.5
    lc = rankings.lc_win_rate(wins, d, boot())
    assert wins.mean() > 0.7
    assert lc["length_coef"] > 5 and np.isfinite(lc["length_coef"])  # separable, yet finite (the ridge)
    assert lc["mean"] == pytest.approx(0.5, abs=0.06) and lc["ci_high"] < wins.mean() - 0.1

    # Noisy: P(win) rises with length, and is 0.5 at equal length.
    p = 1.0 / (1.0 + np.exp(-3.0 * np.tanh(d / d.std())))
    wins = (rng.random(N) < p).astype(float)
    lc = rankings.lc_win_rate(wins, d, boot())
    assert wins.mean() > 0.65
    assert lc["ci_low"] < 0.5 < lc["ci_high"] and lc["ci_high"] < wins.mean()
    assert lc["length_coef"] > 1


def test_a_variant_that_wins_at_every_length_keeps_its_win_rate():
    rng = np.random.default_rng(2)
    d = length_diffs(rng, 0.5)
    wins = (rng.random(N) < 0.85).astype(float)  # independent of length
    lc = rankings.lc_win_rate(wins, d, boot())
    assert lc["mean"] == pytest.approx(wins.mean(), abs=0.04)
    assert lc["ci_low"] > 0.75 and abs(lc["length_coef"]) < 0.5

    always = rankings.lc_win_rate(np.ones(N), d, boot())  # separable in the intercept: stays finite
    assert 0.99 < always["mean"] < 1.0 and always["ci_low"] > 0.99


def test_lc_fits_fractional_wins_and_leaves_out_missing_prompts():
    rng = np.random.default_rng(3)
    d = length_diffs(rng, 0.5)
    wins = rng.choice([0.0, 1 / 3, 2 / 3, 1.0], N)  # a seeded variant: the mean over its runs
    wins[:10] = np.nan
    d[10:20] = np.nan
    lc = rankings.lc_win_rate(wins, d, boot())
    assert lc["n"] == N - 20
    assert lc["ci_low"] < lc["mean"] < lc["ci_high"]
    assert lc["mean"] == pytest.approx(np.nanmean(wins[20:]), abs=0.03)
    assert rankings.lc_win_rate(np.full(N, np.nan), d, boot()) is None


def test_the_bootstrap_refits_are_fast():
    rng = np.random.default_rng(4)
    d = length_diffs(rng, 0.7, n=1000)
    wins = (d > 0).astype(float)  # the slowest case: separable, the coefficients grow step by step
    start = time.perf_counter()
    rankings.lc_win_rate(wins, d, boot(1000, 2000))
    assert time.perf_counter() - start < 3.0  # about 0.5 s on one core


# ------------------------------------------------------------------------------------------------------
# Ranking
# ------------------------------------------------------------------------------------------------------


def test_a_dominating_variant_ranks_first_without_doubt():
    rng = np.random.default_rng(5)
    difficulty = rng.normal(0.0, 1.0, N)
    rewards = {
        "a": difficulty + rng.normal(0.0, 1.0, N),
        "b": difficulty + 2.0 + rng.normal(0.0, 1.0, N),
        "c": difficulty - 2.0 + rng.normal(0.0, 1.0, N),
    }
    b = boot()
    ranking = rankings.ranking(rewards, b)
    assert [r["variant"] for r in ranking] == ["b", "a", "c"]
    assert [r["rank"] for r in ranking] == [1, 2, 3]
    assert [r["rank_ci"] for r in ranking] == [[1, 1], [2, 2], [3, 3]]
    # The score is the mean of the win-rate matrix's row, off the diagonal.
    matrix = stats.win_rate_matrix(rewards, b)
    for r in ranking:
        row = [s["mean"] for other, s in matrix[r["variant"]].items() if other != r["variant"]]
        assert r["score"]["mean"] == pytest.approx(np.mean(row))
        assert r["score"]["ci_low"] < r["score"]["mean"] < r["score"]["ci_high"]
        assert r["score"]["n"] == N


def test_variants_that_do_not_differ_get_overlapping_rank_intervals():
    rng = np.random.default_rng(6)
    rewards = {name: rng.normal(0.0, 1.0, N) for name in ("a", "b", "c", "d")}
    ranking = rankings.ranking(rewards, boot())
    assert sorted(r["rank"] for r in ranking) == [1, 2, 3, 4]
    assert [r["score"]["mean"] for r in ranking] == sorted(
        (r["score"]["mean"] for r in ranking), reverse=True
    )
    for r in ranking:
        low, high = r["rank_ci"]
        assert low <= r["rank"] <= high and high > low
    first, last = ranking[0]["rank_ci"], ranking[-1]["rank_ci"]
    assert first[1] >= last[0]  # even the best and the worst could swap places


# ------------------------------------------------------------------------------------------------------
# Through `aggregate`, and the report
# ------------------------------------------------------------------------------------------------------


def run_aggregate(per_prompt: dict) -> dict:
    suite = Suite(
        rlhf_models={"rlhf": ["runs/ppo-seed1", "runs/ppo-seed2"]},
        variants=["sft", "rlhf", "verbose"],
        metrics=["reward", "win_rate", "length"],
    )
    paths = {"sft": "runs/sft", "verbose": "runs/verbose", **rlhf_variants(suite)}
    return aggregate(suite, per_prompt, boot(), paths, Decoding(16), Decoding(16, 1.0, 1, 0))


def per_prompt_numbers(seed: int = 7) -> dict:
    """An SFT baseline; `rlhf` (two seed runs) better at about its length; `verbose` better only if longer."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(0.0, 1.0, N)
    length = rng.integers(10, 40, N).astype(float)
    out = {"sft": {"reward": quality, "length": length}}
    for run in ("rlhf@ppo-seed1", "rlhf@ppo-seed2"):
        out[run] = {
            "reward": quality + 1.0 + rng.normal(0.0, 0.5, N),
            "length": length + rng.integers(-3, 4, N),
        }
    verbose_length = length + length_diffs(rng, 0.7)
    out["verbose"] = {
        "reward": quality + np.sign(verbose_length - length) + rng.normal(0.0, 0.3, N),
        "length": verbose_length,
    }
    return out


def test_aggregate_adds_lc_win_rates_and_the_ranking():
    results = run_aggregate(per_prompt_numbers())
    variants, matrix = results["variants"], results["win_rates"]
    assert "lc_win_rate" not in variants["sft"]  # the baseline is not compared with itself
    rlhf, verbose = variants["rlhf"]["lc_win_rate"], variants["verbose"]["lc_win_rate"]
    assert rlhf["n"] == verbose["n"] == N
    assert rlhf["ci_low"] > 0.8  # it wins at every length: the LC win rate stays high
    assert matrix["verbose"]["sft"]["mean"] > 0.6
    assert verbose["mean"] < matrix["verbose"]["sft"]["mean"] - 0.1 and verbose["length_coef"] > 1
    ranking = results["ranking"]
    assert [r["variant"] for r in ranking] == ["rlhf", "verbose", "sft"]
    assert ranking[0]["rank_ci"] == [1, 1]


def test_nothing_is_added_without_reward_model_win_rates():
    results = run_aggregate({k: {"length": v["length"]} for k, v in per_prompt_numbers().items()})
    assert results["win_rates"] == {} and "ranking" not in results
    assert all("lc_win_rate" not in v for v in results["variants"].values())


def test_the_ranking_section_renders(tmp_path):
    results = run_aggregate(per_prompt_numbers())
    results["variants"]["verbose"]["trained_against_reward_model"] = False  # gets the reward caveat
    md = render_markdown(results, [])
    page = render_html(results, [])
    section = md[md.index("## Ranking") :]
    section = section[: section.index("\n## ")]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| rank | variant | mean win rate vs all others")
    assert "LC win vs sft" in rows[0]
    assert rows[1].startswith("| 1 [1–1] | rlhf |")
    assert "| verbose † |" in rows[2]
    assert "| sft (baseline) |" in rows[3] and rows[3].endswith("| - | - | - |")  # no win over itself
    lc = results["variants"]["verbose"]["lc_win_rate"]
    assert f"{lc['mean']:.3f} [{lc['ci_low']:.3f}, {lc['ci_high']:.3f}]" in rows[2]
    assert f"{lc['length_coef']:+.3f}" in rows[2]
    assert "length-controlled" in section and "reward model" in section
    assert "† verbose: not trained against this reward model" in section
    assert "Ranking (reward model)" in page and "LC win vs sft" in page and "1–1" in page

    # Without a ranking (no reward model) the section is left out.
    del results["ranking"]
    assert "## Ranking" not in render_markdown(results, [])
