"""Converters: one raw dataset row -> a conversation (list of {role, content}), a prompt, a text, preference
pairs, or an unpaired (prompt, completion, label) example.

Each converter is registered by name in `CONVERTERS` with the dataset columns it reads (and their
defaults, which a recipe's `mapping` can point elsewhere) and what it yields ("chat", "prompt", "text",
"preference" or "unpaired"; `hftune.data.formats` checks and formats each kind). A bad row raises
`RowProblem`. Adding one is a decorated function, like `alpaca` below.

A chat with tools (a `tools` column, assistant `tool_calls`, `tool` turns) is the one chat that is not a
plain list of turns: it is {"messages": [turns], "tools": "<JSON string>"}. Tool schemas and tool-call
arguments stay JSON *strings* all the way to the chat template: `datasets` (Arrow) unifies nested dicts
across rows, so two tools with different parameters would each come back with the other's keys set to
null, and the template would print those nulls.
"""

from __future__ import annotations

import itertools
import json
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
    yields: str  # the kind of output ("chat", "prompt", "text", ...): which formats take it (Format.accepts)
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


def _history(row, key: str) -> list[dict[str, str]]:
    """LLaMA-Factory's alpaca `history`: the earlier exchanges, [[instruction, response], ...], as turns."""
    value = row.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise RowProblem("malformed", f"`{key}` is a {type(value).__name__}, not a list of [user, assistant]")
    turns = []
    for i, exchange in enumerate(value):
        if not isinstance(exchange, list | tuple) or len(exchange) != 2:
            raise RowProblem("malformed", f"`{key}` item {i} is not a [user, assistant] pair")
        user, reply = (_text(text, f"`{key}` item {i}") for text in exchange)
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return turns


@converter(
    "alpaca",
    columns={
        "instruction": "instruction",
        "input": "input",
        "output": "output",
        "system": "system",
        "history": "history",
    },
    optional=("input", "system", "history"),
)
def alpaca(row, col):
    """Alpaca-style instruction / optional input / output -> one user and one assistant turn. LLaMA-Factory's
    alpaca adds an optional `system` (the system turn) and `history` (the earlier [instruction, response]
    exchanges, which become the turns before this one, so a follow-up trains with its context)."""
    turns = _history(row, col["history"]) + _instruction_turns(
        _value(row, col["instruction"]), _value(row, col["input"], optional=True), _value(row, col["output"])
    )
    return _with_system(_value(row, col["system"], optional=True), turns)


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


