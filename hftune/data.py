"""Data recipes: load a dataset, convert its rows to a TRL format, check them, count what was dropped.

A recipe is a small YAML file in `data_recipes/` (or anywhere, by path):

    source: {hub: tatsu-lab/alpaca, split: train}     # or {path: fixtures/alpaca.jsonl}
    format: conversational                           # the TRL dataset format it yields
    converter: alpaca                                # how one raw row becomes a conversation or a text
    mapping: {output: response}                      # converter field -> dataset column, where they differ

Rows flow: raw row -> optional `transform` hook -> converter -> checks -> format -> `datasets.Dataset`.
A row that fails a check is dropped and counted by reason (or, with `strict`, is an error that names it),
so the SFT stage, the manifest and `hftune data preview` can all say exactly what was left out:

    from hftune.data import load_recipe, prepare_dataset
    data = prepare_dataset(load_recipe("tiny_alpaca"), tokenizer=tok, max_length=512, eval_fraction=0.1)
    print(data.summary())   # kept 400 of 400 rows (train 360, eval 40); dropped 0

Adding a converter or a format is one decorated function: see `converter` and `trl_format` below.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import random
import sysconfig
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import yaml

from hftune.config import load_yaml
from hftune.errors import UserError, did_you_mean

logger = logging.getLogger("hftune.data")

ROLES = ("system", "user", "assistant")
EXAMPLES_PER_REASON = 5  # source row indices kept per drop reason, for the log and the manifest


def builtin_dir(name: str) -> Path:
    """A folder of built-in files (`data_recipes`, `eval`, ...), from a checkout or a plain `pip install .`.

    A checkout wins so that edits to the repo's recipes take effect without reinstalling; an install puts
    the folder under the data path (`<prefix>/share/hftune/<name>`, setup.cfg's `data_files`).
    """
    candidates = [Path(__file__).resolve().parent.parent / name]
    schemes = [sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user")]
    for scheme in dict.fromkeys(schemes):
        candidates.append(Path(sysconfig.get_path("data", scheme)) / "share" / "hftune" / name)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


BUILTIN_RECIPES_DIR = builtin_dir("data_recipes")


class RowProblem(Exception):
    """A row that cannot be used; `reason` is the key it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- converters: raw row -> conversation (list of {role, content}) or text ---------------------------


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


def _value(row: Mapping[str, Any], key: str, *, optional: bool = False, where: str = "") -> str | None:
    value = row.get(key)
    if value is None:
        if optional:
            return None
        raise RowProblem("missing_field", f"{where}`{key}` is missing or null")
    # CSV type inference turns an all-digit column into numbers; they are still text to us.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RowProblem("malformed", f"{where}`{key}` is a {type(value).__name__}, not text")
    return str(value)


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


def _turns(row, col, roles: Mapping[str, str]) -> list[dict[str, str]]:
    turns = row.get(col["messages"])
    if turns is None:
        raise RowProblem("missing_field", f"`{col['messages']}` is missing or null")
    if not isinstance(turns, list):
        raise RowProblem("malformed", f"`{col['messages']}` is a {type(turns).__name__}, not a list of turns")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise RowProblem("malformed", f"turn {i} is a {type(turn).__name__}, not a mapping")
        role = _value(turn, col["role"], where=f"turn {i}: ")
        content = _value(turn, col["content"], where=f"turn {i}: ")
        messages.append({"role": roles.get(role, role), "content": content})
    return messages


@converter("messages", columns={"messages": "messages"}, keys={"role": "role", "content": "content"})
def messages(row, col):
    """A list of {role, content} turns with roles already system/user/assistant (TRL's own format)."""
    return _turns(row, col, roles={})


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
    return _turns(row, col, roles=SHAREGPT_ROLES)


@converter("text", columns={"text": "text"}, yields="text")
def text(row, col):
    """A plain-text column, for language modelling (continued pretraining)."""
    return _value(row, col["text"])


# --- checks per kind of converter output ---------------------------------------------------------------


def _check_chat(messages: list[dict[str, str]], recipe: Recipe) -> list[dict[str, str]]:
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
    # Trailing user turns carry no training signal and would make prompt/completion splitting wrong.
    while messages and messages[-1]["role"] != "assistant":
        messages = messages[:-1]
    if not messages:
        raise RowProblem("no_assistant_turn", "no assistant turn to train on")
    start = 1 if messages[0]["role"] == "system" else 0
    for j, message in enumerate(messages[start:]):
        expected = "user" if j % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise RowProblem(
                "not_alternating",
                f"turn {start + j} is {message['role']}, expected {expected} (system first, "
                "then user and assistant alternating)",
            )
    return messages


def _check_text(value: str, recipe: Recipe) -> str:
    if not value.strip():
        raise RowProblem("empty_text", "the text is blank")
    return value


@dataclass(frozen=True)
class Kind:
    check: Callable[[Any, Recipe], Any]  # normalise a converted example or raise RowProblem
    sequences: Callable[[Any], list[Any]]  # what the trainer will tokenize: conversations or texts


KINDS: dict[str, Kind] = {
    "chat": Kind(_check_chat, lambda conversation: [conversation]),
    "text": Kind(_check_text, lambda value: [value]),
}


# --- TRL formats: checked example -> training row -----------------------------------------------------


@dataclass(frozen=True)
class Format:
    name: str
    fn: Callable[[Any], dict[str, Any]]
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
LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


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
    elif spec is not None and FORMATS[format_name].accepts != spec.yields:
        fits = [f for f, fmt in FORMATS.items() if fmt.accepts == spec.yields]
        bad(
            "format",
            f"`{format_name}` cannot be built by the `{spec.name}` converter; it fits: {', '.join(fits)}",
        )

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
    elif system_prompt is not None and spec is not None and spec.yields != "chat":
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
            "give exactly one of `hub` (a dataset id) or `path` (a local json/jsonl/csv/parquet file)",
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


def _resolve_source_path(recipe: Recipe) -> Path:
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
            "Offline? Pass a local file in the same schema with `data_files` (json/jsonl/csv/parquet)."
        ) from err


