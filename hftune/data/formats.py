"""Checks per kind of converter output, and the TRL dataset formats a checked example becomes.

`KINDS` says, for each kind a converter yields ("chat", "prompt", "text", "preference", "unpaired"), how a
converted example is checked (roles, blank turns, alternation, the recipe's system prompt; a failure raises
`RowProblem`) and what the trainer will tokenize for it. `FORMATS` maps each TRL format name a recipe can
ask for to the function that turns one checked unit into a training row; a format accepts one or more
kinds (prompt-only rows come from a conversation, whose last reply is dropped, or from a prompt as is).
Adding a format is one decorated function, see `trl_format`.

A chat unit is a plain list of turns, or, for a conversation with tools, {"messages": [turns], "tools":
"<JSON string>"} (see hftune.data.converters); the chat formats carry `tools` on as a column, which TRL's
SFTTrainer passes to the chat template.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hftune.data.problems import PairProblem, RowProblem, format_counts, is_blank, same_text
from hftune.errors import UserError

if TYPE_CHECKING:  # annotations only: recipe.py imports this module
    from hftune.data.converters import Converter
    from hftune.data.recipe import Recipe

ROLES = ("system", "user", "assistant")
TOOL_ROLES = (*ROLES, "tool")  # only in a conversation with tools (a dict chat unit)


# --- checks per kind of converter output ---------------------------------------------------------------


def _check_turns(
    messages: list[dict[str, str]], recipe: Recipe, roles: tuple[str, ...] = ROLES
) -> list[dict[str, str]]:
    """Roles valid and no blank turn; then the recipe's system prompt where the conversation has none.

    An assistant turn that calls tools may have no text: its calls are what it says.
    """
    for i, message in enumerate(messages):
        if message["role"] not in roles:
            raise RowProblem("unknown_role", f"turn {i} has role `{message['role']}`")
    for i, message in enumerate(messages):
        if is_blank(message["content"]) and not message.get("tool_calls"):
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


def _check_tool_order(messages: list[dict[str, Any]]) -> None:
    """system?, then user and assistant alternating, except that an assistant turn with tool calls is followed
    by one or more tool turns (the results) and then the assistant again."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    previous = None  # the role of the turn before, "call" for an assistant turn with tool calls
    for i, message in enumerate(messages[start:], start):
        role = message["role"]
        if previous is None:
            expected = ("user",)
        elif previous == "call":
            expected = ("tool",)
        elif previous == "tool":
            expected = ("tool", "assistant")
        else:
            expected = ("assistant",) if previous == "user" else ("user",)
        if role not in expected:
            why = (
                "a tool turn must answer an assistant turn's tool calls"
                if role == "tool" and previous != "call"
                else "system first, then user and assistant alternating, tool results after a tool call"
            )
            raise RowProblem(
                "not_alternating", f"turn {i} is {role}, expected {' or '.join(expected)} ({why})"
            )
        previous = "call" if role == "assistant" and message.get("tool_calls") else role


def _check_chat(unit: list[dict[str, str]] | dict[str, Any], recipe: Recipe) -> list[dict[str, str]] | dict:
    with_tools = isinstance(unit, dict)
    messages = unit["messages"] if with_tools else unit
    messages = _check_turns(messages, recipe, TOOL_ROLES if with_tools else ROLES)
    # Trailing user (or tool) turns carry no training signal and would make prompt/completion splitting wrong.
    while messages and messages[-1]["role"] != "assistant":
        messages = messages[:-1]
    if not messages:
        raise RowProblem("no_assistant_turn", "no assistant turn to train on")
    if not with_tools:
        _check_alternating(messages)
        return messages
    _check_tool_order(messages)
    return {"messages": messages, "tools": unit["tools"]}


def _check_prompt(messages: list[dict[str, str]], recipe: Recipe) -> list[dict[str, str]]:
    """A prompt for RL (prompt-only data): valid turns that hand over to the model with a user turn."""
    messages = _check_turns(messages, recipe)
    if not messages or messages[-1]["role"] != "user":
        raise RowProblem("no_user_turn", "the prompt does not end with a user turn")
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
        # Replies that differ only by invisible characters or spacing are the same reply (`same_text`).
        if same_text(pair["chosen"], pair["rejected"]):
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


