"""The prompt browser of report.html: every evaluated prompt, one row each, with every variant's greedy reply
side by side, so a reader can find the prompts behind a mean (e.g. where the RLHF policy loses to SFT).

This builds what the browser shows from samples.jsonl, as plain text and numbers; `html` renders it as one
table whose rows are all in the page (so it reads without JavaScript) and whose inline script only sorts
and filters them by the paired reward difference reward(A) - reward(B) of two chosen variants, and by text
in the prompt. Nothing here computes more than that difference, which the script recomputes per choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hftune.evaluation.report.results import (
    baseline,
    caveat_footnote,
    finite,
    reward_caveats,
    variant_names,
)
from hftune.evaluation.report.sections import facts


@dataclass(frozen=True)
class Answer:
    """One variant's greedy reply to one prompt."""

    reward: float | None
    facts: list[str]  # reward, length, EOS, verifier
    response: str  # in full: the renderer folds a long one


@dataclass(frozen=True)
class Row:
    index: str
    prompt: str
    reference: str | None  # shown with the prompt when no variant is the reference itself
    answers: list[Answer | None]  # one per Browser.variants; None where that variant has no reply


@dataclass(frozen=True)
class Browser:
    variants: list[str]  # the reply columns, in results.json's order, then any only samples.jsonl names
    rewarded: list[int]  # the variants with a reward on some prompt: the choices for A and B
    a: int | None  # the pair compared when the page opens: an RLHF policy ...
    b: int | None  # ... against the baseline, where there are such
    rows: list[Row]
    # Per column: its rewards come from a reward model the variant never trained against (`caveat` says so).
    caveated: list[bool] = field(default_factory=list)
    caveat: str | None = None

    def difference(self, row: Row) -> float | None:
        """reward(A) - reward(B) on one prompt, for the page as it opens (the script recomputes it)."""
        if self.a is None or self.b is None:
            return None
        first, second = row.answers[self.a], row.answers[self.b]
        if first is None or second is None or first.reward is None or second.reward is None:
            return None
        return first.reward - second.reward


def browser(results: dict, samples: list[dict]) -> Browser | None:
    """Every prompt of samples.jsonl, in its order; None when there are none."""
    if not samples:
        return None
    known = variant_names(results)
    seen = {name for sample in samples for name in (sample.get("variants") or {})}
    names = [n for n in known if n in seen] + sorted(seen - set(known))
    kinds = {n: ((results.get("variants") or {}).get(n) or {}).get("kind") for n in names}
    references = {n for n in names if kinds[n] == "reference"}
    rows = [_row(sample, names, references) for sample in samples]
    rewarded = [
        i for i in range(len(names)) if any(r.answers[i] and r.answers[i].reward is not None for r in rows)
    ]
    a, b = _pair(results, names, kinds, rewarded)
    caveats = reward_caveats(results)
    # A seed run's column (`rlhf@ppo-seed1`) shares its variant's caveat.
    run_of = {
        str(run.get("run")): name
        for name, variant in (results.get("variants") or {}).items()
        if isinstance(variant, dict)
        for run in variant.get("seed_runs") or []
        if isinstance(run, dict)
    }
    caveated = [run_of.get(n, n) in caveats for n in names]
    return Browser(
        names, rewarded, a, b, rows, caveated, caveat_footnote(results, short=True) if any(caveated) else None
    )


def _row(sample: dict, names: list[str], references: set[str]) -> Row:
    replies = sample.get("variants") or {}
    reference = sample.get("reference")
    if reference is not None and references & set(replies):
        reference = None  # already a column
    return Row(
        index=str(sample.get("prompt_index", "?")),
        prompt="" if sample.get("prompt") is None else str(sample["prompt"]),
        reference=None if reference is None else str(reference),
        answers=[_answer(replies[n]) if isinstance(replies.get(n), dict) else None for n in names],
    )


def _answer(reply: dict) -> Answer:
    reward = reply.get("reward")
    response = reply.get("response")
    return Answer(
        reward=float(reward) if finite(reward) else None,
        facts=facts(reply),
        response="" if response is None else str(response),
    )


def _pair(
    results: dict, names: list[str], kinds: dict[str, str | None], rewarded: list[int]
) -> tuple[int | None, int | None]:
    """(A, B) as the page opens: the first RLHF policy (else the first other variant) against the baseline
    (else the first variant with a reward), so the default view answers "where does the policy lose?"."""
    if len(rewarded) < 2:
        return None, None
    base = baseline(results)
    b = names.index(base) if base in names and names.index(base) in rewarded else rewarded[0]
    others = [i for i in rewarded if i != b]
    a = next((i for i in others if kinds[names[i]] == "rlhf"), others[0])
    return a, b
