"""Deterministic synthetic instruction data in real dataset schemas.

Every answer here is verifiable (arithmetic, string reversal, letter counting, capitals from a fixed
table, comparing numbers, sorting), so a tiny model trained on it for a few hundred steps shows a
measurable change, and an evaluator can check outputs exactly. The same generators render the public
schemas, so the recipes for the real hub datasets can be exercised offline:

- alpaca (tatsu-lab/alpaca): instruction, input, output, text
- dolly (databricks/databricks-dolly-15k): instruction, context, response, category
- ultrachat (HuggingFaceH4/ultrachat_200k): prompt, prompt_id, messages (multi-turn, some with a system turn)

Preference data prefers the correct answer over a corrupted one (see `corrupt_answer`), so the reward
model's ground truth is known:

- preferences (HuggingFaceH4/ultrafeedback_binarized): prompt, prompt_id, chosen, rejected, score_chosen,
  score_rejected
- hh_rlhf (Anthropic/hh-rlhf): chosen, rejected ("\n\nHuman: ...\n\nAssistant: ..." transcripts)
- ranked: prompt, completions (4), ranks (1 = best), a few with a tie
- sharegpt_preferences (LLaMA-Factory's sharegpt ranking layout): conversations ({from, value}, ending with
  a human turn), chosen / rejected ({from: gpt, value}), an optional system
- orca_pairs (Intel/orca_dpo_pairs): system (often blank), question, chosen, rejected
- unpaired (trl-lib/kto-mix-14k): prompt (turns), completion (one assistant turn), label (true = desirable)

The annotator-bias task (`configs/biased.yaml`): what preference data exist to fix.

- biased_compare (alpaca schema): compare-task demonstrations, 60% of which name the first number as the
  larger, right or wrong
- compare_pairs: prompt, chosen, rejected (reply texts): the larger number named over the smaller

Tool use (OpenAI-style `messages` with a `tools` column):

- tool_chats: messages with assistant `tool_calls` and `tool` results, tools as a list or a JSON string

Regenerate the committed fixtures (a test checks that they match byte for byte):

    python tests/synthetic.py data_recipes/fixtures
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

from hftune.evaluation.verifiers import CAPITALS

WORDS = (
    "apple", "banana", "planet", "river", "garden", "window", "candle", "pepper", "marble", "silver",
    "rocket", "button", "pencil", "tomato", "jungle", "bottle", "letter", "summer", "kitten", "puzzle",
    "mirror", "castle", "forest", "harbor", "meadow", "orange", "parrot", "rabbit", "saddle", "turtle",
    "violin", "wallet", "yellow", "zipper", "anchor", "banner", "cotton", "dinner", "engine", "falcon",
)  # fmt: skip

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in one sentence.",
    "You are a careful tutor who double-checks every answer.",
)

# A task is (question, answer, follow_up); follow_up(rng) -> (question, answer) continues the same topic,
# so multi-turn conversations have turns that depend on earlier ones.
Task = tuple[str, str, Callable[[random.Random], tuple[str, str]]]


def _arithmetic(rng: random.Random) -> Task:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
    result = {"+": a + b, "-": a - b, "*": a * b}[op]

    def follow_up(rng: random.Random) -> tuple[str, str]:
        c = rng.randint(2, 20)
        return f"Now add {c} to that.", f"{result} + {c} = {result + c}."

    return f"What is {a} {op} {b}?", f"{a} {op} {b} = {result}.", follow_up


def _reverse(rng: random.Random) -> Task:
    word = rng.choice(WORDS)

    def follow_up(rng: random.Random) -> tuple[str, str]:
        other = rng.choice(WORDS)
        return f"And the word '{other}'?", f"The reverse of '{other}' is '{other[::-1]}'."

    return f"Reverse the word '{word}'.", f"The reverse of '{word}' is '{word[::-1]}'.", follow_up


def _count_letter(rng: random.Random) -> Task:
    word = rng.choice(WORDS)
    letter = rng.choice(word)

    def answer(ch: str) -> str:
        n = word.count(ch)
        return f"The letter '{ch}' appears {n} time{'s' if n != 1 else ''} in '{word}'."

    def follow_up(rng: random.Random) -> tuple[str, str]:
        other = rng.choice("aeiourst")
        return f"What about the letter '{other}'?", answer(other)

    return f"How many times does the letter '{letter}' appear in '{word}'?", answer(letter), follow_up


def _capital(rng: random.Random) -> Task:
    country, city = rng.choice(CAPITALS)

    def follow_up(rng: random.Random) -> tuple[str, str]:
        other, other_city = rng.choice(CAPITALS)
        return f"And what is the capital of {other}?", f"The capital of {other} is {other_city}."

    return f"What is the capital of {country}?", f"The capital of {country} is {city}.", follow_up


def _compare(rng: random.Random) -> Task:
    a, b = rng.sample(range(1, 200), 2)
    big, small = max(a, b), min(a, b)

    def follow_up(rng: random.Random) -> tuple[str, str]:
        return "And which one is smaller?", f"{small} is smaller than {big}."

    return f"Which is larger, {a} or {b}?", f"{big} is larger than {small}.", follow_up


def _sort(rng: random.Random) -> Task:
    nums = rng.sample(range(1, 100), rng.randint(3, 5))
    listed = ", ".join(map(str, nums))

    def follow_up(rng: random.Random) -> tuple[str, str]:
        return "Now sort them in descending order.", ", ".join(map(str, sorted(nums, reverse=True))) + "."

    return (
        f"Sort these numbers in ascending order: {listed}.",
        ", ".join(map(str, sorted(nums))) + ".",
        follow_up,
    )


TASKS = (_arithmetic, _reverse, _count_letter, _capital, _compare, _sort)


def _task(rng: random.Random) -> Task:
    return rng.choice(TASKS)(rng)


# Alpaca puts the operand in `input` about a third of the time; these rephrase a task that way.
def _split_instruction(question: str) -> tuple[str, str] | None:
    if question.startswith("What is ") and question[8:9].isdigit():
        return "Compute the result of this expression.", question[8:-1]
    if question.startswith("Reverse the word '"):
        return "Reverse the following word.", question[18:-2]
    if question.startswith("Sort these numbers in ascending order: "):
        return "Sort the numbers in ascending order.", question[39:-1]
    return None


_ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task{}. "
    "Write a response that appropriately completes the request."
)


def _alpaca_text(instruction: str, input_: str, output: str) -> str:
    # The real dataset carries this pre-rendered prompt in a `text` column; converters must ignore it.
    if input_:
        head = _ALPACA_PREAMBLE.format(", paired with an input that provides further context")
        return f"{head}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input_}\n\n### Response:\n{output}"
    head = _ALPACA_PREAMBLE.format("")
    return f"{head}\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}"


def alpaca_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` rows in the tatsu-lab/alpaca schema: instruction, input, output, text."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, answer, _follow = _task(rng)
        split = _split_instruction(question) if rng.random() < 0.35 else None
        instruction, input_ = split if split else (question, "")
        rows.append(
            {
                "instruction": instruction,
                "input": input_,
                "output": answer,
                "text": _alpaca_text(instruction, input_, answer),
            }
        )
    return rows


def _dolly_row(rng: random.Random) -> dict:
    question, answer, _follow = _task(rng)
    if question.startswith("What is the capital"):
        return {"instruction": question, "context": "", "response": answer, "category": "open_qa"}
    if question.startswith("Which is larger"):
        return {"instruction": question, "context": "", "response": answer, "category": "classification"}
    if question.startswith("What is ") and rng.random() < 0.5:
        # closed_qa: the numbers live in the context, as Dolly's reference passages do.
        expr = question[8:-1]
        context = f"A student wrote the expression {expr} on the board."
        return {
            "instruction": "What is the value of the expression on the board?",
            "context": context,
            "response": answer,
            "category": "closed_qa",
        }
    return {"instruction": question, "context": "", "response": answer, "category": "general_qa"}


def dolly_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` rows in the databricks/databricks-dolly-15k schema: instruction, context, response, category."""
    rng = random.Random(seed)
    return [_dolly_row(rng) for _ in range(n)]