def _check_unpaired(example: dict, recipe: Recipe) -> dict:
    """The prompt checked as a preference pair's is (ends with a user turn), the completion non-blank."""
    prompt = _check_turns(example["prompt"], recipe)
    if not prompt or prompt[-1]["role"] != "user":
        raise RowProblem("no_user_turn", "the prompt does not end with a user turn")
    _check_alternating(prompt)
    if is_blank(example["completion"]):
        raise RowProblem("empty_turn", "the completion is blank")
    return {**example, "prompt": prompt}


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
    "prompt": Kind(_check_prompt, lambda prompt: [prompt]),
    "text": Kind(_check_text, lambda value: [value]),
    "preference": Kind(_check_preference, lambda pair: list(_replies(pair)), paired=True),
    "unpaired": Kind(
        _check_unpaired,
        lambda example: [example["prompt"] + [{"role": "assistant", "content": example["completion"]}]],
    ),
}


# --- TRL formats: checked example -> training row -----------------------------------------------------


@dataclass(frozen=True)
class Format:
    name: str
    fn: Callable[[Any], dict[str, Any]]  # one unit (a conversation, a text, a preference pair) -> one row
    accepts: tuple[str, ...]  # the converter kinds it takes (Converter.yields)


FORMATS: dict[str, Format] = {}


def trl_format(name: str, *, accepts: str | tuple[str, ...]):
    """Register `fn(example) -> row` as the TRL dataset format `name`, built from the kind(s) `accepts`."""

    def register(fn):
        FORMATS[name] = Format(name, fn, (accepts,) if isinstance(accepts, str) else tuple(accepts))
        return fn

    return register


def _split_tools(unit: list[dict[str, str]] | dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """A chat unit's turns, and the {"tools": JSON string} column it adds to a row (empty without tools)."""
    if isinstance(unit, dict):
        return unit["messages"], {"tools": unit["tools"]}
    return unit, {}


@trl_format("conversational", accepts="chat")
def conversational(unit):
    """TRL's conversational language modelling: {"messages": [...]}, plus "tools" (a JSON string, which
    SFTTrainer json.loads for the chat template) for a conversation with tools."""
    conversation, tools = _split_tools(unit)
    return {"messages": conversation, **tools}


@trl_format("prompt_completion", accepts="chat")
def prompt_completion(unit):
    """TRL's conversational prompt-completion: everything before the last assistant turn is the prompt."""
    conversation, tools = _split_tools(unit)
    return {"prompt": conversation[:-1], "completion": conversation[-1:], **tools}


@trl_format("prompt_only", accepts=("chat", "prompt"))
def prompt_only(unit):
    """TRL's conversational prompt-only (PPO, RLOO, GRPO): a conversation's turns before its last assistant
    turn, or a prompt as it is (prompt-only data, which ends with a user turn)."""
    conversation, tools = _split_tools(unit)
    if conversation[-1]["role"] == "assistant":
        conversation = conversation[:-1]
    return {"prompt": conversation, **tools}


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


@trl_format("unpaired_preference", accepts="unpaired")
def unpaired_preference(example):
    """TRL's conversational unpaired preference (KTO): prompt turns, one completion turn, a boolean label."""
    completion = [{"role": "assistant", "content": example["completion"]}]
    return {"prompt": example["prompt"], "completion": completion, "label": example["label"]}


@trl_format("language_modeling", accepts="text")
def language_modeling(value):
    """TRL's standard language modelling: {"text": ...}."""
    return {"text": value}


def format_mismatch(format_name: str, spec: Converter) -> str | None:
    """Why format `format_name` cannot take what converter `spec` yields; None when it can."""
    if spec.yields in FORMATS[format_name].accepts:
        return None
    fits = [f for f, fmt in FORMATS.items() if spec.yields in fmt.accepts]
    return f"`{format_name}` cannot be built by the `{spec.name}` converter; it fits: {', '.join(fits)}"


def prompt_and_reference(row: dict) -> tuple[list[dict[str, str]], str | None]:
    """A row in a chat format (conversational, prompt-completion or prompt-only) as the conversation up to its
    reply and the reference reply (None where the row has none): what the eval and the label tool sample
    replies to."""
    if row.get("messages") is not None:
        messages = list(row["messages"])
        if messages[-1]["role"] == "assistant":
            return messages[:-1], messages[-1]["content"]
        return messages, None
    if row.get("prompt") is not None:
        prompt = row["prompt"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        completion = row.get("completion")
        if isinstance(completion, list):
            completion = completion[-1]["content"] if completion else None
        return prompt, completion
    raise UserError("eval prompts need a conversational, prompt-completion or prompt-only recipe")
