"""`hftune label stats DIR`: what was labelled, by whom, and how far labellers agree where they overlap.

Agreement is Kendall's tau-b between two labellers' rankings of the same item (1: the same order, -1: the
reverse, ties handled as tau-b does), averaged over the items they share, with a bootstrap CI over items.
Tau-b is a few lines here rather than a SciPy dependency for one formula.

People against a machine (each machine labeller of auto.jsonl, `hftune label auto`): per item, the mean
tau-b between the machine's ranking and each person's, averaged over the items both ranked, with the same
CI. And where items.json holds the reward model's `scores` (sampled with a `reward_model`): of the pairs
people ranked apart, how many the scores already order the same way. People's rankings, here and between
people, are their current answers (`store.current`: an undone ranking no longer counts).
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

from hftune.errors import UserError
from hftune.label import auto
from hftune.label import items as label_items
from hftune.label.store import LABELS_FILE, current, read_rows


def kendall_tau_b(a: list[float], b: list[float]) -> float | None:
    """Kendall's tau-b of two rankings of the same completions (None when either ranks all of them equal)."""
    concordant = discordant = ties_a = ties_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = (a[i] > a[j]) - (a[i] < a[j]), (b[i] > b[j]) - (b[i] < b[j])
        if da == 0 and db == 0:
            continue
        if da == 0:
            ties_a += 1
        elif db == 0:
            ties_b += 1
        elif da == db:
            concordant += 1
        else:
            discordant += 1
    denominator = ((concordant + discordant + ties_a) * (concordant + discordant + ties_b)) ** 0.5
    return (concordant - discordant) / denominator if denominator else None


def compute(folder: Path, *, confidence: float = 0.95, resamples: int = 2000) -> dict[str, Any]:
    import numpy as np

    from hftune.evaluation.stats import Bootstrap

    path = folder / LABELS_FILE if folder.is_dir() else folder
    if not path.is_file():
        raise UserError(f"{path}: no labels yet (`hftune label` writes {LABELS_FILE})")
    rows = read_rows(path)
    recorded = label_items.read(path.parent)
    # Counted on each labeller's current answers: an undone answer, or a skip answered again in the second
    # pass, is in the file (the full record) but no longer what the labeller says.
    answers = current(rows)
    by_status = Counter(a.row["status"] for mine in answers.values() for a in mine.values())
    flags = Counter(
        a.row.get("flag") for mine in answers.values() for a in mine.values() if a.row["status"] == "flagged"
    )
    per_labeller = {name: Counter(a.row["status"] for a in mine.values()) for name, mine in answers.items()}
    rankings: dict[str, dict[str, list[float]]] = {}  # item -> labeller -> ranks: current answers only
    for labeller, mine in answers.items():
        for item, answer in mine.items():
            if answer.row["status"] == "ranked":
                rankings.setdefault(item, {})[labeller] = answer.row["ranks"]
    pairs = sum(
        sum(1 for i, j in itertools.combinations(range(len(ranks)), 2) if ranks[i] != ranks[j])
        for by in rankings.values()
        for ranks in by.values()
    )
    taus = []  # per shared item: the mean tau over its labeller pairs
    for by in rankings.values():
        values = [kendall_tau_b(by[x], by[y]) for x, y in itertools.combinations(sorted(by), 2)]
        values = [v for v in values if v is not None]
        if values:
            taus.append(sum(values) / len(values))

    def mean_ci(values: list[float]) -> dict[str, float] | None:
        return Bootstrap(len(values), resamples, confidence).summary(np.asarray(values)) if values else None

    machines = {}
    for name, taus_with in machine_taus(rankings, auto.read(path.parent)).items():
        machines[name] = {"items": len(taus_with), "agreement_kendall_tau": mean_ci(taus_with)}
    return {
        "items": len(recorded["items"]) if recorded else None,
        "submissions": len(rows),  # every row of the file: answers, answers superseded, retractions
        "retracted": sum(r["status"] == "retracted" for r in rows),
        "ranked": by_status["ranked"],
        "skipped": by_status["skipped"],
        "flagged": by_status["flagged"],
        "flags": dict(flags),
        "pairs": pairs,
        "labellers": {name: dict(counts) for name, counts in sorted(per_labeller.items())},
        "shared_items": len(taus),
        "agreement_kendall_tau": mean_ci(taus),
        "machines": machines,
        "reward_model_pairs": reward_model_pairs(rankings, recorded),
        "confidence": confidence,
    }