def _next_task(rng: random.Random, task: Task, said: list[str]) -> Task:
    """The next exchange of a chat that so far said `said`: mostly a follow-up on the same topic,
    sometimes a fresh question, as real chats drift; a follow-up that repeats an earlier question (some
    have only one phrasing) becomes a fresh one."""
    question, answer, follow_up = task
    if rng.random() < 0.7:
        question, answer = follow_up(rng)
    if question in said:
        return _task(rng)
    return question, answer, follow_up


def _conversation(rng: random.Random) -> list[dict]:
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    task = _task(rng)
    messages += [{"role": "user", "content": task[0]}, {"role": "assistant", "content": task[1]}]
    for _ in range(rng.randint(1, 2)):
        task = _next_task(rng, task, [m["content"] for m in messages])
        messages += [{"role": "user", "content": task[0]}, {"role": "assistant", "content": task[1]}]
    return messages


def _prompt_id(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()


def ultrachat_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` rows in the HuggingFaceH4/ultrachat_200k schema: prompt, prompt_id, messages (2-3 exchanges)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = _conversation(rng)
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        rows.append({"prompt": prompt, "prompt_id": _prompt_id(prompt), "messages": messages})
    return rows


def corpus_lines(n: int, seed: int = 0) -> list[str]:
    """`n` lines of plain text in the same domain (questions, answers, chat-style turns), for tokenizers."""
    rng = random.Random(seed)
    lines: list[str] = []
    while len(lines) < n:
        question, answer, follow_up = _task(rng)
        style = rng.randrange(4)
        if style == 0:
            lines += [f"Q: {question}", f"A: {answer}"]
        elif style == 1:
            lines += [f"user: {question}", f"assistant: {answer}"]
            if rng.random() < 0.5:
                q2, a2 = follow_up(rng)
                lines += [f"user: {q2}", f"assistant: {a2}"]
        elif style == 2:
            lines.append(f"system: {rng.choice(SYSTEM_PROMPTS)}")
            lines += [f"user: {question}", f"assistant: {answer}"]
        else:
            lines.append(f"{question} {answer}")
    return lines[:n]


# bad_rows.jsonl: the exact count per drop reason is part of the contract the tests check.
BAD_ROWS_EXPECTED = {"missing_field": 3, "empty_turn": 3, "too_long": 2}
BAD_ROWS_GOOD = 40


def bad_rows(seed: int = 0) -> list[dict]:
    """Alpaca-schema rows: BAD_ROWS_GOOD good ones with known bad ones at fixed positions.

    Without a tokenizer only missing_field and empty_turn rows are dropped; with a tokenizer and
    max_length=256 the two long rows are dropped as too_long as well.
    """
    good = [{k: v for k, v in row.items() if k != "text"} for row in alpaca_rows(BAD_ROWS_GOOD, seed)]
    long_output = " ".join(f"{w} {w[::-1]}" for w in WORDS * 6)
    bad = [
        {"instruction": "What is 2 + 2?", "input": ""},  # output key absent
        {"instruction": "What is 3 + 3?", "input": "", "output": None},
        {"instruction": None, "input": "", "output": "Nothing to answer."},
        {"instruction": "What is 4 + 4?", "input": "", "output": ""},
        {"instruction": "   ", "input": "", "output": "An answer to a blank question."},
        {"instruction": "What is 5 + 5?", "input": "", "output": " \n\t"},
        {"instruction": "Reverse and list many words.", "input": "", "output": long_output},
        {"instruction": "List many words.", "input": " ".join(WORDS * 10), "output": "Done."},
    ]
    rows = list(good)
    # Spread the bad rows through the file so position-dependent bugs show up.
    for i, row in enumerate(bad):
        rows.insert(3 + i * 5, row)
    return rows


# bad_chats.jsonl (sharegpt schema, `conversations` with from/value): exact counts again.
BAD_CHATS_EXPECTED = {
    "missing_field": 2,
    "empty_turn": 1,
    "unknown_role": 1,
    "no_assistant_turn": 1,
    "not_alternating": 1,
}
BAD_CHATS_GOOD = 20


def bad_chats(seed: int = 0) -> list[dict]:
    """ShareGPT-schema rows (human/gpt/system): BAD_CHATS_GOOD good conversations plus known bad ones."""
    role_names = {"system": "system", "user": "human", "assistant": "gpt"}
    rows = [
        {
            "id": f"chat-{i}",
            "conversations": [{"from": role_names[m["role"]], "value": m["content"]} for m in conv],
        }
        for i, conv in enumerate(_conversation(random.Random(seed * 1000 + i)) for i in range(BAD_CHATS_GOOD))
    ]
    bad = [
        {"id": "bad-null", "conversations": None},
        {"id": "bad-no-value", "conversations": [{"from": "human"}, {"from": "gpt", "value": "Hello."}]},
        {
            "id": "bad-empty",
            "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": ""}],
        },
        {
            "id": "bad-role",
            "conversations": [{"from": "human", "value": "Hi?"}, {"from": "bing", "value": "Hi."}],
        },
        {"id": "bad-no-gpt", "conversations": [{"from": "human", "value": "Is anyone there?"}]},
        {
            "id": "bad-order",
            "conversations": [
                {"from": "human", "value": "What is 1 + 1?"},
                {"from": "human", "value": "Please answer."},
                {"from": "gpt", "value": "1 + 1 = 2."},
            ],
        },
    ]
    for i, row in enumerate(bad):
        rows.insert(2 + i * 3, row)
    return rows


# --- preference data: the correct answer is chosen, a corrupted one rejected ----------------------------
#
# Most corruptions break fluency in a way a tiny reward model picks up within a few hundred steps (the
# repetition loops greedy decoding falls into, scrambled words or letters, a reply cut off mid-word); a
# few are fluent but wrong (another number), which only a model that checks the answer can catch.


def _loop(answer: str, rng: random.Random) -> str:
    words = answer.split()
    size = rng.randint(min(2, len(words)), min(4, len(words)))
    start = rng.randrange(len(words) - size + 1)
    return " ".join(words[start : start + size] * rng.randint(4, 7))


def _shuffle_words(answer: str, rng: random.Random) -> str:
    words = answer.split()
    rng.shuffle(words)
    return " ".join(words)


def _garble(answer: str, rng: random.Random) -> str:
    def scramble(word: str) -> str:
        letters = list(word)
        rng.shuffle(letters)
        return "".join(letters)

    return " ".join(scramble(word) for word in answer.split())


def _truncate(answer: str, rng: random.Random) -> str:
    return answer[: rng.randint(len(answer) // 3, 2 * len(answer) // 3)].rstrip()


def _wrong_number(answer: str, rng: random.Random) -> str:
    """The last number changed (the answer itself, for every task that has one); unchanged if none."""
    numbers = list(re.finditer(r"-?\d+", answer))
    if not numbers:
        return answer
    last = numbers[-1]
    value, delta = int(last.group()), rng.randint(1, 9)
    # Lower or higher at random, but a count (or any answer that was not negative) never goes below 0.
    wrong = value - delta if rng.random() < 0.5 and (value < 0 or value >= delta) else value + delta
    return answer[: last.start()] + str(wrong) + answer[last.end() :]


CORRUPTIONS = {
    "loop": _loop,
    "shuffle_words": _shuffle_words,
    "garble": _garble,
    "truncate": _truncate,
    "wrong_number": _wrong_number,
}
# How often each corruption is drawn for a rejected reply; only wrong_number is fluent (and it falls back
# to a loop for answers without a number), so at least 90% of rejections are detectably broken.
REJECTION_MIX = {"loop": 0.3, "shuffle_words": 0.25, "garble": 0.2, "truncate": 0.15, "wrong_number": 0.1}


def corrupt_answer(answer: str, rng: random.Random, how: str | None = None) -> str:
    """A rejected reply for `answer`: corruption `how`, or one drawn by REJECTION_MIX; never `answer`."""
    how = how or rng.choices(list(REJECTION_MIX), weights=list(REJECTION_MIX.values()))[0]
    bad = CORRUPTIONS[how](answer, rng)
    # A short answer can shuffle back into itself and one without a number has none to change; a loop
    # always differs (it is longer).
    return bad if bad.strip() and bad.strip() != answer.strip() else _loop(answer, rng)


def preference_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` rows in the HuggingFaceH4/ultrafeedback_binarized schema: prompt, prompt_id, chosen, rejected
    ([user, assistant] turns each), score_chosen > score_rejected."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, answer, _follow = _task(rng)
        user = {"role": "user", "content": question}
        rows.append(
            {
                "prompt": question,
                "prompt_id": _prompt_id(question),
                "chosen": [user, {"role": "assistant", "content": answer}],
                "rejected": [user, {"role": "assistant", "content": corrupt_answer(answer, rng)}],
                "score_chosen": rng.choice((7.0, 8.0, 8.5, 9.0, 10.0)),
                "score_rejected": rng.choice((1.0, 2.0, 3.0, 4.0, 5.0, 6.0)),
            }
        )
    return rows


# --- the annotator-bias task: a mistake in the demonstrations that preference data can fix ----------------
#
# The demonstrator of the compare task has a position bias: with probability COMPARE_BIAS they name the
# first number as the larger, right or wrong (otherwise they answer correctly). A model fine-tuned on their
# rows learns the bias: where the second number is larger, the wrong answer is its most likely reply. The
# preference pairs come from someone who checks the answer: the right reply chosen over the wrong one. Both
# replies copy numbers from the prompt, so a small model can say either; the pairs only have to teach it
# which, and DPO can then raise the verifier's accuracy over SFT (tests/test_po.py).
COMPARE_BIAS = 0.6


def biased_compare_rows(n: int, seed: int = 0, bias: float = COMPARE_BIAS) -> list[dict]:
    """`n` alpaca-schema compare demonstrations (instruction, input, output) from the position-biased
    demonstrator."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, answer, _follow = _compare(rng)
        if rng.random() < bias:
            first, second = re.findall(r"\d+", question)
            answer = f"{first} is larger than {second}."
        rows.append({"instruction": question, "input": "", "output": answer})
    return rows


def compare_pair_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` compare pairs (prompt, chosen, rejected as reply texts): the larger number named over the
    smaller."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, answer, _follow = _compare(rng)
        big, small = re.findall(r"\d+", answer)
        rows.append({"prompt": question, "chosen": answer, "rejected": f"{small} is larger than {big}."})
    return rows


def hh_rlhf_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` rows in the Anthropic/hh-rlhf schema: `chosen` and `rejected` transcripts
    ("\n\nHuman: ...\n\nAssistant: ...") sharing every turn but the last; about 40% are multi-turn."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        task = _task(rng)
        exchanges = [task[:2]]
        for _ in range(rng.choices((0, 1, 2), weights=(6, 3, 1))[0]):
            task = _next_task(rng, task, [q for q, _ in exchanges])
            exchanges.append(task[:2])
        *history, (question, answer) = exchanges
        prefix = "".join(f"\n\nHuman: {q}\n\nAssistant: {a}" for q, a in history)
        prefix += f"\n\nHuman: {question}\n\nAssistant:"
        rows.append({"chosen": f"{prefix} {answer}", "rejected": f"{prefix} {corrupt_answer(answer, rng)}"})
    return rows


RANKED_TIE_EVERY = 25  # every 25th ranked row (from row 12) ranks its two worst completions equal


def ranked_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` rows of a prompt with 4 completions in random order and their ranks (1 = best): the correct
    answer, a mildly wrong one (another number, or cut off), a scrambled one, and random words."""
    rng = random.Random(seed)
    rows = []
    for r in range(n):
        question, answer, _follow = _task(rng)
        mild = _wrong_number(answer, rng)
        if mild == answer:
            mild = _truncate(answer, rng)
        bad = corrupt_answer(answer, rng, rng.choice(("shuffle_words", "garble")))
        garbage = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 9)))
        ranks = [1, 2, 3, 3] if r % RANKED_TIE_EVERY == 12 else [1, 2, 3, 4]
        order = list(range(4))
        rng.shuffle(order)  # so the position of a completion says nothing about its rank
        completions = [answer, mild, bad, garbage]
        rows.append(
            {
                "prompt": question,
                "completions": [completions[k] for k in order],
                "ranks": [ranks[k] for k in order],
            }
        )
    return rows


