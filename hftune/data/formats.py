"""Checks per kind of converter output, and the TRL dataset formats a checked example becomes.

`KINDS` says, for each kind a converter yields ("chat", "text", "preference"), how a converted example
is checked (roles, blank turns, alternation, the recipe's system prompt; a failure raises `RowProblem`)
and what the trainer will tokenize for it. `FORMATS` maps each TRL format name a recipe can ask for to
the function that turns one checked unit into a training row; a format accepts one kind of converter.
Adding a format is one decorated function, see `trl_format`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hftune.data.problems import PairProblem, RowProblem, format_counts, is_blank

if TYPE_CHECKING:  # annotations only: recipe.py imports this module
    from hftune.data.converters import Converter
    from hftune.data.recipe import Recipe

ROLES = ("system", "user", "assistant")


# --- checks per kind of converter output ---------------------------------------------------------------


def _check_turns(messages: list[dict[str, str]], recipe: Recipe) -> list[dict[str, str]]:
    """Roles valid and no blank turn; then the recipe's system prompt where the conversation has none."""
    for i, message in enumerate(messages):
        if message["role"] not in ROLES:
            raise RowProblem("unknown_role", f"turn {i} has role `{message['role']}`")
    for i, message in enumerate(messages):
        if is_blank(message["content"]):
            raise RowProblem("empty_turn", f"turn {i} ({message['role']}) is blank")
    # The recipe's system prompt is a default: a conversation that brings its own keeps it, since two
    # system turns break most chat templates.
    if recipe.system_prompt and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": recipe.system_prompt}, *messages]
    return messages


def _check_alternating(messages: list[dict[str, str]]) -> None:
    start = 1 if messages and messages[0]["role"] == "system" else 0
    for j, message in enumerate(messages[start:]):
        expected = "user" if j % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise RowProblem(
                "not_alternating",
                f"turn {start + j} is {message['role']}, expected {expected} (system first, "
                "then user and assistant alternating)",
            )


def _check_chat(messages: list[dict[str, str]], recipe: Recipe) -> list[dict[str, str]]:
    messages = _check_turns(messages, recipe)
    # Trailing user turns carry no training signal and would make prompt/completion splitting wrong.
    while messages and messages[-1]["role"] != "assistant":
        messages = messages[:-1]
    if not messages:
        raise RowProblem("no_assistant_turn", "no assistant turn to train on")
    _check_alternating(messages)
    return messages


def _check_text(value: str, recipe: Recipe) -> str:
    if is_blank(value):
        raise RowProblem("empty_text", "the text is blank")
    return value


def _check_preference(pairs: list[dict | PairProblem], recipe: Recipe) -> list[dict | PairProblem]:
    """Check each pair; a bad prompt or blank reply spoils the row, identical replies only their pair.

    A row left with no good pair is dropped under its pairs' reason when they share one, else `no_pairs`.
    """
    checked: list[dict | PairProblem] = []
    for pair in pairs:
        if isinstance(pair, PairProblem):
            checked.append(pair)
            continue
        prompt = _check_turns(pair["prompt"], recipe)
        # The reply to compare is the assistant's next turn, so the prompt must hand over with a user turn.
        if not prompt or prompt[-1]["role"] != "user":
            raise RowProblem("no_user_turn", "the prompt does not end with a user turn")
        _check_alternating(prompt)
        for side in ("chosen", "rejected"):
            if is_blank(pair[side]):
                raise RowProblem("empty_turn", f"the {side} reply is blank")
        if pair["chosen"].strip() == pair["rejected"].strip():
            checked.append(PairProblem("identical", "the chosen and rejected replies are the same text"))
            continue
        checked.append({**pair, "prompt": prompt})
    if not any(isinstance(pair, dict) for pair in checked):
        if not checked:
            raise RowProblem("no_pairs", "fewer than two replies to compare")
        reasons = Counter(pair.reason for pair in checked)
        reason = next(iter(reasons)) if len(reasons) == 1 else "no_pairs"
        raise RowProblem(
            reason, f"every pair was left out ({format_counts(reasons)}), e.g. {checked[0].detail}"
        )
    return checked


