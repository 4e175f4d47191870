"""`synthetic.verify_answer`: right on every generated answer, wrong on answers that change the result.

Prompts are rendered by the real converters (hftune.data), so the verifier reads exactly the user message a
model is trained and evaluated on, including alpaca's split forms where the operand moves to `input`.
"""

from __future__ import annotations

import random

import pytest
from synthetic import (
    _split_instruction,
    alpaca_rows,
    corrupt_answer,
    dolly_rows,
    preference_rows,
    ultrachat_rows,
)

from hftune.data import CONVERTERS
from hftune.evaluation.verifiers import verify_answer


def _user_message(converter: str, row: dict) -> tuple[str, str]:
    """(user message, assistant reply) as the converter renders the row."""
    spec = CONVERTERS[converter]
    user, assistant = spec.fn(row, spec.columns)
    return user["content"], assistant["content"]


def _alpaca_with_split_forms(n: int, seed: int) -> list[dict]:
    """`n` alpaca rows plus, for every direct-form row that has one, its split form."""
    rows = alpaca_rows(n, seed=seed)
    extra = []
    for row in rows:
        split = None if row["input"] else _split_instruction(row["instruction"])
        if split:
            extra.append({"instruction": split[0], "input": split[1], "output": row["output"]})
    return rows + extra


def test_every_generated_alpaca_answer_is_right():
    rows = _alpaca_with_split_forms(300, seed=21)
    n_split = 0
    for row in rows:
        prompt, reply = _user_message("alpaca", row)
        n_split += "\n\n" in prompt
        assert verify_answer(prompt, reply) == 1.0, (prompt, reply)
    assert n_split > 150  # the split forms were really exercised


def test_dolly_and_chat_first_turns_are_right():
    for row in dolly_rows(200, seed=22):  # includes the expression-in-context closed_qa form
        prompt, reply = _user_message("dolly", row)
        assert verify_answer(prompt, reply) == 1.0, (prompt, reply)
    for row in ultrachat_rows(100, seed=23):
        turns = [m for m in row["messages"] if m["role"] != "system"]
        assert verify_answer(turns[0]["content"], turns[1]["content"]) == 1.0
    for row in preference_rows(100, seed=24):
        assert verify_answer(row["prompt"], row["chosen"][1]["content"]) == 1.0


def _kind(prompt: str) -> str:
    if "capital" in prompt:
        return "capital"
    for prefix, kind in (
        ("What is", "arithmetic"),
        ("Compute", "arithmetic"),
        ("Reverse", "reverse"),
        ("How many", "count"),
        ("Which is larger", "compare"),
        ("Sort", "sort"),
    ):
        if prompt.startswith(prefix):
            return kind
    raise AssertionError(prompt)


# Corruptions that always change the answer itself, per task. The others need not: a loop or a shuffle of
# "Paris" still names Paris, a cut-off "154 is larger" still says which is larger, and only numbers can
# be made wrong by wrong_number (it falls back to a loop elsewhere).
ANSWER_CHANGING = {
    "arithmetic": ("wrong_number",),
    "count": ("wrong_number",),
    "sort": ("wrong_number", "shuffle_words", "truncate", "loop"),
}


def test_corruptions_that_change_the_answer_are_wrong():
    rng = random.Random(25)
    checked = dict.fromkeys(ANSWER_CHANGING, 0)
    for row in _alpaca_with_split_forms(300, seed=26):
        prompt, reply = _user_message("alpaca", row)
        kind = _kind(prompt)
        for how in ANSWER_CHANGING.get(kind, ()):
            bad = corrupt_answer(reply, rng, how)
            assert verify_answer(prompt, bad) == 0.0, (prompt, how, bad)
            checked[kind] += 1
    assert min(checked.values()) > 40


@pytest.mark.parametrize(
    ("prompt", "response"),
    [
        ("What is 5 - 9?", "5 - 9 = -4."),
        ("What is 5 - 9?", "The answer is −4"),  # a Unicode minus
        ("What is 5 - 9?", "5-9=-4"),
        ("What is 7 * 6?", "42"),
        ("What is 7 * 6?", "Multiplying gives 42.0."),
        ("Compute the result of this expression.\n\n12 + 30", "It comes to 42."),
        ("Reverse the word 'apple'.", "elppa"),
        ("Reverse the word 'apple'.", "Reversed, 'apple' reads ELPPA."),
        ("Reverse the following word.\n\nrocket", "tekcor"),
        ("How many times does the letter 'a' appear in 'banana'?", "3"),
        ("How many times does the letter 'a' appear in 'banana'?", "It appears three times in 'banana'."),
        ("How many times does the letter 'p' appear in 'apple'?", "'p' appears twice."),
        ("What is the capital of France?", "paris!"),
        ("What is the capital of India?", "It is New Delhi."),
        ("Which is larger, 37 or 154?", "154."),
        ("Which is larger, 154 or 37?", "154 is larger than 37."),
        ("Sort these numbers in ascending order: 9, 3, 41.", "3, 9, 41"),
        ("Sort the numbers in ascending order.\n\n9, 3, 41", "Sorted: 3 - 9 - 41."),
    ],
)
def test_lenient_about_wording(prompt, response):
    assert verify_answer(prompt, response) == 1.0


@pytest.mark.parametrize(
    ("prompt", "response"),
    [
        ("What is 5 - 9?", "5 - 9 = 4."),  # the sign matters
        ("What is 5 - 9?", "-4 is what you would get if you computed 5 - 9"),  # the last number is the answer
        ("What is 7 * 6?", "I do not know."),
        ("What is 7 * 6?", ""),
        ("Compute the result of this expression.\n\n12 + 30", "12 + 30 = 43."),
        ("Reverse the word 'apple'.", "The reverse of 'apple' is 'apple'."),
        ("Reverse the word 'apple'.", "elppas"),  # not as a word
        ("Reverse the following word.\n\nrocket", "rekcot"),
        ("How many times does the letter 'a' appear in 'banana'?", "2 times."),
        ("How many times does the letter 'a' appear in 'banana'?", "Twice, not 3 times."),  # the first count
        ("What is the capital of France?", "Lyon."),
        ("What is the capital of France?", "Berlin, Paris or Rome."),  # a list of capitals is no answer
        ("What is the capital of India?", "Delhi"),
        ("Which is larger, 37 or 154?", "37 is smaller than 154."),  # the first number is the larger one
        ("Which is larger, 154 or 37?", "37"),
        ("Sort these numbers in ascending order: 9, 3, 41.", "41, 9, 3"),
        ("Sort these numbers in ascending order: 9, 3, 41.", "3, 9"),
        ("Sort these numbers in ascending order: 9, 3, 41.", "9, 3, 41 -> 3, 9, 41"),  # just the list
    ],
)
def test_strict_about_the_answer(prompt, response):
    assert verify_answer(prompt, response) == 0.0


def test_the_reference_is_not_trusted():
    prompt = "What is 12 + 30?"
    assert verify_answer(prompt, "42", reference="12 + 30 = 43.") == 1.0
    assert verify_answer(prompt, "43", reference="43") == 0.0


@pytest.mark.parametrize(
    "prompt",
    [
        "Tell me a joke.",
        "Now add 5 to that.",  # multi-turn follow-ups are not supported
        "And the word 'apple'?",
        "What is the capital of Atlantis?",  # not in the table: nothing to check against
        "What is 2 / 3?",
        "",
    ],
)
def test_an_unknown_prompt_raises(prompt):
    with pytest.raises(ValueError, match="not a synthetic task prompt"):
        verify_answer(prompt, "42")
