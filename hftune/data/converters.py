"""Converters: one raw dataset row -> a conversation (list of {role, content}), a text, or preference pairs.

Each converter is registered by name in `CONVERTERS` with the dataset columns it reads (and their
defaults, which a recipe's `mapping` can point elsewhere) and what it yields ("chat", "text" or
"preference"; `hftune.data.formats` checks and formats each kind). A bad row raises `RowProblem`.
Adding one is a decorated function, like `alpaca` below.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hftune.data.problems import PairProblem, RowProblem, is_blank


@dataclass(frozen=True)
class Converter:
    name: str
    fn: Callable[[Mapping[str, Any], Mapping[str, str]], Any]
    yields: str  # "chat" or "text": which formats can take the output (Format.accepts)
    columns: dict[str, str]  # field -> default dataset column
    optional: frozenset[str]  # columns a dataset may lack
    keys: dict[str, str]  # field -> default key inside each turn (not a column)

    @property
    def defaults(self) -> dict[str, str]:
        return {**self.columns, **self.keys}


CONVERTERS: dict[str, Converter] = {}


def converter(
    name: str,
    *,
    columns: dict[str, str],
    optional: tuple[str, ...] = (),
    yields: str = "chat",
    keys: dict[str, str] | None = None,
):
    """Register `fn(row, mapping) -> example` as converter `name`; it raises RowProblem for a bad row."""

    def register(fn):
        CONVERTERS[name] = Converter(name, fn, yields, dict(columns), frozenset(optional), dict(keys or {}))
        return fn

    return register


def _text(value: Any, what: str) -> str:
    """A text field's value exactly as the data wrote it.

    A number where text is expected is taken as the text it was written as: a JSON number keeps its source
    digits (`3.10`, `1e5`; see hftune.data.files), a typed number (parquet, Hub) its usual spelling.
    true/false is refused, since a JSON boolean has no source text to keep.
    """
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        raise RowProblem(
            "malformed", f'{what} is a boolean (true/false), not text; quote it ("true") as text'
        )
    if not isinstance(value, int | float):
        raise RowProblem("malformed", f"{what} is a {type(value).__name__}, not text")
    return getattr(value, "source", None) or str(value)


def _value(row: Mapping[str, Any], key: str, *, optional: bool = False, where: str = "") -> str | None:
    value = row.get(key)
    if value is None:
        if optional:
            return None
        raise RowProblem("missing_field", f"{where}`{key}` is missing or null")
    return _text(value, f"{where}`{key}`")


def _list(row: Mapping[str, Any], key: str, what: str = "a list") -> list:
    value = row.get(key)
    if value is None:
        raise RowProblem("missing_field", f"`{key}` is missing or null")
    if not isinstance(value, list):
        raise RowProblem("malformed", f"`{key}` is a {type(value).__name__}, not {what}")
    return value


def _instruction_turns(instruction: str, context: str | None, answer: str) -> list[dict[str, str]]:
    # Checked here because joining a blank instruction with a non-blank context would hide it.
    if is_blank(instruction):
        raise RowProblem("empty_turn", "the instruction is blank")
    prompt = f"{instruction}\n\n{context}" if context and not is_blank(context) else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


@converter(
    "alpaca",
    columns={"instruction": "instruction", "input": "input", "output": "output"},
    optional=("input",),
)
def alpaca(row, col):
    """Alpaca-style instruction / optional input / output -> one user and one assistant turn."""
    return _instruction_turns(
        _value(row, col["instruction"]), _value(row, col["input"], optional=True), _value(row, col["output"])
    )


@converter(
    "dolly",
    columns={
        "instruction": "instruction",
        "context": "context",
        "response": "response",
        "category": "category",
    },
    optional=("context", "category"),
)
def dolly(row, col):
    """Dolly-style instruction / context / response; the context joins the user turn, category is unused."""
    return _instruction_turns(
        _value(row, col["instruction"]),
        _value(row, col["context"], optional=True),
        _value(row, col["response"]),
    )


def _turns(row, key: str, col, roles: Mapping[str, str]) -> list[dict[str, str]]:
    """Column `key` of `row` as {role, content} turns, read with the recipe's role/content keys."""
    messages = []
    for i, turn in enumerate(_list(row, key, "a list of turns")):
        if not isinstance(turn, Mapping):
            raise RowProblem("malformed", f"turn {i} is a {type(turn).__name__}, not a mapping")
        role = _value(turn, col["role"], where=f"turn {i}: ")
        content = _value(turn, col["content"], where=f"turn {i}: ")
        messages.append({"role": roles.get(role, role), "content": content})
    return messages