def _load(recipe: Recipe, data_files: str | os.PathLike | None) -> tuple[datasets.Dataset, str]:
    if data_files is not None:
        return _load_local(Path(data_files)), str(data_files)
    if recipe.source.path:
        path = _resolve_source_path(recipe)
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
    dropped: dict[str, int]  # reason -> count
    examples: dict[str, list[int]]  # reason -> first few source row indices (0-based)
    n_source_rows: int
    fingerprint: str  # sha256 of the converted rows, train then eval, in order
    source: str = ""  # the file or hub dataset the rows came from
    train_indices: list[int] = field(default_factory=list)  # source row index of each train row
    eval_indices: list[int] = field(default_factory=list)
    # Token length of every row that passed the content checks (before too_long), in source order;
    # None without a tokenizer. Preview reports on these so the user sees what max_length cuts.
    token_lengths: list[int] | None = None
    max_length: int | None = None

    @property
    def n_kept(self) -> int:
        return len(self.train) + (len(self.eval) if self.eval is not None else 0)

    def summary(self) -> str:
        """One line: "kept 95 of 100 rows; dropped 5: empty_turn 3, too_long 2"."""
        split = f" (train {len(self.train)}, eval {len(self.eval)})" if self.eval is not None else ""
        n_dropped = sum(self.dropped.values())
        line = f"kept {self.n_kept} of {self.n_source_rows} rows{split}; dropped {n_dropped}"
        return line + (f": {_counts(self.dropped)}" if n_dropped else "")


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
        ids = tokenizer.apply_chat_template([s for _, s in batch], tokenize=True, return_dict=True)[
            "input_ids"
        ]
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
    """Load, convert and check a recipe's rows; split off a seeded eval set.

    `data_files` replaces the recipe's source with a local file in the same schema. With `tokenizer` and
    `max_length`, rows longer than `max_length` tokens after the chat template are dropped as too_long.
    `strict` (default: the recipe's) turns the first bad row into an error; rows a transform returns
    None for are filtered on purpose and never an error.
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

    spec, kind, fmt = (
        CONVERTERS[recipe.converter],
        KINDS[CONVERTERS[recipe.converter].yields],
        FORMATS[recipe.format],
    )
    kept: list[tuple[int, Any]] = []
    problems: list[tuple[int, str, str]] = []
    for i, row in enumerate(raw):
        try:
            if recipe.transform_fn is not None:
                row = _apply_transform(recipe, row, i, label)
            kept.append((i, kind.check(spec.fn(row, recipe.mapping), recipe)))
        except RowProblem as problem:
            problems.append((i, problem.reason, problem.detail))

    lengths = None
    if tokenizer is not None and kept:
        lengths = token_lengths(tokenizer, [kind.sequences(example) for _, example in kept])
        if max_length is not None:
            for (i, _), n in zip(kept, lengths, strict=True):
                if n > max_length:
                    problems.append((i, "too_long", f"{n} tokens > max_length {max_length}"))
            kept = [item for item, n in zip(kept, lengths, strict=True) if n <= max_length]
    problems.sort()

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

    rows = [fmt.fn(example) for _, example in kept]
    indices = [i for i, _ in kept]
    n_eval = max(1, round(len(rows) * eval_fraction)) if eval_fraction > 0 else 0
    if n_eval >= len(rows):
        raise UserError(f"eval_fraction {eval_fraction} leaves no training rows out of {len(rows)} kept rows")
    # Our own seeded pick (not Dataset.train_test_split) keeps the train rows in source order and the
    # split independent of the datasets library's shuffling across versions.
    eval_pos = set(random.Random(seed).sample(range(len(rows)), n_eval))
    train_rows = [r for p, r in enumerate(rows) if p not in eval_pos]
    eval_rows = [r for p, r in enumerate(rows) if p in eval_pos]

    examples: dict[str, list[int]] = {}
    for i, reason, _ in problems:
        if len(examples.setdefault(reason, [])) < EXAMPLES_PER_REASON:
            examples[reason].append(i)
    result = PreparedData(
        train=datasets.Dataset.from_list(train_rows),
        eval=datasets.Dataset.from_list(eval_rows) if n_eval else None,
        dropped=dict(sorted(dropped.items())),
        examples=examples,
        n_source_rows=len(raw),
        fingerprint=_fingerprint([("train", train_rows), ("eval", eval_rows)]),
        source=label,
        train_indices=[i for p, i in enumerate(indices) if p not in eval_pos],
        eval_indices=[i for p, i in enumerate(indices) if p in eval_pos],
        token_lengths=lengths,
        max_length=max_length,
    )
    logger.info("recipe %s (%s rows from %s): %s", recipe.name, recipe.format, label, result.summary())
    for reason, where in examples.items():
        detail = next(d for _, r, d in problems if r == reason)
        logger.warning("dropped %d rows as %s, e.g. rows %s (%s)", dropped[reason], reason, where, detail)
    return result


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
