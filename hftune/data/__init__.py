"""Data recipes: load a dataset, convert its rows to a TRL format, check them, count what was dropped.

A recipe is a small YAML file in `data_recipes/` (or anywhere, by path):

    source: {hub: tatsu-lab/alpaca, split: train}     # or {path: fixtures/alpaca.jsonl}
    format: conversational                           # the TRL dataset format it yields
    converter: alpaca                                # how one raw row becomes a conversation, a text or pairs
    mapping: {output: response}                      # converter field -> dataset column, where they differ

Rows flow: raw row -> optional `transform` hook -> converter -> checks -> format -> `datasets.Dataset`.
A row that fails a check is dropped and counted by reason (or, with `strict`, is an error that names it),
so the SFT stage, the manifest and `hftune data preview` can all say exactly what was left out:

    from hftune.data import load_recipe, prepare_dataset
    data = prepare_dataset(load_recipe("tiny_alpaca"), tokenizer=tok, max_length=512, eval_fraction=0.1)
    print(data.summary())   # kept 400 of 400 rows (train 360, eval 40); dropped 0

Preference converters (`pairwise`, `hh_rlhf`, `ranked`) turn one row into one or more chosen/rejected
pairs for the reward model; a pair can be left out on its own (a tie, identical replies, too long) and is
counted in `dropped_pairs`, while the eval split still takes whole source rows:

    data = prepare_dataset(load_recipe("tiny_ranked"), eval_fraction=0.1)
    print(data.summary())   # kept 200 of 200 rows -> 1192 pairs (train 1072, eval 120); dropped 0 rows; ...

Adding a converter or a format is one decorated function: see `converter` and `trl_format` below.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import itertools
import json
import logging
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
import yaml
from jinja2 import TemplateError

from hftune.config import load_yaml
from hftune.errors import UserError, did_you_mean

logger = logging.getLogger("hftune.data")

ROLES = ("system", "user", "assistant")
EXAMPLES_PER_REASON = 5  # source row indices kept per drop reason, for the log and the manifest


def builtin_dir(name: str) -> Path:
    """A folder of built-in files (`data_recipes`, `eval`) shipped as package data: `hftune/resources/` links
    to the repo's folders in a checkout, and holds copies of them in an installed package."""
    return Path(str(resources.files("hftune") / "resources" / name))


BUILTIN_RECIPES_DIR = builtin_dir("data_recipes")


class RowProblem(Exception):
    """A row that cannot be used; `reason` is the key it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PairProblem:
    """A preference pair left out of a row that may still have good ones; counted per pair, never raised.

    Converters and the preference check put one in a row's list of pairs in place of the pair it stands for.
    """

    reason: str
    detail: str


# --- converters: raw row -> conversation (list of {role, content}), text, or preference pairs ---------


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
    # CSV type inference turns an all-digit column into numbers; they are still text to us.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RowProblem("malformed", f"{what} is a {type(value).__name__}, not text")
    return str(value)


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
    if not instruction.strip():
        raise RowProblem("empty_turn", "the instruction is blank")
    prompt = f"{instruction}\n\n{context}" if context and context.strip() else instruction
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


# --- checks per kind of converter output ---------------------------------------------------------------


def _check_turns(messages: list[dict[str, str]], recipe: Recipe) -> list[dict[str, str]]:
    """Roles valid and no blank turn; then the recipe's system prompt where the conversation has none."""
    for i, message in enumerate(messages):
        if message["role"] not in ROLES:
            raise RowProblem("unknown_role", f"turn {i} has role `{message['role']}`")
    for i, message in enumerate(messages):
        if not message["content"].strip():
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
    if not value.strip():
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
            if not pair[side].strip():
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
        raise RowProblem(reason, f"every pair was left out ({_counts(reasons)}), e.g. {checked[0].detail}")
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


# --- recipes -------------------------------------------------------------------------------------------

RECIPE_KEYS = (
    "description",
    "source",
    "format",
    "converter",
    "mapping",
    "system_prompt",
    "transform",
    "strict",
)
SOURCE_KEYS = ("hub", "path", "split", "config", "revision")
LOCAL_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",  # one row per line, column `text` (plain-text corpora for pretraining)
}


