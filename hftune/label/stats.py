"""`hftune label stats DIR`: what was labelled, by whom, and how far labellers agree where they overlap.

Agreement is Kendall's tau-b between two labellers' rankings of the same item (1: the same order, -1: the
reverse, ties handled as tau-b does), averaged over the items they share, with a bootstrap CI over items.
Tau-b is a few lines here rather than a SciPy dependency for one formula.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

from hftune.errors import UserError
from hftune.label import items as label_items
from hftune.label.store import LABELS_FILE, read_rows


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
    by_status = Counter(r["status"] for r in rows)
    flags = Counter(r.get("flag") for r in rows if r["status"] == "flagged")
    per_labeller: dict[str, Counter] = {}
    for r in rows:
        per_labeller.setdefault(r["labeller"], Counter())[r["status"]] += 1
    rankings: dict[str, dict[str, list[float]]] = {}  # item -> labeller -> ranks
    for r in rows:
        if r["status"] == "ranked":
            rankings.setdefault(r["item"], {})[r["labeller"]] = r["ranks"]
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
    agreement = None
    if taus:
        agreement = Bootstrap(len(taus), resamples, confidence).summary(np.asarray(taus))
    return {
        "items": len(recorded["items"]) if recorded else None,
        "submissions": len(rows),
        "ranked": by_status["ranked"],
        "skipped": by_status["skipped"],
        "flagged": by_status["flagged"],
        "flags": dict(flags),
        "pairs": pairs,
        "labellers": {name: dict(counts) for name, counts in sorted(per_labeller.items())},
        "shared_items": len(taus),
        "agreement_kendall_tau": agreement,
        "confidence": confidence,
    }


def render(stats: dict[str, Any]) -> str:
    total = f"items: {stats['items']}; " if stats["items"] is not None else ""
    flags = ", ".join(f"{n} {flag}" for flag, n in sorted(stats["flags"].items()))
    lines = [
        f"{total}submissions: {stats['submissions']} ({stats['ranked']} ranked, {stats['skipped']} skipped, "
        f"{stats['flagged']} flagged" + (f": {flags}" if flags else "") + ")",
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
    return "\n".join(lines)
