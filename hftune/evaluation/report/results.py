"""Reading results.json: which variants and metrics there are, in the order every table lists them, and the
statistics and descriptions recorded for each. Nothing here computes a number results.json does not hold.

`win_rate` is the one column that is not a metric of results.json: it is each variant's win rate against
the baseline, read from the win-rate matrix, so it can sit in the metric tables next to the reward.
"""

from __future__ import annotations

import json
import math
from typing import Any

# Column order of every metric table (the reports, the terminal summary and the model card): what a reader
# asks first (is it better, by how much against the baseline), then the other outcome metrics, then cost /
# health metrics, then any metric this module does not know (alphabetically), so a new metric shows up
# without a change here.
METRIC_ORDER = (
    "reward",
    "win_rate",
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
# The terminal summary keeps to these so it stays readable.
HEADLINE = ("reward", "win_rate", "verifier", "exact_match", "kl_to_sft", "length", "eos_rate", "loop_rate")


# The metrics a reward model gives (its score and what is computed from it): where a variant never trained
# against that reward model, these cells carry CAVEAT_MARK and the table a footnote (`reward_caveats`).
REWARD_METRICS = ("reward", "win_rate", "expected_reward")
CAVEAT_MARK = "†"


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def variant_names(results: dict) -> list[str]:
    return list(results.get("variants") or {})


def seed_run_names(results: dict, variant: str) -> list[str]:
    """The runs of a variant trained with several seeds (results.json's `seed_runs`: `rlhf@ppo-seed1`, ...,
    the names its replies are stored under in samples.jsonl), [] for any other."""
    rows = ((results.get("variants") or {}).get(variant) or {}).get("seed_runs") or []
    return [str(row["run"]) for row in rows if isinstance(row, dict) and row.get("run")]


def baseline(results: dict) -> str | None:
    name = results.get("baseline")
    return name if name in (results.get("variants") or {}) else None


def baseline_win_rates(results: dict) -> dict[str, dict]:
    """variant -> P(variant beats the baseline), from the win-rate matrix."""
    name = baseline(results)
    if name is None:
        return {}
    rows = results.get("win_rates") or {}
    return {a: row[name] for a, row in rows.items() if isinstance(row, dict) and name in row}


def metric_names(results: dict) -> list[str]:
    """Every metric any variant has (and `win_rate` when there is a baseline to win against), known ones in
    METRIC_ORDER, then the rest alphabetically."""
    found = {m for v in (results.get("variants") or {}).values() for m in (v.get("metrics") or {})}
    if baseline_win_rates(results):
        found.add("win_rate")
    return [m for m in METRIC_ORDER if m in found] + sorted(found - set(METRIC_ORDER))


def diff_metric_names(results: dict) -> list[str]:
    """Every metric with a paired difference against the baseline, in the same order."""
    found = {m for v in (results.get("variants") or {}).values() for m in (v.get("vs_baseline") or {})}
    known = metric_names(results)
    return [m for m in known if m in found] + sorted(found - set(known))


def stat(results: dict, variant: str, metric: str) -> dict | None:
    """The {mean, ci_low, ci_high, n} of one cell."""
    if metric == "win_rate":
        return baseline_win_rates(results).get(variant)
    return ((results.get("variants") or {}).get(variant, {}).get("metrics") or {}).get(metric)


def info(results: dict, metric: str) -> dict:
    """What the harness recorded about a metric: decoding, higher_is_better, description."""
    if metric == "win_rate":
        reward = (results.get("metric_info") or {}).get("reward") or {}
        return {
            "decoding": reward.get("decoding", "greedy"),
            "higher_is_better": True,
            "description": f"P(reward of this variant's reply > {baseline(results)}'s), ties count half.",
        }
    return (results.get("metric_info") or {}).get(metric) or {}


def label(results: dict, metric: str) -> str:
    return f"win vs {baseline(results)}" if metric == "win_rate" else metric


def direction(results: dict, metric: str, difference: dict | None) -> str | None:
    """'better' / 'worse' for a difference whose CI excludes 0 (by the metric's direction), 'changed' when
    the metric has no preferred direction, None when the difference is not significant. A variant trained
    with several seeds claims a difference only when it also survives the seeds (`survives_seeds`): where it
    does not, the mark is the hollow one ('better_prompts', 'worse_prompts', 'changed_prompts': over prompts,
    not across seeds). The same rule as the verdicts (`evaluation/verdict.py`)."""
    if not difference or not (finite(difference.get("ci_low")) and finite(difference.get("ci_high"))):
        return None
    if difference["ci_low"] <= 0 <= difference["ci_high"]:
        return None
    higher = info(results, metric).get("higher_is_better")
    if higher is None:
        mark = "changed"
    else:
        mark = "better" if (difference["ci_low"] > 0) == bool(higher) else "worse"
    return (
        f"{mark}_prompts" if "seeds" in difference and difference.get("survives_seeds") is not True else mark
    )


def prompt_count(results: dict, fallback: int) -> str:
    """How many prompts were evaluated, and, when the suite repeated some, that they were evaluated once:
    "281 distinct prompts (300 rows, 19 repeats dropped)". Every interval is over these prompts."""
    n = results.get("n_prompts", fallback)
    duplicates = results.get("duplicates") or {}
    dropped = duplicates.get("n_dropped")
    if not dropped:
        return f"{n} prompts"
    return f"{n} distinct prompts ({duplicates.get('n_rows')} rows, {dropped} repeats dropped)"


def confidence(results: dict) -> str:
    level = (results.get("suite") or {}).get("confidence", 0.95)
    return f"{level:.0%}" if finite(level) else "95%"


def decoding_settings(results: dict) -> list[tuple[str, str]]:
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


def win_rate_names(results: dict) -> list[str]:
    """The rows (and columns) of the win-rate matrix, in variant order."""
    matrix = results.get("win_rates") or {}
    known = variant_names(results)
    return [n for n in known if n in matrix] + [n for n in matrix if n not in known]


def judged_pairs(results: dict) -> list[tuple[str, str, dict, dict | None]]:
    """(A, B, judge's P(A beats B), reward model's P(A beats B)) once per judged pair."""
    judge = results.get("judge") or {}
    seen: set[frozenset] = set()
    out = []
    for a, row in (judge.get("win_rates") or {}).items():
        for b, judged in (row or {}).items():
            if a == b or frozenset((a, b)) in seen:
                continue
            seen.add(frozenset((a, b)))
            out.append((a, b, judged, ((results.get("win_rates") or {}).get(a) or {}).get(b)))
    return out


def reward_caveats(results: dict) -> dict[str, str]:
    """variant -> why its reward-model scores need a caveat: the trained variants results.json records as
    not trained against the reward model scoring them (`trained_against_reward_model` false, or null when
    their lineage is not recorded). Variants without the flag (base, SFT, an older results.json) get none."""
    out = {}
    for name, variant in (results.get("variants") or {}).items():
        flagged = isinstance(variant, dict) and "trained_against_reward_model" in variant
        if flagged and variant["trained_against_reward_model"] is not True:
            out[name] = str(variant.get("reward_model_note") or "not trained against this reward model")
    return out


def caveat_footnote(results: dict, short: bool = False) -> str | None:
    """The footnote under a table whose reward cells carry CAVEAT_MARK (`short`: a reminder, for a table
    after the metrics table, whose footnote says it in full); None when no variant needs it."""
    caveats = reward_caveats(results)
    if not caveats:
        return None
    variants = results.get("variants") or {}
    never = [n for n in caveats if variants[n].get("trained_against_reward_model") is False]
    unknown = [n for n in caveats if n not in never]
    if short:
        return f"{CAVEAT_MARK} {_names(list(caveats))}: not trained against this reward model (see Metrics)."
    trained = [
        n for n, v in variants.items() if isinstance(v, dict) and v.get("trained_against_reward_model")
    ]
    parts = []
    if never:
        parts.append(f"{_names(never)} never trained against this reward model (read from the lineage)")
    if unknown:
        parts.append(f"whether {_names(unknown)} trained against it is not recorded")
    policy = f"{_names(trained)} {'was' if len(trained) == 1 else 'were'}" if trained else "a policy is"
    return (
        f"{CAVEAT_MARK} Reward-model scores (reward, win rates, expected reward): {'; '.join(parts)}, so "
        f"these replies are judged by a model their training never saw, while {policy} trained to raise "
        "exactly this score and may partly exploit the reward model. Weigh a reward gap between them against "
        "the verifier and reference metrics, which do not depend on the reward model."
    )


def _names(names: list[str]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
