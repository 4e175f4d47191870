"""The answer an eval is run for, computed once: did SFT beat base, did each RL / preference-optimisation
variant beat SFT, did best-of-N, and did DPO beat the RL variant beside it, with what confidence.

Pure functions over results.json (nothing here touches a model). `claims` names the pairs; `verdicts` reads
their paired differences (`vs_baseline`, or `pairs` for a parent that is not the baseline, both computed by
`measures.aggregate` with the same bootstrap and `seeds.survives`) and writes one entry per claim:

    {"claim": "rlhf vs sft", "variant": "rlhf", "baseline": "sft", "metric": "verifier", "mean": 0.127,
     "ci": [lo, hi], "seeds": {"n": 3, "values": [...], "ci": [lo, hi]} or None,
     "word": "holds" | "does not hold" | "mixed", "why": "...", "line": "..."}

The rule (`RULE`) is the one the tables' marks follow (`report.results.direction`): a metric holds when its
prompt-level CI excludes 0 in the favourable direction and, for a seeded variant, its seed-level CI does too.
The headline metric is the verifier when the suite has one (ground truth a reward model cannot be gamed on),
else the reward; the others checked (`CHECKED`) must agree: when one holds and another does not, the word is
"mixed".
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

CHECKED = ("verifier", "reward", "expected_reward")
# Offline preference optimisation (compared with each online RL variant when both ran).
PREFERENCE = ("dpo", "ipo", "kto", "orpo", "simpo", "cpo")
REWARD_METRICS = ("reward", "expected_reward")
CAVEAT_MARK = "†"
RULE = (
    "A claim holds when the paired {conf} CI over prompts excludes 0 in the favourable direction and, for a "
    "variant trained with several seeds, the interval across seeds does too; every other metric checked "
    "(verifier, reward, expected reward) must agree, else the verdict is mixed. The marks in the tables "
    "follow the same rule: ▲ better, ▼ worse; △ / ▽ better / worse over prompts but not across seeds."
)


def is_preference(name: str) -> bool:
    return name.split("@")[0].split(":")[0].lower().startswith(PREFERENCE)


def claims(variants: dict[str, Any]) -> list[tuple[str, str]]:
    """(variant, parent) for every claim the evaluated variants allow, in reading order."""
    trained = [n for n, v in variants.items() if (v or {}).get("kind", n) == "rlhf"]
    out = [("sft", "base")] if {"sft", "base"} <= set(variants) else []
    if "sft" in variants:
        out += [(n, "sft") for n in trained]
        if "best_of_n" in variants:
            out.append(("best_of_n", "sft"))
    online = [n for n in trained if not is_preference(n)]
    out += [(p, r) for p in trained if is_preference(p) for r in online]
    return out


def differences(results: dict, variant: str, parent: str) -> dict[str, dict]:
    """metric -> the paired difference variant - parent recorded in results.json ({} when none is): the
    variant's `vs_baseline` when the parent is the baseline, the parent's negated when the variant is (sft vs
    base: the table's base row, read the other way), else `pairs`."""
    variants = results.get("variants") or {}
    if parent == results.get("baseline"):
        return (variants.get(variant) or {}).get("vs_baseline") or {}
    if variant == results.get("baseline"):
        reverse = (variants.get(parent) or {}).get("vs_baseline") or {}
        return {m: negated(d) for m, d in reverse.items() if isinstance(d, dict)}
    return ((results.get("pairs") or {}).get(variant) or {}).get(parent) or {}


def _minus(x: Any) -> Any:
    return -x if _finite(x) else x


def negated(diff: dict) -> dict:
    """b - a from a - b: the mean and every bound negated (a percentile interval of -x is minus that of x),
    the seed-level block too."""
    out = {**diff, "mean": _minus(diff.get("mean"))}
    out["ci_low"], out["ci_high"] = _minus(diff.get("ci_high")), _minus(diff.get("ci_low"))
    seeds = diff.get("seeds")
    if isinstance(seeds, dict):
        flipped = {**seeds, "mean": _minus(seeds.get("mean"))}
        flipped["ci_low"], flipped["ci_high"] = _minus(seeds.get("ci_high")), _minus(seeds.get("ci_low"))
        if seeds.get("method") == "welch":
            flipped["per_seed"], flipped["per_seed_other"] = (
                seeds.get("per_seed_other"),
                seeds.get("per_seed"),
            )
        else:
            flipped["per_seed"] = [_minus(x) for x in seeds.get("per_seed") or []]
        out["seeds"] = flipped
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def status(diff: dict, higher_is_better: bool | None = True) -> tuple[str, bool]:
    """('holds' | 'worse' | 'prompts only' | 'none', favourable) of one difference, by the rule above."""
    lo, hi = diff.get("ci_low"), diff.get("ci_high")
    if not (_finite(lo) and _finite(hi)) or lo <= 0 <= hi:
        return "none", False
    favourable = (lo > 0) == (higher_is_better is not False)
    if "seeds" in diff and diff.get("survives_seeds") is not True:
        return "prompts only", favourable
    return ("holds" if favourable else "worse"), favourable


def _reason(state: str, favourable: bool, seeded: bool) -> str:
    if state == "holds":
        return "better over prompts" + (" and across seeds" if seeded else "")
    if state == "worse":
        return "worse over prompts" + (" and across seeds" if seeded else "")
    if state == "prompts only":
        return f"{'better' if favourable else 'worse'} over prompts but not across seeds"
    return "not clearly different over prompts"


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def _why(word: str, parts: list[tuple[str, str, bool, bool]]) -> str:
    headline = parts[0][0]
    reasons = {m: _reason(s, f, seeded) for m, s, f, seeded in parts}
    if word == "holds":
        text = f"{headline} is {reasons[headline]}"
        others = [m for m, *_ in parts[1:]]
        if others:
            text += f", and {_join(others)} agree{'' if len(others) > 1 else 's'}"
    elif word == "does not hold":
        text = "; ".join(f"{m} is {reasons[m]}" for m, *_ in parts)
    else:
        ok = [m for m, s, *_ in parts if s == "holds"]
        bad = [m for m, s, *_ in parts if s != "holds"]
        text = f"{_join(ok)} {'hold' if len(ok) > 1 else 'holds'} but " + ", ".join(
            f"{m} is {reasons[m]}" for m in bad
        )
        greedy_vs_sampled = {"reward", "expected_reward"}
        if greedy_vs_sampled & set(ok) and greedy_vs_sampled & set(bad):
            text += ": greedy and sampled replies disagree"
        elif "verifier" in ok + bad and greedy_vs_sampled & set(ok + bad):
            text += ": the reward model and the verifier disagree"
    return text[0].upper() + text[1:] + "."


def _signed(x: Any) -> str:
    return f"{x:+.3f}" if _finite(x) else "-"


def _segment(metric: str, diff: dict, state: str, favourable: bool, mark: str) -> str:
    text = f"{metric}{mark} {_signed(diff.get('mean'))} [{_signed(diff.get('ci_low'))}, "
    text += f"{_signed(diff.get('ci_high'))}]"
    seeds = diff.get("seeds")
    if not seeds:
        return text + f": {_reason(state, favourable, False)}"
    if seeds.get("method") != "welch" and seeds.get("per_seed"):
        text += "; per seed " + ", ".join(_signed(x) for x in seeds["per_seed"])
    across = f"{_signed(seeds.get('mean'))} [{_signed(seeds.get('ci_low'))}, {_signed(seeds.get('ci_high'))}]"
    survives = "survives the seeds" if diff.get("survives_seeds") else "does not survive the seeds"
    return text + f"; across seeds {across}: {survives}"


def caveats(results: dict) -> set[str]:
    """Variants whose reward-model scores carry the caveat (`report.results.reward_caveats`)."""
    return {
        n
        for n, v in (results.get("variants") or {}).items()
        if isinstance(v, dict)
        and "trained_against_reward_model" in v
        and v["trained_against_reward_model"] is not True
    }


def verdict(results: dict, variant: str, parent: str) -> dict | None:
    """One claim's entry, or None when results.json has no difference for it."""
    diffs = differences(results, variant, parent)
    present = [m for m in CHECKED if isinstance(diffs.get(m), dict) and _finite(diffs[m].get("mean"))]
    if not present:
        return None
    info = results.get("metric_info") or {}
    marked = caveats(results) & {variant, parent}
    parts, segments = [], []
    for m in present:
        state, favourable = status(diffs[m], (info.get(m) or {}).get("higher_is_better", True))
        parts.append((m, state, favourable, "seeds" in diffs[m]))
        mark = f" {CAVEAT_MARK}" if marked and m in REWARD_METRICS else ""
        segments.append(_segment(m, diffs[m], state, favourable, mark))
    states = [s for _, s, *_ in parts]
    word = "holds" if all(s == "holds" for s in states) else "mixed" if "holds" in states else "does not hold"
    head = diffs[present[0]]
    seeds = head.get("seeds")
    # The claim's seed count: the headline's, else any metric's (a variant's runs all answer every metric).
    n = next((diffs[m]["seeds"].get("n") for m in present if isinstance(diffs[m].get("seeds"), dict)), None)
    claim = f"{variant} vs {parent}"
    title = f"{claim}{f' ({n} seeds)' if n else ''}: {word}"  # the verdict's head, before its segments
    return {
        "claim": claim,
        "variant": variant,
        "baseline": parent,
        "metric": present[0],
        "mean": float(head["mean"]),
        "ci": [head.get("ci_low"), head.get("ci_high")],
        "seeds": None
        if not seeds
        else {
            "n": seeds.get("n"),
            "values": [] if seeds.get("method") == "welch" else list(seeds.get("per_seed") or []),
            "ci": [seeds.get("ci_low"), seeds.get("ci_high")],
        },
        "word": word,
        "why": _why(word, parts),
        "head": title,
        "segments": segments,
        "line": f"{title}: " + " · ".join(segments),
    }


def verdicts(results: dict) -> list[dict]:
    """Every claim's entry, in the order of `claims`."""
    out = (verdict(results, v, p) for v, p in claims(results.get("variants") or {}))
    return [entry for entry in out if entry is not None]


def entries(results: dict) -> list[dict]:
    """The verdicts results.json holds, else computed now (an older results.json)."""
    recorded = results.get("verdicts")
    return recorded if isinstance(recorded, list) else verdicts(results)


def lines(results: dict) -> list[str]:
    """The verdict lines (`line` of each entry)."""
    return [v["line"] for v in entries(results)]


def parts(entry: dict) -> tuple[str, list[str]]:
    """An entry's line as its head ("rlhf vs sft (3 seeds): holds") and its segments, one per metric checked:
    the pieces every rendering shows (the terminal one per line, the reports in one item)."""
    if isinstance(entry.get("head"), str) and isinstance(entry.get("segments"), list):
        return entry["head"], [str(s) for s in entry["segments"]]
    # A results.json written before the entries kept their pieces: the line is head and segments joined.
    line, word = str(entry["line"]), str(entry.get("word", ""))
    head, found, rest = line.partition(f": {word}: ")
    return (f"{head}: {word}", rest.split(" · ")) if found and rest else (line, [])


def wrapped(entry: dict, width: int) -> list[str]:
    """One verdict for a terminal `width` columns wide: the head and why, then each metric's segment on its
    own indented lines; the words and numbers of `line`, only broken into lines."""
    head, segments = parts(entry)
    out = textwrap.wrap(f"{head}. {entry.get('why', '')}".strip(), width, subsequent_indent="    ")
    for segment in segments:
        out += _packed(segment.split("; "), width, "  - ", "      ")
    return out


def _packed(chunks: list[str], width: int, first: str, rest: str) -> list[str]:
    """`chunks` joined by "; ", broken between chunks (an interval is never split) while they fit."""
    out = [first + chunks[0]]
    for chunk in chunks[1:]:
        if len(out[-1]) + 2 + len(chunk) <= width:
            out[-1] += f"; {chunk}"
        else:
            out[-1] += ";"
            out.append(rest + chunk)
    return [line for text in out for line in textwrap.wrap(text, width, subsequent_indent=rest)]