# bad_preferences.jsonl (ultrafeedback schema, pairwise converter): exact counts per drop reason. Each
# row is one pair, so every problem drops a row (pair-level drops need several pairs a row: ranked.jsonl).
BAD_PREFERENCES_EXPECTED = {
    "missing_field": 2,
    "empty_turn": 1,
    "identical": 1,
    "prompt_mismatch": 1,
    "unknown_role": 1,
    "no_assistant_turn": 1,
    "too_long": 1,
}
BAD_PREFERENCES_GOOD = 30


def bad_preferences(seed: int = 0) -> list[dict]:
    """Ultrafeedback-schema rows: BAD_PREFERENCES_GOOD good pairs with known bad ones at fixed positions.

    The too_long row is dropped only with a tokenizer and max_length=256, as in bad_rows.jsonl.
    """
    rows = preference_rows(BAD_PREFERENCES_GOOD, seed)

    def row(chosen: list[dict], rejected: list[dict] | None, **extra) -> dict:
        prompt = chosen[0]["content"]
        base = {"prompt": prompt, "prompt_id": _prompt_id(prompt), "chosen": chosen, "rejected": rejected}
        return {**base, "score_chosen": 8.0, "score_rejected": 3.0, **extra}

    def turns(question: str, reply: str, role: str = "user") -> list[dict]:
        return [{"role": role, "content": question}, {"role": "assistant", "content": reply}]

    long_reply = " ".join(f"{w} {w[::-1]}" for w in WORDS * 6)
    bad = [
        {k: v for k, v in row(turns("What is 2 + 2?", "2 + 2 = 4."), None).items() if k != "rejected"},
        row(turns("What is 3 + 3?", "3 + 3 = 6."), None),
        row(turns("What is 4 + 4?", " "), turns("What is 4 + 4?", "4 + 4 = 9.")),
        row(turns("What is 5 + 5?", "5 + 5 = 10."), turns("What is 5 + 5?", "5 + 5 = 10.")),
        row(turns("What is 6 + 6?", "6 + 6 = 12."), turns("What is 7 + 7?", "7 + 7 = 15.")),
        row(turns("What is 8 + 8?", "8 + 8 = 16.", "human"), turns("What is 8 + 8?", "8 + 8 = 61.", "human")),
        row([{"role": "user", "content": "What is 9 + 9?"}], [{"role": "user", "content": "What is 9 + 9?"}]),
        row(turns("List many words.", long_reply), turns("List many words.", "words words words words")),
    ]
    # Spread the bad rows through the file so position-dependent bugs show up.
    for i, bad_row in enumerate(bad):
        rows.insert(2 + i * 4, bad_row)
    return rows


