"""The prompt browser of report.html: every evaluated prompt, one row each, with every variant's greedy reply
side by side, so a reader can find the prompts behind a mean (e.g. where the RLHF policy loses to SFT).

This builds what the browser shows from samples.jsonl, as plain text and numbers; `html` renders it as one
table whose rows are all in the page (so it reads without JavaScript) and whose inline script only sorts
and filters them by the paired reward difference reward(A) - reward(B) of two chosen variants, and by text
in the prompt. Nothing here computes more than that difference, which the script recomputes per choice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hftune.evaluation.report.results import (
    baseline,
    caveat_footnote,
    finite,
    reward_caveats,
    seed_run_names,
    variant_names,
)
from hftune.evaluation.report.sections import facts
from hftune.evaluation.report.table import number


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
    seeded: bool = False  # some column is a seeded variant's seed mean

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
    runs = _seed_runs(results)
    seen = {name for sample in samples for name in (sample.get("variants") or {})}
    names = _columns(results, runs, seen)
    kinds = {n: ((results.get("variants") or {}).get(n) or {}).get("kind") for n in names}
    references = {n for n in names if kinds[n] == "reference"}
    rows = [_row(sample, names, references, runs) for sample in samples]
    rewarded = [
        i for i in range(len(names)) if any(r.answers[i] and r.answers[i].reward is not None for r in rows)
    ]
    a, b = _pair(results, names, kinds, rewarded)
    caveats = reward_caveats(results)
    # A seed run's column (`rlhf@ppo-seed1`) shares its variant's caveat.
    run_of = {run: name for name, members in runs.items() for run in members}
    caveated = [run_of.get(n, n) in caveats for n in names]
    labels = [f"{n} (mean of {len(runs[n])} seeds)" if n in runs else n for n in names]
    return Browser(
        labels,
        rewarded,
        a,
        b,
        rows,
        caveated,
        caveat_footnote(results, short=True) if any(caveated) else None,
        seeded=any(n in runs for n in names),
    )


def _seed_runs(results: dict) -> dict[str, list[str]]:
    """variant -> the names of its seed runs, for the variants trained with several seeds: their replies are
    stored under the run names only."""
    runs = {name: seed_run_names(results, name) for name in variant_names(results)}
    return {name: members for name, members in runs.items() if members}


def _columns(results: dict, runs: dict[str, list[str]], seen: set[str]) -> list[str]:
    """The reply columns: results.json's variants in order, a seeded variant as its seed-mean column
    followed by each of its runs, then any name only samples.jsonl has."""
    out = []
    for name in variant_names(results):
        members = [r for r in runs.get(name, []) if r in seen]
        if members:
            out += [name, *members]
        elif name in seen:
            out.append(name)
    return out + sorted(seen - set(out))


def _row(sample: dict, names: list[str], references: set[str], runs: dict[str, list[str]]) -> Row:
    replies = sample.get("variants") or {}
    reference = sample.get("reference")
    if reference is not None and references & set(replies):
        reference = None  # already a column
    answers = []
    for name in names:
        if name in runs:
            answers.append(_seed_mean([replies.get(r) for r in runs[name]]))
        else:
            answers.append(_answer(replies[name]) if isinstance(replies.get(name), dict) else None)
    return Row(
        index=str(sample.get("prompt_index", "?")),
        prompt="" if sample.get("prompt") is None else str(sample["prompt"]),
        reference=None if reference is None else str(reference),
        answers=answers,
    )


def _seed_mean(replies: list) -> Answer | None:
    """A seeded variant's column: its reward is the mean over the runs' rewards (what its metrics and the
    paired differences use per prompt), its facts say how many runs got it right, and its text lists the
    distinct replies with how many runs gave each, so a reader sees at once whether the seeds agree."""
    replies = [r for r in replies if isinstance(r, dict)]
    if not replies:
        return None
    rewards = [float(r["reward"]) for r in replies if finite(r.get("reward"))]
    reward = sum(rewards) / len(rewards) if rewards else None
    out = [f"mean reward {number(reward, 3)}"] if reward is not None else []
    verified = [r["verified"] for r in replies if finite(r.get("verified"))]
    if verified:
        out.append(f"{sum(v >= 1 for v in verified)} of {len(verified)} seeds correct")
    texts = Counter("" if r.get("response") is None else str(r["response"]) for r in replies)
    if len(texts) == 1:
        out.append(f"the {len(replies)} seeds reply alike")
        response = next(iter(texts))
    else:
        response = "\n".join(f"×{count}: {text}" for text, count in texts.most_common())
    return Answer(reward=reward, facts=out, response=response)


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
