"""The verdicts (hftune/evaluation/verdict.py): one entry per claim computed once from results.json, the same
lines in the terminal summary, report.md and report.html, and table marks that follow the same rule."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pytest

from hftune.evaluation import stats, verdict
from hftune.evaluation.measures import aggregate
from hftune.evaluation.report import render_html, render_markdown
from hftune.evaluation.report.markdown import escape
from hftune.evaluation.report.results import direction
from hftune.evaluation.suite import Suite, rlhf_variants
from hftune.models.generation import Decoding

INFO = {
    m: {"decoding": "greedy", "higher_is_better": True, "description": m}
    for m in ("reward", "verifier", "expected_reward")
}


def diff(mean: float, low: float, high: float, **extra) -> dict:
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": 50, **extra}


def seeded(mean: float, low: float, high: float, per_seed: list[float], s_low: float, s_high: float) -> dict:
    block = {"n": len(per_seed), "per_seed": per_seed, "mean": mean, "ci_low": s_low, "ci_high": s_high}
    survives = (low > 0 and s_low > 0) or (high < 0 and s_high < 0)
    return diff(mean, low, high, seeds={**block, "method": "t"}, survives_seeds=survives)


def results(**vs_baseline: dict) -> dict:
    """sft (the baseline) and one variant per keyword, each with those differences against sft."""
    variants = {"sft": {"kind": "sft", "metrics": {}, "vs_baseline": {}}}
    for name, diffs in vs_baseline.items():
        kind = name if name in ("base", "best_of_n", "reference") else "rlhf"
        variants[name] = {"kind": kind, "metrics": {}, "vs_baseline": diffs}
    return {"baseline": "sft", "metric_info": INFO, "variants": variants, "suite": {"confidence": 0.95}}


def test_claims_follow_the_lineage():
    kinds = {"base": "base", "sft": "sft", "rlhf": "rlhf", "dpo": "rlhf", "best_of_n": "best_of_n"}
    kinds |= {"reference": "reference", "grpo": "rlhf"}
    variants = {n: {"kind": k} for n, k in kinds.items()}
    assert verdict.claims(variants) == [
        ("sft", "base"),
        ("rlhf", "sft"),
        ("dpo", "sft"),
        ("grpo", "sft"),
        ("best_of_n", "sft"),
        ("dpo", "rlhf"),
        ("dpo", "grpo"),
    ]
    assert verdict.claims({"sft": {"kind": "sft"}, "rlhf": {"kind": "rlhf"}}) == [("rlhf", "sft")]


def test_a_claim_that_holds_on_the_verifier_and_the_reward():
    r = results(rlhf={"verifier": diff(0.12, 0.08, 0.16), "reward": diff(1.5, 1.0, 2.0)})
    [v] = verdict.verdicts(r)
    assert set(v) == {
        *("claim", "variant", "baseline", "metric", "mean", "ci", "seeds", "word", "why", "line"),
        *("head", "segments"),
    }
    assert v["line"] == f"{v['head']}: " + " · ".join(v["segments"])
    assert (v["claim"], v["variant"], v["baseline"], v["metric"]) == (
        "rlhf vs sft",
        "rlhf",
        "sft",
        "verifier",
    )
    assert v["mean"] == 0.12 and v["ci"] == [0.08, 0.16] and v["seeds"] is None
    assert v["word"] == "holds"
    assert v["why"] == "Verifier is better over prompts, and reward agrees."
    assert v["line"] == (
        "rlhf vs sft: holds: verifier +0.120 [+0.080, +0.160]: better over prompts · "
        "reward +1.500 [+1.000, +2.000]: better over prompts"
    )


def test_without_a_verifier_the_reward_is_the_headline_and_no_difference_does_not_hold():
    [v] = verdict.verdicts(results(rlhf={"reward": diff(0.1, -0.2, 0.4)}))
    assert v["metric"] == "reward" and v["word"] == "does not hold"
    assert v["why"] == "Reward is not clearly different over prompts."


def test_reward_and_verifier_disagreeing_is_mixed():
    r = results(dpo={"verifier": diff(0.1, 0.05, 0.15), "reward": diff(-0.5, -0.8, -0.2)})
    [v] = verdict.verdicts(r)
    assert v["word"] == "mixed" and v["metric"] == "verifier"
    assert (
        "reward is worse over prompts" in v["why"]
        and "the reward model and the verifier disagree" in v["why"]
    )
    # Greedy reward holds, sampled expected reward does not.
    r = results(rlhf={"reward": diff(1.0, 0.5, 1.5), "expected_reward": diff(0.1, -0.3, 0.5)})
    [v] = verdict.verdicts(r)
    assert v["word"] == "mixed" and v["why"].endswith("greedy and sampled replies disagree.")


def test_a_seeded_claim_whose_seed_interval_includes_zero_does_not_hold_and_its_mark_is_hollow():
    claim = seeded(0.3, 0.2, 0.4, [1.0, -0.4], -8.6, 9.2)
    r = results(rlhf={"reward": claim})
    [v] = verdict.verdicts(r)
    assert v["word"] == "does not hold"
    assert v["seeds"] == {"n": 2, "values": [1.0, -0.4], "ci": [-8.6, 9.2]}
    assert v["why"] == "Reward is better over prompts but not across seeds."
    assert v["line"] == (
        "rlhf vs sft (2 seeds): does not hold: reward +0.300 [+0.200, +0.400]; per seed +1.000, -0.400; "
        "across seeds +0.300 [-8.600, +9.200]: does not survive the seeds"
    )
    # The table's mark follows the same rule: over prompts, not across seeds.
    assert direction(r, "reward", claim) == "better_prompts"
    md = render_markdown(r, [])
    diffs = md.split("## Paired differences")[1].split("## ")[0]
    assert (
        "| rlhf | **+0.300 [+0.200, +0.400] △** |" in diffs and "over prompts but not across seeds" in diffs
    )
    # Seeds that agree: holds, and the full mark.
    good = seeded(0.5, 0.4, 0.6, [0.5, 0.52, 0.49], 0.45, 0.55)
    [v] = verdict.verdicts(results(rlhf={"reward": good}))
    assert v["word"] == "holds" and "survives the seeds" in v["line"]
    assert direction(results(rlhf={"reward": good}), "reward", good) == "better"


def test_sft_vs_base_reads_the_base_row_the_other_way():
    r = results(base={"verifier": diff(-0.5, -0.6, -0.4), "reward": diff(-2.0, -2.5, -1.5)})
    [v] = verdict.verdicts(r)
    assert v["claim"] == "sft vs base" and v["word"] == "holds"
    assert v["mean"] == 0.5 and v["ci"] == [0.4, 0.6]


def test_dpo_vs_rlhf_from_the_aggregated_pairs():
    n = 60
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 1.0, n)
    per_prompt = {"sft": {"reward": base.copy()}, "dpo": {"reward": base + 0.2 + rng.normal(0, 0.05, n)}}
    for i, shift in enumerate([1.0, 1.02, 0.98]):
        per_prompt[f"rlhf@ppo-seed{i + 1}"] = {"reward": base + shift + rng.normal(0.0, 0.05, n)}
    suite = Suite(
        rlhf_models={"rlhf": [f"runs/ppo-seed{i + 1}" for i in range(3)], "dpo": ["runs/dpo"]},
        variants=["sft", "rlhf"],
        metrics=["reward", "win_rate"],
    )
    boot = stats.Bootstrap(n, 500, suite.confidence, seed=0)
    paths = {"sft": "runs/sft", **rlhf_variants(suite)}
    out = aggregate(suite, per_prompt, boot, paths, Decoding(16), Decoding(16, 1.0, 1, 0))
    pair = out["pairs"]["dpo"]["rlhf"]["reward"]
    assert pair["ci_high"] < 0 and pair["seeds"]["n"] == 3 and pair["survives_seeds"] is True
    entries = {v["claim"]: v for v in verdict.verdicts(out)}
    assert list(entries) == ["dpo vs sft", "rlhf vs sft", "dpo vs rlhf"]  # in the variants' order
    assert entries["rlhf vs sft"]["word"] == "holds" and entries["dpo vs sft"]["word"] == "holds"
    worse = entries["dpo vs rlhf"]
    assert worse["word"] == "does not hold" and worse["mean"] == pytest.approx(-0.8, abs=0.05)
    assert worse["seeds"]["n"] == 3 and worse["why"] == "Reward is worse over prompts and across seeds."


def test_the_terminal_and_both_reports_show_the_same_lines():
    from hftune.evaluation.harness import EvalResult, summary

    r = results(
        base={"verifier": diff(-0.5, -0.6, -0.4)},
        rlhf={"verifier": seeded(0.12, 0.08, 0.16, [0.14, 0.12, 0.1], 0.07, 0.17), "reward": diff(1, 0.5, 2)},
        dpo={"verifier": diff(0.1, 0.05, 0.15), "reward": diff(-0.5, -0.8, -0.2)},
    )
    r["variants"]["dpo"] |= {"trained_against_reward_model": False, "reward_model_note": "never"}
    r["verdicts"] = verdict.verdicts(r)
    lines = [v["line"] for v in r["verdicts"]]
    assert [line.split(":")[0] for line in lines] == ["sft vs base", "rlhf vs sft (3 seeds)", "dpo vs sft"]
    assert "reward † -0.500" in lines[2]
    terminal = summary(EvalResult(Path("out"), r, [], None))
    md, page = render_markdown(r, []), render_html(r, [])
    assert max(map(len, terminal.splitlines())) <= 100
    for entry in r["verdicts"]:
        head, segments = verdict.parts(entry)
        item = f"{head}. {entry['why']} {' · '.join(segments)}"
        assert entry["line"] == f"{head}: {' · '.join(segments)}"  # the same words and numbers, broken up
        assert "\n".join(verdict.wrapped(entry, 100)) in terminal
        words = " ".join(verdict.wrapped(entry, 100)).replace("  - ", " ").split()
        assert words == item.replace(" · ", " ").split()
        assert f"\n- **{escape(head)}.** {escape(entry['why'])} {escape(' · '.join(segments))}\n" in md
        assert f"<li><b>{html.escape(head)}.</b> {html.escape(entry['why'])} " in page
        assert f"{html.escape(' · '.join(segments))}</li>" in page
    # The verdict comes first, with the rule the marks follow.
    assert md.index("## Verdict") < md.index("## Variants") and "△ / ▽" in md
    assert page.index("<h2>Verdict</h2>") < page.index("<h2>Variants</h2>")
    # A results.json written before the verdicts existed renders the same lines, computed on the fly.
    del r["verdicts"]
    for entry in verdict.verdicts(r):  # written before the entries kept their pieces: split from the line
        old = {k: v for k, v in entry.items() if k not in ("head", "segments")}
        assert verdict.parts(old) == (entry["head"], entry["segments"])
    again = render_markdown(r, [])
    assert all(escape(" · ".join(verdict.parts(e)[1])) in again for e in verdict.verdicts(r))