def machine_taus(
    rankings: dict[str, dict[str, list[float]]], machine_rows: list[dict[str, Any]]
) -> dict[str, list[float]]:
    """Per machine labeller, per item both it and people ranked: the mean tau-b of its ranking against each
    person's (items where every tau is undefined, e.g. the machine tied all completions, are left out)."""
    out: dict[str, list[float]] = {}
    for r in machine_rows:
        people = rankings.get(r["item"], {})
        values = [kendall_tau_b(r["ranks"], ranks) for ranks in people.values()]
        values = [v for v in values if v is not None]
        taus = out.setdefault(auto.machine_name(r["machine"]), [])
        if values:
            taus.append(sum(values) / len(values))
    return out


def reward_model_pairs(
    rankings: dict[str, dict[str, list[float]]], recorded: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Of the pairs people ranked apart, how many the sampling-time reward model's scores order the same way
    (a higher score for the completion ranked better); None when the items were sampled without one."""
    scores = {item["id"]: item["scores"] for item in (recorded or {}).get("items", []) if "scores" in item}
    if not scores:
        return None
    pairs = agreed = tied = 0
    for item, by in rankings.items():
        if item not in scores:
            continue
        s = scores[item]
        for ranks in by.values():
            for i, j in itertools.combinations(range(len(ranks)), 2):
                if ranks[i] == ranks[j]:
                    continue
                better, worse = (i, j) if ranks[i] < ranks[j] else (j, i)
                pairs += 1
                agreed += s[better] > s[worse]
                tied += s[better] == s[worse]
    return {
        "reward_model": recorded["sampling"].get("reward_model"),
        "pairs": pairs,
        "agreed": agreed,
        "tied": tied,
    }


def render(stats: dict[str, Any]) -> str:
    total = f"items: {stats['items']}; " if stats["items"] is not None else ""
    flags = ", ".join(f"{n} {flag}" for flag, n in sorted(stats["flags"].items()))
    lines = [
        f"{total}answers now: {stats['ranked']} ranked, {stats['skipped']} skipped, "
        f"{stats['flagged']} flagged"
        + (f" ({flags})" if flags else "")
        + f"; {stats['submissions']} rows in the file ({stats.get('retracted', 0)} undone)",
        f"training pairs: {stats['pairs']} (every untied pair of each ranking)",
        "labellers:",
    ]
    for name, counts in stats["labellers"].items():
        parts = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ranked", "skipped", "flagged"))
        lines.append(f"  {name}: {parts}")
    a = stats["agreement_kendall_tau"]
    if a is None:
        lines.append("agreement: no item ranked by two labellers yet")
    else:
        level = round(100 * stats["confidence"])
        lines.append(
            f"agreement (Kendall's tau-b on {stats['shared_items']} shared items): {a['mean']:.3f} "
            f"[{a['ci_low']:.3f}, {a['ci_high']:.3f}], {level}% bootstrap CI (1 = same order, 0 = unrelated)"
        )
    lines += render_machines(stats)
    return "\n".join(lines)


def render_machines(stats: dict[str, Any]) -> list[str]:
    level = round(100 * stats["confidence"])
    lines = []
    for name, m in stats["machines"].items():
        a = m["agreement_kendall_tau"]
        if a is None:
            lines.append(f"people vs {name}: no item ranked by both yet")
        else:
            lines.append(
                f"people vs {name} (Kendall's tau-b on {m['items']} items both ranked): {a['mean']:.3f} "
                f"[{a['ci_low']:.3f}, {a['ci_high']:.3f}], {level}% bootstrap CI"
            )
    p = stats["reward_model_pairs"]
    if p is not None and p["pairs"]:
        lines.append(
            f"the reward model {p['reward_model']} already orders {p['agreed']} of the {p['pairs']} pairs "
            f"people ranked apart the same way ({100 * p['agreed'] / p['pairs']:.0f}%; "
            f"{p['tied']} scored equal)"
        )
    return lines