def _json_as_written(value: Any, what: str) -> str:
    """JSON text for a value read from the data, numbers spelt as the file wrote them (json.dumps would turn
    a JSON `3.10` into `3.1`); separators as json.dumps and the templates' `tojson` write them."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return getattr(value, "source", None) or json.dumps(value)
    if isinstance(value, Mapping):
        items = (
            f"{json.dumps(str(k), ensure_ascii=False)}: {_json_as_written(v, what)}" for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_json_as_written(v, what) for v in value) + "]"
    raise RowProblem("malformed", f"{what} holds a {type(value).__name__}, which JSON cannot write")


def _json_text(value: Any, what: str, expect: type, noun: str) -> str:
    """A JSON value of type `expect` as JSON text: a string is checked and kept byte for byte, a parsed value
    (a JSON file's object, a typed Hub column) is written back as JSON."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError as err:
            raise RowProblem("malformed", f"{what} is a string but not JSON ({err})") from None
        if not isinstance(parsed, expect):
            raise RowProblem("malformed", f"{what} is JSON for a {type(parsed).__name__}, not {noun}")
        return value
    if not isinstance(value, expect):
        raise RowProblem("malformed", f"{what} is a {type(value).__name__}, not {noun}")
    return _json_as_written(value, what)


def _tools(row, key: str) -> str | None:
    """The row's tool schemas as a JSON string (None when it has none): a list of JSON-schema function dicts,
    or a JSON string of one (both occur in real data)."""
    value = row.get(key)
    if value is None:
        return None
    text = _json_text(value, f"`{key}`", list, "a list of tool schemas")
    tools = json.loads(text)
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise RowProblem("malformed", f"`{key}` item {i} is a {type(tool).__name__}, not a tool schema")
    return text if tools else None


def _tool_calls(turn: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """A turn's OpenAI-style `tool_calls` as [{"type": "function", "function": {"name", "arguments"}}],
    arguments a JSON string (see the module docstring); `id` kept when the data has one."""
    calls = turn.get("tool_calls")
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise RowProblem("malformed", f"{where}`tool_calls` is a {type(calls).__name__}, not a list")
    out = []
    for k, call in enumerate(calls):
        what = f"{where}tool call {k}"
        if not isinstance(call, Mapping):
            raise RowProblem("malformed", f"{what} is a {type(call).__name__}, not a mapping")
        # OpenAI nests name/arguments under `function`; some datasets put them on the call itself.
        function = call.get("function", call)
        if not isinstance(function, Mapping):
            raise RowProblem("malformed", f"{what}: `function` is a {type(function).__name__}, not a mapping")
        name = _value(function, "name", where=f"{what}: ")
        if is_blank(name):
            raise RowProblem("empty_turn", f"{what} has a blank function name")
        arguments = function.get("arguments")
        if arguments is None:  # a function without parameters
            arguments = "{}"
        arguments = _json_text(arguments, f"{what}: `arguments`", dict, "an object")
        normal = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if call.get("id") is not None:
            normal["id"] = _text(call["id"], f"{what}: `id`")
        out.append(normal)
    return out


def _tool_turns(row, key: str, col) -> tuple[list[dict[str, Any]], bool]:
    """Column `key` as turns that may carry tool calls or be tool results; and whether any does."""
    messages, uses_tools = [], False
    for i, turn in enumerate(_list(row, key, "a list of turns")):
        where = f"turn {i}: "
        if not isinstance(turn, Mapping):
            raise RowProblem("malformed", f"turn {i} is a {type(turn).__name__}, not a mapping")
        role = _value(turn, col["role"], where=where)
        calls = _tool_calls(turn, where)
        if calls and role != "assistant":
            raise RowProblem(
                "malformed", f"turn {i} is a {role} turn with `tool_calls`; only assistants call tools"
            )
        # An assistant turn that calls tools often has no text (null or ""): the calls are its content.
        content = _value(turn, col["content"], optional=bool(calls), where=where)
        if role == "assistant":
            _check_weight(turn, where)
        message: dict[str, Any] = {"role": role, "content": content or ""}
        if calls:
            message["tool_calls"] = calls
        if role == "tool":
            for extra in ("name", "tool_call_id"):
                if turn.get(extra) is not None:
                    message[extra] = _text(turn[extra], f"{where}`{extra}`")
        uses_tools = uses_tools or bool(calls) or role == "tool"
        messages.append(message)
    return messages, uses_tools


def _check_weight(turn: Mapping[str, Any], where: str) -> None:
    """OpenAI fine-tuning's per-turn `weight`: 1 (or none) trains the turn, 0 leaves it out of the loss.

    hftune's loss mask comes from the chat template's assistant markers, which mark every assistant turn, so
    a turn cannot be left out alone: such a row is dropped (counted) rather than trained on what the data said
    not to train."""
    weight = turn.get("weight")
    if weight is None or (weight == 1 and not isinstance(weight, bool)):
        return
    if weight == 0 and not isinstance(weight, bool):
        raise RowProblem(
            "turn_weight_0",
            f"{where}the assistant turn has `weight: 0` (OpenAI's 'do not train on this turn'); hftune "
            "trains every assistant turn of a conversation, so it does not train this row: drop the turn's "
            "`weight` to train it, or cut the conversation before it",
        )
    raise RowProblem("malformed", f"{where}`weight` is {weight!r}; OpenAI's per-turn weight is 0 or 1")


@converter(
    "messages",
    columns={"messages": "messages", "tools": "tools"},
    optional=("tools",),
    keys={"role": "role", "content": "content"},
)
def messages(row, col):
    """A list of {role, content} turns with roles already system/user/assistant (TRL's own format).

    With tools (OpenAI style): an optional `tools` column (a list of JSON-schema function dicts, or a JSON
    string of one), assistant turns with `tool_calls` (content may then be empty or null) and `tool` turns
    with the results (optional `name` / `tool_call_id`). Such a row becomes {"messages": [...], "tools":
    "<JSON string>"}; "null" when it has tool turns but no schemas (json.loads gives None, so templates
    print no empty tool list). A row with neither stays a plain list of turns.
    """
    turns, uses_tools = _tool_turns(row, col["messages"], col)
    tools = _tools(row, col["tools"])
    if tools is None and not uses_tools:
        return turns
    return {"messages": turns, "tools": tools or "null"}


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


def _prompt_turns(row, col) -> list[dict[str, str]]:
    """The `prompt` field as turns: a text is one user turn, a list is {role, content} turns."""
    if isinstance(row.get(col["prompt"]), list):
        return _turns(row, col["prompt"], col, roles={})
    return _user(_value(row, col["prompt"]))


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


def _not_sharegpt(row, col) -> None:
    """Refuse a ShareGPT preference row (LLaMA-Factory's ranking layout: {from, value} turns) by name: read
    as `pairwise` it would only say that `prompt` or a turn's `role` is missing."""
    for key in ("chosen", "rejected"):
        value = row.get(col[key])
        turn = value[0] if isinstance(value, list) and value else value
        if isinstance(turn, Mapping) and col["role"] not in turn and "from" in turn:
            raise RowProblem(
                "malformed",
                f"`{col[key]}` is a ShareGPT {{from, value}} turn: this is ShareGPT preference data "
                "(conversations, chosen, rejected); read it with `converter: sharegpt_preference`",
            )


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
    _not_sharegpt(row, col)
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
    keys={"role": "role", "content": "content"},
)
def ranked(row, col):
    """A prompt with K completions, each ranked (1 = best) or scored (higher = better) -> all K(K-1)/2 pairs.

    The prompt is a text (one user turn) or a list of {role, content} turns (a multi-turn conversation up to
    the reply, as `hftune label` writes it).

    Every pair of one prompt is kept, as in InstructGPT's reward model; pairs come in completion-index
    order (0-1, 0-2, ..., 1-2, ...) and a tied pair is left out as `tie`.
    """
    prompt = _prompt_turns(row, col)
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


@converter(
    "prompt_completion",
    columns={"prompt": "prompt", "completion": "completion"},
    keys={"role": "role", "content": "content"},
)
def prompt_completion(row, col):
    """TRL's prompt-completion layout: `prompt` and `completion` as texts (a user turn and the assistant's
    reply) or as lists of {role, content} turns (TRL's conversational prompt-completion)."""
    sides = []
    for field, role in (("prompt", "user"), ("completion", "assistant")):
        value = row.get(col[field])
        if isinstance(value, list):
            sides.append(_turns(row, col[field], col, roles={}))
        else:
            sides.append([{"role": role, "content": _value(row, col[field])}])
    return sides[0] + sides[1]


@converter(
    "prompt_only", columns={"prompt": "prompt"}, yields="prompt", keys={"role": "role", "content": "content"}
)
def prompt_only(row, col):
    """TRL's prompt-only layout (the prompts PPO, RLOO and GRPO generate from): `prompt` as a text (one user
    turn) or a list of {role, content} turns ending with the user's."""
    return _prompt_turns(row, col)


def _reply(row, key: str, col, roles: Mapping[str, str]) -> str:
    """Column `key` as one assistant reply: a turn mapping, a one-turn list, or the reply text itself."""
    value = row.get(key)
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], Mapping):
            raise RowProblem("malformed", f"`{key}` is a list, not one turn; a reply is one assistant turn")
        value = value[0]
    if not isinstance(value, Mapping):
        return _value(row, key) if value is None else _text(value, f"`{key}`")
    role = _value(value, col["role"], where=f"`{key}`: ")
    if roles.get(role, role) != "assistant":
        raise RowProblem("no_assistant_turn", f"`{key}` is a `{role}` turn, not the assistant's reply")
    return _value(value, col["content"], where=f"`{key}`: ")


