"""The ranking section of an eval report: results.json's `ranking` (each variant's mean win rate against all
the others, its rank and rank interval) beside its raw and length-controlled win rates against the baseline
(`evaluation/rankings.py` computes them; nothing is recomputed here)."""

from __future__ import annotations

from hftune.evaluation.report.results import (
    CAVEAT_MARK,
    baseline,
    baseline_win_rates,
    caveat_footnote,
    confidence,
    finite,
    reward_caveats,
)
from hftune.evaluation.report.table import Cell, Section, Table, number, stat_cell

NOTE = (
    "Ranked by each variant's mean win rate against every other variant, with its {conf} CI; the rank "
    "interval is the range of its rank over the same bootstrap resamples. The length-controlled (LC) win "
    "rate is the win rate against {base} that a logistic fit of the wins on the length difference predicts "
    "at equal length (as AlpacaEval 2's); a positive length coefficient means longer replies won more, and "
    "an LC interval much wider than the raw one means few replies were of similar length (the LC win rate "
    "is then an extrapolation). All of it is the reward model's verdict on greedy replies."
)


def section(results: dict) -> Section | None:
    """The ranking table; None when results.json has no ranking (no reward model, or one variant)."""
    ranking = results.get("ranking")
    if not ranking:
        return None
    base = baseline(results)
    raw = baseline_win_rates(results)
    variants = results.get("variants") or {}
    caveats = reward_caveats(results)
    header = [
        Cell("rank", detail="interval"),
        Cell("variant"),
        Cell("mean win rate vs all others", higher_is_better=True),
        Cell(f"win vs {base}", higher_is_better=True),
        Cell(f"LC win vs {base}", higher_is_better=True, title="Length-controlled: at equal reply length"),
        Cell(
            "length coefficient",
            title="b1 of the fit: log-odds of winning per unit of tanh(length difference / its std)",
        ),
    ]
    rows = []
    for entry in ranking:
        name = entry["variant"]
        lc = (variants.get(name) or {}).get("lc_win_rate")
        rows.append(
            [
                _rank(entry),
                Cell(
                    name,
                    tag="baseline" if name == base else None,
                    note=CAVEAT_MARK if name in caveats else None,
                ),
                stat_cell(entry.get("score")),
                stat_cell(raw.get(name) if name != base else None),
                stat_cell(lc),
                Cell(number((lc or {}).get("length_coef"), 3, signed=True), number=True),
            ]
        )
    marked = any(row[1].note for row in rows)
    footnotes = [note] if marked and (note := caveat_footnote(results, short=True)) else []
    note = NOTE.format(conf=confidence(results), base=base or "the baseline")
    table = Table(header, rows, "stats", footnotes)
    return Section("rankings", "Ranking (reward model)", note=[Cell(note)], table=table)


def _rank(entry: dict) -> Cell:
    """The rank, with its interval ("1–2") below it."""
    low, high = ([*(entry.get("rank_ci") or []), None, None])[:2]
    ci = f"{low}–{high}" if finite(low) and finite(high) else None
    return Cell(str(entry.get("rank", "-")), number=True, ci=ci)