def _history(rng: random.Random) -> list[tuple[str, str]]:
    """(question, answer) exchanges of one chat, 1-3 of them, later ones following up on earlier ones."""
    task = _task(rng)
    exchanges = [task[:2]]
    for _ in range(rng.choices((0, 1, 2), weights=(6, 3, 1))[0]):
        task = _next_task(rng, task, [q for q, _ in exchanges])
        exchanges.append(task[:2])
    return exchanges


def sharegpt_preference_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` rows in LLaMA-Factory's sharegpt ranking layout: `conversations` ({from, value} turns ending with
    the human question; about 40% multi-turn), `chosen` / `rejected` ({from: gpt, value}), and on about a
    third of the rows a `system` text."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        *history, (question, answer) = _history(rng)
        conversations = []
        for q, a in history:
            conversations += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        conversations.append({"from": "human", "value": question})
        row = {
            "conversations": conversations,
            "chosen": {"from": "gpt", "value": answer},
            "rejected": {"from": "gpt", "value": corrupt_answer(answer, rng)},
        }
        if rng.random() < 0.35:
            row["system"] = rng.choice(SYSTEM_PROMPTS)
        rows.append(row)
    return rows


def orca_pair_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` rows in the Intel/orca_dpo_pairs schema: system (blank on about 40% of rows, as in the real data),
    question, chosen, rejected."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, answer, _follow = _task(rng)
        system = "" if rng.random() < 0.4 else rng.choice(SYSTEM_PROMPTS)
        rows.append(
            {
                "system": system,
                "question": question,
                "chosen": answer,
                "rejected": corrupt_answer(answer, rng),
            }
        )
    return rows


