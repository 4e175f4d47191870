"""Task verifiers for eval suites (`verifier: module:function`).

`verify_answer` checks answers to the built-in synthetic tasks that the tiny fixtures and the quickstart
train on (arithmetic, string reversal, letter counting, capitals from a fixed table, comparing numbers,
sorting). It lives in the package because eval suites name it at run time
(`verifier: hftune.evaluation.verifiers:verify_answer`); the fixture generator (`tests/synthetic.py`)
takes its capitals table from here, so generated questions and the checker agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# A small fixed table: answers must be checkable without any external knowledge source.
CAPITALS = (
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("Canada", "Ottawa"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Poland", "Warsaw"),
    ("Greece", "Athens"),
    ("Ireland", "Dublin"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("India", "New Delhi"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Cuba", "Havana"),
    ("Argentina", "Buenos Aires"),
)


# --- verifying answers: solve the task from the prompt, then check the response ---------------------------
#
# The evaluator's `verifier` metric (and any reward that checks correctness) calls `verify_answer`. It
# re-solves each task from the prompt rather than trusting a reference column, so a misaligned reference
# cannot turn a wrong answer right; it is lenient about wording and strict about the answer.

_CAPITAL_OF = dict(CAPITALS)
_EXPR = r"(\d+) ([-+*]) (\d+)"
_LIST = r"(\d+(?:, \d+)*)"
# One pattern per task form, matched against the whole prompt with whitespace collapsed (the split forms
# join instruction and input with a blank line: the alpaca/dolly converters in hftune.data.converters).
# Each solver returns a checker for the response.
_TASK_FORMS: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), kind)
    for pattern, kind in (
        (rf"What is {_EXPR}\?", "arithmetic"),
        (rf"Compute the result of this expression\. {_EXPR}", "arithmetic"),
        # dolly's closed_qa form: the expression lives in the context.
        (rf"What is the value of the expression on the board\? A student wrote the expression {_EXPR} "
         r"on the board\.", "arithmetic"),
        (r"Reverse the word '([A-Za-z]+)'\.", "reverse"),
        (r"Reverse the following word\. '?([A-Za-z]+)'?\.?", "reverse"),
        (r"How many times does the letter '([A-Za-z])' appear in '([A-Za-z]+)'\?", "count"),
        (r"What is the capital of ([A-Za-z ]+)\?", "capital"),
        (r"Which is larger, (-?\d+) or (-?\d+)\?", "compare"),
        (rf"Sort these numbers in ascending order: {_LIST}\.", "sort"),
        (rf"Sort the numbers in ascending order\. {_LIST}\.?", "sort"),
    )
)  # fmt: skip
# A minus sign only when it is glued to the number and not to a word or digit before it: "12-5" is 12 and
# 5, "= -7" is -7, "- 7" (a bullet, or "a - b") is 7.
_NUMBER = re.compile(r"(?:(?<![A-Za-z0-9])-)?\d+(?:\.\d+)?")
# Counts are small; "appears twice" is as right as "appears 2 times".
_COUNT_WORDS = {
    word: n
    for n, words in enumerate(
        ("zero|no", "one|once", "two|twice", "three|thrice", "four", "five", "six", "seven", "eight", "nine")
    )
    for word in words.split("|")
}
_COUNT = re.compile(rf"\b(\d+|{'|'.join(w for w in _COUNT_WORDS if w != 'no')})\b", re.IGNORECASE)


def _numbers(text: str) -> list[float]:
    return [float(m) for m in _NUMBER.findall(text.replace("\u2212", "-"))]


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", text, re.IGNORECASE) is not None


def _first_capital(text: str) -> str | None:
    """The capital from CAPITALS that `text` names first (a list of every capital is not an answer)."""
    found = []
    for city in _CAPITAL_OF.values():
        m = re.search(rf"(?<![A-Za-z]){re.escape(city)}(?![A-Za-z])", text, re.IGNORECASE)
        if m:
            found.append((m.start(), city))
    return min(found)[1] if found else None


def _solve(prompt: str) -> tuple[str, object]:
    """(task kind, its answer) for a first-turn prompt; ValueError if it is not one of the tasks."""
    text = " ".join(prompt.split())
    for pattern, kind in _TASK_FORMS:
        m = pattern.fullmatch(text)
        if not m:
            continue
        if kind == "arithmetic":
            a, op, b = int(m[1]), m[2], int(m[3])
            return kind, {"+": a + b, "-": a - b, "*": a * b}[op]
        if kind == "reverse":
            return kind, m[1][::-1]
        if kind == "count":
            return kind, m[2].lower().count(m[1].lower())
        if kind == "capital":
            country = next((c for c in _CAPITAL_OF if c.lower() == m[1].strip().lower()), None)
            if country is None:
                break  # not a country of the table: there is nothing to check the answer against
            return kind, _CAPITAL_OF[country]
        if kind == "compare":
            return kind, max(int(m[1]), int(m[2]))
        return kind, sorted(int(x) for x in m[1].split(", "))
    raise ValueError(f"not a synthetic task prompt (or a follow-up turn, which is not supported): {prompt!r}")


def _said_count(response: str) -> int | None:
    first = _COUNT.search(response)
    if not first:
        return None
    said = first[1].lower()
    return int(said) if said.isdigit() else _COUNT_WORDS[said]


_CHECKS: dict[str, Callable[[str, object], bool]] = {
    "arithmetic": lambda r, result: (nums := _numbers(r)) != [] and nums[-1] == result,
    "reverse": lambda r, backwards: _has_word(r, backwards),
    "count": lambda r, count: _said_count(r) == count,
    "capital": lambda r, city: _first_capital(r) == city,
    "compare": lambda r, larger: (nums := _numbers(r)) != [] and nums[0] == larger,
    # Unsigned: a dash between numbers ("3 - 5 - 9") is a separator, not a sign.
    "sort": lambda r, ordered: [int(x) for x in re.findall(r"\d+", r)] == ordered,
}


def verify_answer(prompt: str, response: str, reference: str | None = None) -> float:
    """1.0 if `response` gives the correct answer to the synthetic task in `prompt` (the user message),
    else 0.0. Solves the task from the prompt itself (does not trust `reference`), so it checks a model's
    answer, not its wording.

    Every first-turn form is understood: the direct questions, alpaca's split forms (instruction, blank
    line, input) and dolly's expression-on-the-board context. A prompt it cannot read (a follow-up turn,
    another dataset) raises ValueError: scoring it 0.0 would silently count it as a wrong answer. Rules:
    arithmetic, the last number is the result; reversal, the reversed word appears as a word; counting,
    the first number (digits, or a word such as "twice") is the count; capital, the first capital named is
    the right one; comparison, the first number is the larger one; sorting, the numbers in the response
    are exactly the sorted list.
    """
    del reference  # by design: see the docstring
    kind, answer = _solve(prompt)
    return 1.0 if _CHECKS[kind](response, answer) else 0.0


# --- tagging prompts with a task (a suite's `tasks: module:function`) -------------------------------------

_COMPARE = next(pattern for pattern, kind in _TASK_FORMS if kind == "compare")


def larger_position(prompt: str, reference: str | None = None) -> str:
    """The family of a compare prompt ("Which is larger, a or b?"): `first larger`, `second larger` (or
    `equal`) by where the larger number stands; any other prompt is `other`. For the per-task subtotals of
    the biased suite: its demonstrator names the first number 60% of the time, so SFT is right more often
    when the first is larger, and what RLHF has to fix shows up in the `second larger` family."""
    del reference  # the family is read from the question alone
    m = _COMPARE.fullmatch(" ".join(prompt.split()))
    if not m:
        return "other"
    first, second = int(m[1]), int(m[2])
    return "first larger" if first > second else "second larger" if second > first else "equal"