def _replies(pair: dict) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The chosen and the rejected conversation of a pair: its prompt followed by each reply."""
    return tuple(
        pair["prompt"] + [{"role": "assistant", "content": pair[side]}] for side in ("chosen", "rejected")
    )


@dataclass(frozen=True)
class Kind:
    check: Callable[[Any, Recipe], Any]  # normalise a converted example or raise RowProblem
    sequences: Callable[[Any], list[Any]]  # what the trainer will tokenize for one unit (see `paired`)
    # A paired kind's checked example is a list of pairs (PairProblem for those left out): each pair is
    # length-checked, counted and formatted on its own. Otherwise the example itself is the one unit.
    paired: bool = False


KINDS: dict[str, Kind] = {
    "chat": Kind(_check_chat, lambda conversation: [conversation]),
    "text": Kind(_check_text, lambda value: [value]),
    "preference": Kind(_check_preference, lambda pair: list(_replies(pair)), paired=True),
}


# --- TRL formats: checked example -> training row -----------------------------------------------------


@dataclass(frozen=True)
class Format:
    name: str
    fn: Callable[[Any], dict[str, Any]]  # one unit (a conversation, a text, a preference pair) -> one row
    accepts: str  # the converter kind it takes (Converter.yields)


FORMATS: dict[str, Format] = {}


def trl_format(name: str, *, accepts: str):
    """Register `fn(example) -> row` as the TRL dataset format `name`."""

    def register(fn):
        FORMATS[name] = Format(name, fn, accepts)
        return fn

    return register


@trl_format("conversational", accepts="chat")
def conversational(conversation):
    """TRL's conversational language modelling: {"messages": [...]}."""
    return {"messages": conversation}


@trl_format("prompt_completion", accepts="chat")
def prompt_completion(conversation):
    """TRL's conversational prompt-completion: everything before the last assistant turn is the prompt."""
    return {"prompt": conversation[:-1], "completion": conversation[-1:]}


@trl_format("prompt_only", accepts="chat")
def prompt_only(conversation):
    """TRL's conversational prompt-only (PPO, RLOO, GRPO): everything before the last assistant turn."""
    return {"prompt": conversation[:-1]}


def _with_margin(row: dict[str, Any], pair: dict) -> dict[str, Any]:
    # TRL's RewardTrainer subtracts a `margin` column from the reward gap when the data has one.
    return {**row, "margin": pair["margin"]} if "margin" in pair else row


@trl_format("preference", accepts="preference")
def preference(pair):
    """TRL's conversational preference with an explicit prompt: prompt turns, chosen and rejected replies."""
    reply = {side: [{"role": "assistant", "content": pair[side]}] for side in ("chosen", "rejected")}
    return _with_margin({"prompt": pair["prompt"], **reply}, pair)


@trl_format("implicit_preference", accepts="preference")
def implicit_preference(pair):
    """TRL's conversational preference with the prompt implicit: two full conversations."""
    chosen, rejected = _replies(pair)
    return _with_margin({"chosen": chosen, "rejected": rejected}, pair)


@trl_format("language_modeling", accepts="text")
def language_modeling(value):
    """TRL's standard language modelling: {"text": ...}."""
    return {"text": value}


def format_mismatch(format_name: str, spec: Converter) -> str | None:
    """Why format `format_name` cannot take what converter `spec` yields; None when it can."""
    if FORMATS[format_name].accepts == spec.yields:
        return None
    fits = [f for f, fmt in FORMATS.items() if fmt.accepts == spec.yields]
    return f"`{format_name}` cannot be built by the `{spec.name}` converter; it fits: {', '.join(fits)}"