@converter("messages", columns={"messages": "messages"}, keys={"role": "role", "content": "content"})
def messages(row, col):
    """A list of {role, content} turns with roles already system/user/assistant (TRL's own format)."""
    return _turns(row, col["messages"], col, roles={})


SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


@converter("sharegpt", columns={"messages": "conversations"}, keys={"role": "from", "content": "value"})
def sharegpt(row, col):
    """ShareGPT-style `conversations` of {from, value} with human/gpt/system roles."""
    return _turns(row, col["messages"], col, roles=SHAREGPT_ROLES)


@converter("text", columns={"text": "text"}, yields="text")
def text(row, col):
    """A plain-text column, for language modelling (continued pretraining)."""
    return _value(row, col["text"])


# Preference converters yield a list of pairs {"prompt": [turns], "chosen": str, "rejected": str} (plus
# "margin" when the data has one): the prompt is the conversation so far, chosen/rejected the replies.


def _pair(prompt: list[dict[str, str]], chosen: str, rejected: str, margin: float | None = None) -> dict:
    pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if margin is not None:
        pair["margin"] = margin
    return pair


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowProblem("malformed", f"{what} is a {type(value).__name__}, not a number")
    if not math.isfinite(value):
        # NaN compares false both ways, so it would order pairs inconsistently (or make the loss NaN).
        raise RowProblem("malformed", f"{what} is {value}, not a finite number")
    return float(value)


def _prompt_and_reply(turns: list[dict[str, str]], key: str) -> tuple[list[dict[str, str]], str]:
    """A full conversation split into the prompt (every turn but the last) and the final assistant reply."""
    if not turns or turns[-1]["role"] != "assistant":
        raise RowProblem("no_assistant_turn", f"`{key}` does not end with an assistant turn")
    return turns[:-1], turns[-1]["content"]


def _shared_prompt(chosen: list[dict[str, str]], rejected: list[dict[str, str]], col) -> tuple:
    """(prompt, chosen reply, rejected reply) from two full conversations that must differ only at the end."""
    prompt, chosen_reply = _prompt_and_reply(chosen, col["chosen"])
    rejected_prompt, rejected_reply = _prompt_and_reply(rejected, col["rejected"])
    if prompt != rejected_prompt:
        raise RowProblem(
            "prompt_mismatch",
            f"`{col['chosen']}` and `{col['rejected']}` differ before their final assistant turn",
        )
    return prompt, chosen_reply, rejected_reply