@dataclass(frozen=True)
class Source:
    hub: str | None = None
    path: str | None = None  # as written; resolved against the recipe's folder, then the cwd
    split: str = "train"
    config: str | None = None
    revision: str | None = None

    def describe(self) -> str:
        if self.path:
            return self.path
        extra = "".join(f", {k} {v}" for k, v in (("config", self.config), ("revision", self.revision)) if v)
        return f"hub dataset {self.hub} (split {self.split}{extra})"


@dataclass
class Recipe:
    name: str
    path: Path | None
    source: Source
    format: str = "conversational"
    converter: str = "messages"
    mapping: dict[str, str] = field(default_factory=dict)  # completed with the converter's defaults
    system_prompt: str | None = None
    transform: str | None = None  # "module:function"
    strict: bool = False
    description: str = ""
    explicit_mapping: frozenset[str] = frozenset()  # fields the recipe mapped itself (must exist if optional)
    transform_fn: Callable[[dict], dict | None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        spec = CONVERTERS.get(self.converter)
        if spec is not None:
            self.explicit_mapping = frozenset(self.explicit_mapping) | frozenset(self.mapping)
            self.mapping = {**spec.defaults, **self.mapping}
        if self.transform and self.transform_fn is None:
            self.transform_fn = _resolve_transform(self.transform, self.path.parent if self.path else None)

    def as_dict(self) -> dict[str, Any]:
        """The recipe as YAML-ready data with every default explicit (for resolved configs and manifests)."""
        source = {k: getattr(self.source, k) for k in SOURCE_KEYS if getattr(self.source, k) is not None}
        return {
            "description": self.description,
            "source": source,
            "format": self.format,
            "converter": self.converter,
            "mapping": dict(self.mapping),
            "system_prompt": self.system_prompt,
            "transform": self.transform,
            "strict": self.strict,
        }


def list_recipes() -> list[str]:
    """Names of the built-in recipes."""
    return sorted(p.stem for p in BUILTIN_RECIPES_DIR.glob("*.yaml"))


def _builtins_line() -> str:
    names = list_recipes()
    return (
        f"built-in recipes: {', '.join(names)}"
        if names
        else f"no built-in recipes found in {BUILTIN_RECIPES_DIR}"
    )


def _find_recipe(name_or_path: str) -> Path:
    path = Path(name_or_path)
    looks_like_path = path.suffix in (".yaml", ".yml") or "/" in name_or_path or os.sep in name_or_path
    if looks_like_path:
        if path.is_file():
            return path
        raise UserError(f"recipe file {name_or_path} not found; {_builtins_line()}")
    builtin = BUILTIN_RECIPES_DIR / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    hint = did_you_mean(name_or_path, list_recipes())
    raise UserError(
        f"unknown recipe `{name_or_path}`{hint}; {_builtins_line()} (or give a path to a .yaml file)"
    )


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in recipe by name ("alpaca") or a recipe YAML by path, checked strictly (all problems at once).

    Unknown keys, bad values and converter/format mismatches are collected into one UserError.
    """
    path = _find_recipe(str(name_or_path))
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a mapping of keys ({', '.join(RECIPE_KEYS)})")
    return _parse_recipe(raw, path)


def _format_mismatch(format_name: str, spec: Converter) -> str | None:
    if FORMATS[format_name].accepts == spec.yields:
        return None
    fits = [f for f, fmt in FORMATS.items() if fmt.accepts == spec.yields]
    return f"`{format_name}` cannot be built by the `{spec.name}` converter; it fits: {', '.join(fits)}"


def _parse_recipe(raw: dict[str, Any], path: Path) -> Recipe:
    problems: list[str] = []

    def bad(key: str, message: str) -> None:
        problems.append(f"{path}: `{key}`: {message}")

    for key in raw:
        if key not in RECIPE_KEYS:
            bad(key, f"unknown key{did_you_mean(str(key), RECIPE_KEYS)}")

    source = _parse_source(raw.get("source"), bad)

    converter_name = raw.get("converter")
    if converter_name is None:
        bad("converter", f"missing; one of: {', '.join(CONVERTERS)}")
    elif not isinstance(converter_name, str) or converter_name not in CONVERTERS:
        bad(
            "converter",
            f"unknown converter `{converter_name}`{did_you_mean(str(converter_name), CONVERTERS)}; "
            f"one of: {', '.join(CONVERTERS)}",
        )
    spec = CONVERTERS.get(converter_name) if isinstance(converter_name, str) else None

    format_name = raw.get("format", "conversational")
    if not isinstance(format_name, str) or format_name not in FORMATS:
        bad(
            "format",
            f"unknown format `{format_name}`{did_you_mean(str(format_name), FORMATS)}; "
            f"one of: {', '.join(FORMATS)}",
        )
    elif spec is not None and (mismatch := _format_mismatch(format_name, spec)):
        bad("format", mismatch)

    mapping = raw.get("mapping") or {}
    if not isinstance(mapping, dict):
        bad("mapping", "must be a mapping of converter field -> dataset column")
        mapping = {}
    elif spec is not None:
        for key, column in mapping.items():
            if key not in spec.defaults:
                bad(
                    f"mapping.{key}",
                    f"not a field of the `{spec.name}` converter"
                    f"{did_you_mean(str(key), spec.defaults)}; fields: {', '.join(spec.defaults)}",
                )
            elif not isinstance(column, str) or not column:
                bad(f"mapping.{key}", "must be a column name")

    system_prompt = raw.get("system_prompt")
    if system_prompt is not None and (not isinstance(system_prompt, str) or not system_prompt.strip()):
        bad("system_prompt", "must be a non-empty string or null")
    elif system_prompt is not None and spec is not None and spec.yields == "text":
        bad("system_prompt", f"only applies to conversations; the `{spec.name}` converter yields plain text")

    transform, transform_fn = raw.get("transform"), None
    if transform is not None:
        try:
            if not isinstance(transform, str):
                raise UserError("must be a string `module:function`")
            transform_fn = _resolve_transform(transform, path.parent)
        except UserError as err:
            bad("transform", str(err))

    strict = raw.get("strict", False)
    if not isinstance(strict, bool):
        bad("strict", f"must be true or false, not {strict!r}")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        bad("description", "must be a string")

    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise UserError(f"{count} in recipe {path}:\n" + "\n".join(f"  - {p}" for p in problems))
    return Recipe(
        name=path.stem,
        path=path.resolve(),
        source=source,
        format=format_name,
        converter=converter_name,
        mapping=dict(mapping),
        system_prompt=system_prompt,
        transform=transform,
        strict=strict,
        description=description,
        transform_fn=transform_fn,
    )


def _parse_source(raw: Any, bad: Callable[[str, str], None]) -> Source:
    if raw is None:
        bad("source", "missing; e.g. {hub: tatsu-lab/alpaca, split: train} or {path: data.jsonl}")
        return Source(path="?")
    if not isinstance(raw, dict):
        bad("source", "must be a mapping with `hub` or `path`")
        return Source(path="?")
    for key in raw:
        if key not in SOURCE_KEYS:
            bad(f"source.{key}", f"unknown key{did_you_mean(str(key), SOURCE_KEYS)}")
    for key in SOURCE_KEYS:
        if raw.get(key) is not None and not isinstance(raw[key], str):
            bad(f"source.{key}", f"must be a string, not {raw[key]!r}")
    if bool(raw.get("hub")) == bool(raw.get("path")):
        bad(
            "source",
            "give exactly one of `hub` (a dataset id) or `path` (a local json/jsonl/csv/parquet/txt file)",
        )
    if raw.get("path"):
        suffix = Path(str(raw["path"])).suffix
        if suffix not in LOCAL_BUILDERS:
            bad("source.path", f"unsupported file type `{suffix}`; use one of {', '.join(LOCAL_BUILDERS)}")
        for key in ("config", "revision"):
            if raw.get(key):
                bad(f"source.{key}", "only applies to hub sources")
    values = {k: str(raw[k]) for k in SOURCE_KEYS if raw.get(k) is not None}
    return Source(**values)


def _resolve_transform(spec: str, recipe_dir: Path | None) -> Callable[[dict], dict | None]:
    module_name, sep, fn_name = spec.partition(":")
    if not sep or not module_name or not fn_name:
        raise UserError(f"`{spec}` must look like `module:function`")
    local = recipe_dir / (module_name.replace(".", "/") + ".py") if recipe_dir else None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # A module next to the recipe file works without installing it, like the recipe's own data path.
        if local is None or not local.is_file():
            where = f" and there is no {local}" if local else ""
            raise UserError(f"cannot import `{module_name}` ({err}){where}") from err
        module_spec = importlib.util.spec_from_file_location(f"_hftune_transform_{local.stem}", local)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        functions = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise UserError(f"`{module_name}` has no function `{fn_name}`{did_you_mean(fn_name, functions)}")
    return fn


# --- loading -------------------------------------------------------------------------------------------


def resolve_source_path(recipe: Recipe) -> Path:
    path = Path(recipe.source.path)
    if path.is_absolute():
        return path
    tried = ([recipe.path.parent / path] if recipe.path else []) + [Path.cwd() / path]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise UserError(
        f"recipe {recipe.name}: data file `{recipe.source.path}` not found (looked in "
        + ", ".join(str(p) for p in tried)
        + ")"
    )


def _load_local(path: Path) -> datasets.Dataset:
    if not path.is_file():
        raise UserError(f"data file {path} not found")
    builder = LOCAL_BUILDERS.get(path.suffix)
    if builder is None:
        raise UserError(
            f"data file {path}: unsupported type `{path.suffix}`; use one of {', '.join(LOCAL_BUILDERS)}"
        )
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except datasets.exceptions.DatasetGenerationError as err:
        raise UserError(f"could not read {path}: {err.__cause__ or err}") from err


def _load_hub(source: Source) -> datasets.Dataset:
    try:
        return datasets.load_dataset(source.hub, source.config, split=source.split, revision=source.revision)
    except (ConnectionError, FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        raise UserError(
            f"could not load {source.describe()}: {err}\n"
            "Offline? Pass a local file in the same schema with `data_files` (json/jsonl/csv/parquet/txt)."
        ) from err


def _load(recipe: Recipe, data_files: str | os.PathLike | None) -> tuple[datasets.Dataset, str]:
    if data_files is not None:
        return _load_local(Path(data_files)), str(data_files)
    if recipe.source.path:
        path = resolve_source_path(recipe)
        return _load_local(path), str(path)
    return _load_hub(recipe.source), recipe.source.describe()


def _check_columns(recipe: Recipe, columns: list[str], label: str) -> None:
    spec = CONVERTERS[recipe.converter]
    missing = [
        (f, recipe.mapping[f])
        for f in spec.columns
        if recipe.mapping[f] not in columns and (f not in spec.optional or f in recipe.explicit_mapping)
    ]
    if missing:
        lines = [
            f"column `{column}` not found in {label} (the `{spec.name}` converter's `{f}` field)"
            f"{did_you_mean(column, columns)}"
            for f, column in missing
        ]
        raise UserError(
            "\n".join(lines) + f"\ncolumns in {label}: {', '.join(columns)}\n"
            f"Point the recipe's `mapping` at the right column, e.g. mapping: {{{missing[0][0]}: <column>}}"
        )


# --- preparing -----------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    train: datasets.Dataset
    eval: datasets.Dataset | None
    dropped: dict[str, int]  # reason -> count of source rows
    examples: dict[str, list[int]]  # reason -> first few source row indices (0-based)
    n_source_rows: int
    fingerprint: str  # sha256 of the converted rows, train then eval, in order
    source: str = ""  # the file or hub dataset the rows came from
    train_indices: list[int] = field(default_factory=list)  # source row index of each train row
    eval_indices: list[int] = field(default_factory=list)
    # Token length of every row (every pair, for preference data) that passed the content checks (before
    # too_long), in source order; None without a tokenizer. Preview reports on these so the user sees
    # what max_length cuts.
    token_lengths: list[int] | None = None
    max_length: int | None = None
    # Preference data only (None / empty otherwise): the pairs trained on, train and eval together, and the
    # pairs left out of rows that were kept, by reason (a dropped row's pairs count under `dropped` only).
    n_pairs: int | None = None
    dropped_pairs: dict[str, int] = field(default_factory=dict)

    @property
    def n_kept(self) -> int:
        """Source rows kept (for preference data, one row can give several training rows: its pairs)."""
        if self.n_pairs is not None:
            return len(set(self.train_indices) | set(self.eval_indices))
        return len(self.train) + (len(self.eval) if self.eval is not None else 0)

    def summary(self) -> str:
        """One line: "kept 95 of 100 rows; dropped 5: empty_turn 3, too_long 2"; for preference data
        "kept 95 of 100 rows -> 540 pairs (train 480, eval 60); dropped 5 rows: ...; dropped 36 pairs: ...".
        """
        split = f" (train {len(self.train)}, eval {len(self.eval)})" if self.eval is not None else ""
        kept = f"kept {self.n_kept} of {self.n_source_rows} rows"
        if self.n_pairs is None:
            return f"{kept}{split}; {_dropped_line(self.dropped, '')}"
        return (
            f"{kept} -> {self.n_pairs} pairs{split}; {_dropped_line(self.dropped, ' rows')}; "
            f"{_dropped_line(self.dropped_pairs, ' pairs')}"
        )


PREPARED_META = "prepared.json"


def save_prepared(data: PreparedData, folder: Path) -> None:
    """Write prepared rows (Arrow) and their bookkeeping (JSON) so other processes can read them back."""
    import dataclasses

    from hftune.artifacts import atomic_dir

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        data.train.save_to_disk(str(tmp / "train"))
        if data.eval is not None:
            data.eval.save_to_disk(str(tmp / "eval"))
        meta = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
        del meta["train"], meta["eval"]
        (tmp / PREPARED_META).write_text(json.dumps(meta))


def load_prepared(folder: Path) -> PreparedData:
    folder = Path(folder)
    meta = json.loads((folder / PREPARED_META).read_text())
    eval_dir = folder / "eval"
    return PreparedData(
        train=datasets.load_from_disk(str(folder / "train")),
        eval=datasets.load_from_disk(str(eval_dir)) if eval_dir.is_dir() else None,
        **meta,
    )


def _dropped_line(counts: Mapping[str, int], noun: str) -> str:
    n = sum(counts.values())
    return f"dropped {n}{noun}" + (f": {_counts(counts)}" if n else "")


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def token_lengths(tokenizer, sequences: list[list[Any]], batch_size: int = 512) -> list[int]:
    """Token count of each example: the longest of its sequences (conversations through the chat template)."""
    flat = [(i, s) for i, seqs in enumerate(sequences) for s in seqs]
    lengths = [0] * len(sequences)
    chats = [(i, s) for i, s in flat if not isinstance(s, str)]
    texts = [(i, s) for i, s in flat if isinstance(s, str)]
    if chats and not getattr(tokenizer, "chat_template", None):
        raise UserError("the tokenizer has no chat template; set `chat_template` in the config (e.g. chatml)")
    for start in range(0, len(chats), batch_size):
        batch = chats[start : start + batch_size]
        try:
            rendered = tokenizer.apply_chat_template([s for _, s in batch], tokenize=True, return_dict=True)
        except TemplateError as err:
            raise UserError(
                f"the chat template cannot render these rows ({err}); a template that refuses some roles "
                "(e.g. no system turn) needs data, or a recipe `system_prompt`, that fits it"
            ) from None
        ids = rendered["input_ids"]
        for (i, _), row_ids in zip(batch, ids, strict=True):
            lengths[i] = max(lengths[i], len(row_ids))
    eos = getattr(tokenizer, "eos_token", None)
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        ids = tokenizer([s for _, s in batch])["input_ids"]
        for (i, s), row_ids in zip(batch, ids, strict=True):
            # TRL appends EOS to plain text before tokenizing, so count it.
            extra = 1 if eos and not s.endswith(eos) else 0
            lengths[i] = max(lengths[i], len(row_ids) + extra)
    return lengths


def _fingerprint(splits: list[tuple[str, list[dict]]]) -> str:
    digest = hashlib.sha256()
    for name, rows in splits:
        digest.update(f"\x00{name}\x00".encode())
        for row in rows:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def prepare_dataset(
    recipe: Recipe | str,
    *,
    tokenizer=None,
    max_length: int | None = None,
    strict: bool | None = None,
    eval_fraction: float = 0.0,
    seed: int = 0,
    data_files: str | os.PathLike | None = None,
    max_rows: int | None = None,
) -> PreparedData:
    """Load, convert and check a recipe's rows; split off a seeded eval set of source rows.

    `data_files` replaces the recipe's source with a local file in the same schema. With `tokenizer` and
    `max_length`, rows longer than `max_length` tokens after the chat template are dropped as too_long; for
    preference data a pair's length is that of the longer of prompt+chosen and prompt+rejected, and a row
    is dropped as too_long only when none of its pairs fits. `strict` (default: the recipe's) turns the
    first bad row into an error; rows a transform returns None for are filtered on purpose and never an
    error, and neither are pairs left out of a row that keeps others (ties are part of ranked data).
    """
    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    strict = recipe.strict if strict is None else strict
    if not 0.0 <= eval_fraction < 1.0:
        raise UserError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if max_length is not None and max_length < 1:
        raise UserError(f"max_length must be positive, got {max_length}")

    raw, label = _load(recipe, data_files)
    if max_rows is not None:
        raw = raw.select(range(min(max_rows, len(raw))))
    if len(raw) == 0:
        raise UserError(f"{label} has no rows")
    # With a transform the columns the converter sees are the transform's output, known only per row.
    if recipe.transform_fn is None:
        _check_columns(recipe, raw.column_names, label)

    spec, fmt = CONVERTERS[recipe.converter], FORMATS[recipe.format]
    kind = KINDS[spec.yields]
    # load_recipe refuses this; a Recipe built in code may still pair a converter with a wrong format.
    if mismatch := _format_mismatch(recipe.format, spec):
        raise UserError(f"recipe {recipe.name}: {mismatch}")

    # Each kept source row with its units: the example itself, or the good pairs of a preference row.
    kept: list[tuple[int, list[Any]]] = []
    problems: list[tuple[int, str, str]] = []  # (source row, reason, detail) of each dropped row
    pair_problems: list[tuple[int, str, str]] = []  # the same for each pair left out of a row
    for i, row in enumerate(raw):
        try:
            if recipe.transform_fn is not None:
                row = _apply_transform(recipe, row, i, label)
            example = kind.check(spec.fn(row, recipe.mapping), recipe)
        except RowProblem as problem:
            problems.append((i, problem.reason, problem.detail))
            continue
        units = example if kind.paired else [example]
        pair_problems += [(i, u.reason, u.detail) for u in units if isinstance(u, PairProblem)]
        kept.append((i, [u for u in units if not isinstance(u, PairProblem)]))

    lengths = None
    if tokenizer is not None and kept:
        lengths = token_lengths(tokenizer, [kind.sequences(unit) for _, units in kept for unit in units])
        if max_length is not None:
            kept = _drop_too_long(kept, lengths, max_length, problems, pair_problems)
    problems.sort()
    # A dropped row is counted once, as a row, whatever its pairs' fate.
    kept_rows = {i for i, _ in kept}
    pair_problems = sorted(p for p in pair_problems if p[0] in kept_rows)

    dropped = Counter(reason for _, reason, _ in problems)
    bad = [p for p in problems if p[1] != "filtered"]
    if strict and bad:
        i, reason, detail = bad[0]
        others = (
            f"; {len(bad)} bad rows in all: {_counts(Counter(r for _, r, _ in bad))}" if len(bad) > 1 else ""
        )
        raise UserError(
            f"{label}: row {i} (0-based) is bad: {reason}: {detail}{others}\n"
            "strict mode stops at bad rows; set `strict: false` in the recipe to drop and count them instead"
        )
    if not kept:
        first = "; ".join(f"row {i} {reason}: {detail}" for i, reason, detail in problems[:3])
        raise UserError(f"{label}: all {len(raw)} rows were dropped ({_counts(dropped)}); first: {first}")

    # Split source rows, not training rows, so the pairs of one row never straddle train and eval; for
    # preference data, rows that share a prompt also go to one side, or held-out accuracy would be measured
    # on prompts seen in training. Our own seeded pick (not Dataset.train_test_split) keeps the train rows in
    # source order and the split independent of the datasets library's shuffling across versions.
    groups: dict[str, list[int]] = {}
    for pos, (_, units) in enumerate(kept):
        key = json.dumps(units[0]["prompt"], sort_keys=True) if kind.paired else str(pos)
        groups.setdefault(key, []).append(pos)
    units_of_split = list(groups.values())
    n_eval = max(1, round(len(units_of_split) * eval_fraction)) if eval_fraction > 0 else 0
    if n_eval >= len(units_of_split):
        raise UserError(f"eval_fraction {eval_fraction} leaves no training rows out of {len(kept)} kept rows")
    picked = random.Random(seed).sample(range(len(units_of_split)), n_eval)
    eval_pos = {pos for g in picked for pos in units_of_split[g]}
    train_rows, train_indices = _format_rows(fmt, [k for p, k in enumerate(kept) if p not in eval_pos])
    eval_rows, eval_indices = _format_rows(fmt, [k for p, k in enumerate(kept) if p in eval_pos])

    examples = _examples(problems)
    result = PreparedData(
        train=datasets.Dataset.from_list(train_rows),
        eval=datasets.Dataset.from_list(eval_rows) if n_eval else None,
        dropped=dict(sorted(dropped.items())),
        examples=examples,
        n_source_rows=len(raw),
        fingerprint=_fingerprint([("train", train_rows), ("eval", eval_rows)]),
        source=label,
        train_indices=train_indices,
        eval_indices=eval_indices,
        token_lengths=lengths,
        max_length=max_length,
        n_pairs=len(train_rows) + len(eval_rows) if kind.paired else None,
        dropped_pairs=dict(sorted(Counter(reason for _, reason, _ in pair_problems).items())),
    )
    logger.info("recipe %s (%s rows from %s): %s", recipe.name, recipe.format, label, result.summary())
    for unit, found in (("rows", problems), ("pairs", pair_problems)):
        for reason, where in _examples(found).items():
            n = sum(r == reason for _, r, _ in found)
            detail = next(d for _, r, d in found if r == reason)
            logger.warning("dropped %d %s as %s, e.g. rows %s (%s)", n, unit, reason, where, detail)
    return result


def _examples(problems: list[tuple[int, str, str]]) -> dict[str, list[int]]:
    """reason -> the first few source rows (distinct) it was found in."""
    examples: dict[str, list[int]] = {}
    for i, reason, _ in problems:
        where = examples.setdefault(reason, [])
        if len(where) < EXAMPLES_PER_REASON and i not in where:
            where.append(i)
    return examples


def _drop_too_long(
    kept: list[tuple[int, list[Any]]],
    lengths: list[int],
    max_length: int,
    problems: list[tuple[int, str, str]],
    pair_problems: list[tuple[int, str, str]],
) -> list[tuple[int, list[Any]]]:
    """The rows and units within max_length; a unit left out is added to `pair_problems` (only a preference
    row has more than one), a row with none left to `problems`, both as too_long."""
    remaining = iter(lengths)  # one length per unit, in the order of `kept`
    fitting = []
    for i, units in kept:
        ns = [next(remaining) for _ in units]
        fits = [unit for unit, n in zip(units, ns, strict=True) if n <= max_length]
        if not fits:
            problems.append((i, "too_long", f"{min(ns)} tokens > max_length {max_length}"))
            continue
        pair_problems += [
            (i, "too_long", f"{n} tokens > max_length {max_length}") for n in ns if n > max_length
        ]
        fitting.append((i, fits))
    return fitting


def _format_rows(fmt: Format, kept: list[tuple[int, list[Any]]]) -> tuple[list[dict], list[int]]:
    """Training rows of these source rows, one per unit, with the source row index of each."""
    rows = [(i, fmt.fn(unit)) for i, units in kept for unit in units]
    return [row for _, row in rows], [i for i, _ in rows]


def _apply_transform(recipe: Recipe, row: dict, index: int, label: str) -> dict:
    try:
        out = recipe.transform_fn(dict(row))
    except Exception as err:
        # The user's hook has a bug: keep its traceback, but say which row it choked on.
        err.add_note(f"in transform {recipe.transform} on row {index} of {label}")
        raise
    if out is None:
        raise RowProblem("filtered", f"transform {recipe.transform} returned None")
    if not isinstance(out, Mapping):
        raise UserError(
            f"transform {recipe.transform} returned a {type(out).__name__} for row {index}, not a dict"
        )
    return out