def _with_system(system: str | None, prompt: list[dict[str, str]]) -> list[dict[str, str]]:
    """A system column's text as the first turn, unless it is blank or the prompt already starts with one."""
    if system is None or is_blank(system) or (prompt and prompt[0]["role"] == "system"):
        return prompt
    return [{"role": "system", "content": system}, *prompt]


@converter(
    "sharegpt_preference",
    columns={"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "system": "system"},
    optional=("system",),
    yields="preference",
    keys={"role": "from", "content": "value"},
)
def sharegpt_preference(row, col):
    """ShareGPT preference (LLaMA-Factory's ranking layout): `conversations` of {from, value} is the whole
    prompt (it may be multi-turn and must end with a human turn), `chosen` / `rejected` the two replies,
    each a {from: gpt, value} turn, a one-turn list or the reply text. An optional `system` column becomes
    the first turn unless the conversation starts with its own."""
    prompt = _turns(row, col["messages"], col, roles=SHAREGPT_ROLES)
    # Said here, naming the column: the generic check only knows "the prompt".
    if not prompt or prompt[-1]["role"] != "user":
        last = f"its last turn is {prompt[-1]['role']}" if prompt else "it is empty"
        raise RowProblem(
            "no_user_turn", f"`{col['messages']}` must end with a human/user turn (the prompt); {last}"
        )
    prompt = _with_system(_value(row, col["system"], optional=True), prompt)
    chosen, rejected = (_reply(row, col[side], col, SHAREGPT_ROLES) for side in ("chosen", "rejected"))
    return [_pair(prompt, chosen, rejected)]


@converter(
    "system_question",
    columns={"system": "system", "question": "question", "chosen": "chosen", "rejected": "rejected"},
    optional=("system",),
    yields="preference",
)
def system_question(row, col):
    """system / question / chosen / rejected strings (Intel/orca_dpo_pairs): a system turn (none when the
    system text is blank), the question as the user turn, and the two reply texts."""
    prompt = _with_system(_value(row, col["system"], optional=True), _user(_value(row, col["question"])))
    return [_pair(prompt, _value(row, col["chosen"]), _value(row, col["rejected"]))]


def _label(row, key: str) -> bool:
    """A desirable/undesirable label: a boolean, or (a CSV cell is text as written) `true` / `false`."""
    value = row.get(key)
    if value is None:
        raise RowProblem("missing_field", f"`{key}` is missing or null")
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    shown = f"{value!r}" if isinstance(value, str) else f"a {type(value).__name__} ({value})"
    raise RowProblem("malformed", f"`{key}` is {shown}; it must be true or false (true = desirable)")


@converter(
    "unpaired",
    columns={"prompt": "prompt", "completion": "completion", "label": "label"},
    yields="unpaired",
    keys={"role": "role", "content": "content"},
)
def unpaired(row, col):
    """Unpaired preference (KTO, trl-lib/kto-mix-14k): a prompt (text -> one user turn, or a list of turns),
    one completion (text, or a one-assistant-turn list) and a boolean `label` (true = desirable)."""
    prompt = _prompt_turns(row, col)
    completion = _reply(row, col["completion"], col, roles={})
    return {"prompt": prompt, "completion": completion, "label": _label(row, col["label"])}