@converter(
    "pairwise",
    columns={"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "margin": "margin"},
    optional=("prompt", "margin"),
    yields="preference",
    keys={"role": "role", "content": "content"},
)
def pairwise(row, col):
    """One chosen/rejected pair per row (ultrafeedback_binarized style), with an optional margin.

    `chosen` and `rejected` are either full conversations ({role, content} turns ending with the reply;
    the turns before it are the prompt and must be the same in both), single assistant turns after a
    `prompt` of turns (TRL's explicit-prompt format), or reply texts with the `prompt` column as the user
    turn. A `margin` column, when the data has one, must be set on every row: TRL
    batches margins only if every example carries one.
    """
    if isinstance(row.get(col["prompt"]), list):
        # TRL's explicit-prompt format: the prompt turns, then the chosen and rejected reply turns.
        prompt = _turns(row, col["prompt"], col, roles={})
        replies = []
        for key in ("chosen", "rejected"):
            turns = _turns(row, col[key], col, roles={}) if isinstance(row.get(col[key]), list) else None
            if turns is None or len(turns) != 1:
                raise RowProblem(
                    "malformed", f"`{col[key]}` must be one assistant turn when `prompt` is turns"
                )
            replies.append(_prompt_and_reply(turns, col[key])[1])
        chosen, rejected = replies
    elif isinstance(row.get(col["chosen"]), list) or isinstance(row.get(col["rejected"]), list):
        # Both must be conversations; _turns says which one is null or text instead.
        prompt, chosen, rejected = _shared_prompt(
            _turns(row, col["chosen"], col, roles={}), _turns(row, col["rejected"], col, roles={}), col
        )
    else:
        prompt = _user(_value(row, col["prompt"]))
        chosen, rejected = _value(row, col["chosen"]), _value(row, col["rejected"])
    margin = None
    if col["margin"] in row:
        if row[col["margin"]] is None:
            raise RowProblem("missing_field", f"`{col['margin']}` is missing or null")
        margin = _number(row[col["margin"]], f"`{col['margin']}`")
    return [_pair(prompt, chosen, rejected, margin)]


# "\n\nHuman: ...\n\nAssistant: ..." (a leading "Human:" without the blank line is tolerated).
_HH_SPEAKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_turns(row, key: str) -> list[dict[str, str]]:
    parts = _HH_SPEAKER.split(_value(row, key))
    if len(parts) < 3 or parts[0].strip():
        raise RowProblem("malformed", f"`{key}` is not a `\\n\\nHuman: ...\\n\\nAssistant: ...` transcript")
    # A turn's own blank lines stay; only the whitespace around it (after "Human:") is layout.
    return [
        {"role": _HH_ROLES[s], "content": c.strip()} for s, c in zip(parts[1::2], parts[2::2], strict=True)
    ]


@converter("hh_rlhf", columns={"chosen": "chosen", "rejected": "rejected"}, yields="preference")
def hh_rlhf(row, col):
    """Anthropic/hh-rlhf transcripts: the shared turns before the final `Assistant:` are the prompt."""
    prompt, chosen, rejected = _shared_prompt(
        _hh_turns(row, col["chosen"]), _hh_turns(row, col["rejected"]), col
    )
    return [_pair(prompt, chosen, rejected)]


@converter(
    "ranked",
    columns={"prompt": "prompt", "completions": "completions", "ranks": "ranks", "scores": "scores"},
    optional=("ranks", "scores"),
    yields="preference",
)
def ranked(row, col):
    """A prompt with K completions, each ranked (1 = best) or scored (higher = better) -> all K(K-1)/2 pairs.

    Every pair of one prompt is kept, as in InstructGPT's reward model; pairs come in completion-index
    order (0-1, 0-2, ..., 1-2, ...) and a tied pair is left out as `tie`.
    """
    prompt = _user(_value(row, col["prompt"]))
    completions = [
        _text(c, f"completion {k}") for k, c in enumerate(_list(row, col["completions"], "a list of texts"))
    ]
    ranks, scores = row.get(col["ranks"]), row.get(col["scores"])
    if (ranks is None) == (scores is None):
        raise RowProblem(
            "missing_field" if ranks is None else "malformed",
            f"give exactly one of `{col['ranks']}` (1 = best) or `{col['scores']}` (higher = better)",
        )
    key = col["ranks"] if ranks is not None else col["scores"]
    values = [_number(v, f"`{key}` item {k}") for k, v in enumerate(_list(row, key, "a list of numbers"))]
    if len(values) != len(completions):
        raise RowProblem("malformed", f"{len(values)} `{key}` for {len(completions)} completions")
    # Higher is better from here on.
    merit, measure = ([-v for v in values], "rank") if ranks is not None else (values, "score")
    pairs: list[dict | PairProblem] = []
    for i, j in itertools.combinations(range(len(completions)), 2):
        if merit[i] == merit[j]:
            pairs.append(PairProblem("tie", f"completions {i} and {j} have the same {measure}"))
            continue
        better, worse = (i, j) if merit[i] > merit[j] else (j, i)
        pairs.append(_pair(prompt, completions[better], completions[worse]))
    return pairs