def unpaired_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` rows in the trl-lib/kto-mix-14k schema: prompt (user/assistant turns ending with the question;
    about 40% multi-turn), completion (one assistant turn), label: true for the correct answer, false for a
    corrupted one (about half each)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        *history, (question, answer) = _history(rng)
        prompt = []
        for q, a in history:
            prompt += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        prompt.append({"role": "user", "content": question})
        label = rng.random() < 0.5
        reply = answer if label else corrupt_answer(answer, rng)
        rows.append(
            {"prompt": prompt, "completion": [{"role": "assistant", "content": reply}], "label": label}
        )
    return rows


# --- tool use: the same tasks answered through a function call ------------------------------------------

# JSON-schema function definitions (OpenAI / transformers `tools` layout); their parameters differ on
# purpose, so a loader that unifies nested dicts across rows (Arrow) would show up as spurious null keys.
TOOLS = {
    "calculate": {
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
    "reverse_word": {
        "description": "Reverse a word.",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
    },
    "count_letter": {
        "description": "Count a letter in a word.",
        "parameters": {
            "type": "object",
            "properties": {"word": {"type": "string"}, "letter": {"type": "string", "maxLength": 1}},
            "required": ["word", "letter"],
        },
    },
    "get_capital": {
        "description": "The capital of a country.",
        "parameters": {
            "type": "object",
            "properties": {"country": {"type": "string"}},
            "required": ["country"],
        },
    },
    "sort_numbers": {
        "description": "Sort integers.",
        "parameters": {
            "type": "object",
            "properties": {
                "numbers": {"type": "array", "items": {"type": "integer"}},
                "descending": {"type": "boolean", "default": False},
            },
            "required": ["numbers"],
        },
    },
}


def _tool_call(question: str, answer: str) -> tuple[str, dict, dict] | None:
    """(tool name, arguments, result) that answers one of the synthetic tasks; None when no tool fits."""
    if m := re.fullmatch(r"What is (-?\d+) ([-+*]) (-?\d+)\?", question):
        a, op, b = int(m[1]), m[2], int(m[3])
        return (
            "calculate",
            {"expression": f"{a} {op} {b}"},
            {"result": {"+": a + b, "-": a - b, "*": a * b}[op]},
        )
    if m := re.fullmatch(r"Reverse the word '(\w+)'\.", question):
        return "reverse_word", {"word": m[1]}, {"reversed": m[1][::-1]}
    if m := re.fullmatch(r"How many times does the letter '(\w)' appear in '(\w+)'\?", question):
        return "count_letter", {"word": m[2], "letter": m[1]}, {"count": m[2].count(m[1])}
    if m := re.fullmatch(r"What is the capital of (.+)\?", question):
        city = re.fullmatch(r"The capital of .+ is (.+)\.", answer)[1]
        return "get_capital", {"country": m[1]}, {"capital": city}
    if m := re.fullmatch(r"Sort these numbers in ascending order: (.+)\.", question):
        numbers = [int(x) for x in m[1].split(", ")]
        return "sort_numbers", {"numbers": numbers}, {"sorted": sorted(numbers)}
    return None  # comparing two numbers: answered without a tool


def tool_chat_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` rows of OpenAI-style `messages` with a `tools` column: the user asks one of the tasks, the
    assistant calls the tool that answers it (`tool_calls`, content null or empty), a `tool` turn returns
    the result and the assistant answers. The row offers that tool and at times one other, as a list of
    schemas or as a JSON string of one (both occur in real data); call arguments are a JSON string
    (OpenAI's layout) or an object. Questions no tool answers (which number is larger) get a direct reply,
    and some chats start with a system turn."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, answer, _follow = _task(rng)
        call = _tool_call(question, answer)
        others = [name for name in TOOLS if call is None or name != call[0]]
        offered = rng.sample(others, rng.randint(0 if call else 1, 1)) + ([call[0]] if call else [])
        rng.shuffle(offered)
        tools = [{"type": "function", "function": {"name": name, **TOOLS[name]}} for name in offered]
        messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.2 else []
        messages.append({"role": "user", "content": question})
        if call is not None:
            name, arguments, result = call
            call_id = f"call_{rng.randrange(16**8):08x}"
            args = json.dumps(arguments) if rng.random() < 0.5 else arguments
            function = {"name": name, "arguments": args}
            messages += [
                {
                    "role": "assistant",
                    "content": None if rng.random() < 0.5 else "",
                    "tool_calls": [{"id": call_id, "type": "function", "function": function}],
                },
                {"role": "tool", "tool_call_id": call_id, "name": name, "content": json.dumps(result)},
            ]
        messages.append({"role": "assistant", "content": answer})
        rows.append({"messages": messages, "tools": json.dumps(tools) if rng.random() < 0.5 else tools})
    return rows


FIXTURE_SIZES = {
    "alpaca": 400,
    "dolly": 400,
    "ultrachat": 400,
    "corpus": 3000,
    "preferences": 400,
    "hh_rlhf": 400,
    "ranked": 200,
    "sharegpt_preferences": 200,
    "orca_pairs": 200,
    "unpaired": 200,
    "tool_chats": 160,
    "biased_compare": 6000,
    "compare_pairs": 1500,
}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")


def write_fixtures(out_dir: str | Path) -> dict[str, Path]:
    """(Re)write every fixture file into `out_dir`; returns {file name: path}. Output is byte-stable."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Distinct seeds per file so the schemas do not carry the very same questions in the same order.
    files = {
        "alpaca.jsonl": alpaca_rows(FIXTURE_SIZES["alpaca"], seed=1),
        "dolly.jsonl": dolly_rows(FIXTURE_SIZES["dolly"], seed=2),
        "ultrachat.jsonl": ultrachat_rows(FIXTURE_SIZES["ultrachat"], seed=3),
        "bad_rows.jsonl": bad_rows(seed=4),
        "bad_chats.jsonl": bad_chats(seed=5),
        "preferences.jsonl": preference_rows(FIXTURE_SIZES["preferences"], seed=7),
        "hh_rlhf.jsonl": hh_rlhf_rows(FIXTURE_SIZES["hh_rlhf"], seed=8),
        "ranked.jsonl": ranked_rows(FIXTURE_SIZES["ranked"], seed=9),
        "bad_preferences.jsonl": bad_preferences(seed=10),
        "sharegpt_preferences.jsonl": sharegpt_preference_rows(
            FIXTURE_SIZES["sharegpt_preferences"], seed=11
        ),
        "orca_pairs.jsonl": orca_pair_rows(FIXTURE_SIZES["orca_pairs"], seed=12),
        "unpaired.jsonl": unpaired_rows(FIXTURE_SIZES["unpaired"], seed=13),
        "tool_chats.jsonl": tool_chat_rows(FIXTURE_SIZES["tool_chats"], seed=14),
        "biased_compare.jsonl": biased_compare_rows(FIXTURE_SIZES["biased_compare"], seed=15),
        "compare_pairs.jsonl": compare_pair_rows(FIXTURE_SIZES["compare_pairs"], seed=16),
    }
    written = {}
    for name, rows in files.items():
        _write_jsonl(out / name, rows)
        written[name] = out / name
    corpus = out / "corpus.txt"
    corpus.write_text(
        "\n".join(corpus_lines(FIXTURE_SIZES["corpus"], seed=6)) + "\n", encoding="utf-8", newline="\n"
    )
    written["corpus.txt"] = corpus
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python tests/synthetic.py OUT_DIR", file=sys.stderr)
        return 2
    for path in write_fixtures(args[0]).values():
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
