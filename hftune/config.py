"""Strict stage configs in TRL's own vocabulary.

A stage config is one flat YAML mapping whose keys are the field names of the stage's TRL config
(`SFTConfig`, ...), of TRL's `ModelConfig`, and of a small hftune dataclass for what TRL lacks. Flags on
the command line (`--learning_rate 1e-4`) override the file. Every problem — unknown key, wrong type,
secret, impossible combination — is collected and reported at once, each with its source and key.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hftune.errors import UserError, did_you_mean

# Key names that carry credentials. The Hub token is read from HF_TOKEN or the login cache only, so a
# config that names one is refused rather than silently ignored or, worse, saved next to the weights.
_SECRET_KEY = re.compile(
    r"(^|_)(token|hub_token|hf_token|api_key|apikey|access_token|auth_token|password|passwd|secret|credentials?)$"
)
# Fields that end in "token" but hold a vocabulary entry, not a credential.
_NOT_SECRET = {"pad_token", "eos_token", "bos_token", "unk_token", "sep_token", "cls_token", "mask_token"}
# Something that looks like a Hub token in a value (e.g. pasted into a URL or a run name).
_TOKEN_VALUE = re.compile(r"hf_[A-Za-z0-9]{30,}")

# Fields TRL/transformers expose that hftune does not let a config set: hftune owns them.
_OWNED_BY_HFTUNE = {"hub_token", "push_to_hub_token"}


def is_secret_key(key: str) -> bool:
    return key not in _NOT_SECRET and bool(_SECRET_KEY.search(key.lower()))


class ConfigError(UserError):
    """All problems found in one config, reported together."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        n = len(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{n} problem{'s' if n > 1 else ''} in {source}:\n{lines}")


# ---------------------------------------------------------------------------------------------------
# Type checking and coercion against dataclass annotations
# ---------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return origin.__name__
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def coerce(value: Any, tp: Any) -> Any:
    """Return `value` converted to annotation `tp`, or raise _Mismatch.

    Lenient only where YAML is surprising: PyYAML reads `1e-4` as a string, so numeric strings are
    accepted for numeric fields; a single string is accepted where a list of strings is expected.
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        # Try exact-type matches first so `str | int` keeps a string a string.
        for strict_pass in (True, False):
            for arg in args:
                if arg is type(None):
                    continue
                if strict_pass and not _is_exact(value, arg):
                    continue
                try:
                    return coerce(value, arg)
                except _Mismatch:
                    continue
        raise _Mismatch
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise _Mismatch
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str) and item_tp is str:
            return [value]
        if not isinstance(value, list):
            raise _Mismatch
        return [coerce(v, item_tp) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value).value
        except ValueError:
            raise _Mismatch from None
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    # Complex objects (ParallelismConfig, DebugOption lists, ...) are passed through to TRL unchecked.
    return value


def _is_exact(value: Any, tp: Any) -> bool:
    if tp is float:
        return isinstance(value, float)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type) and not issubclass(tp, enum.Enum):
        return isinstance(value, tp)
    return True


# ---------------------------------------------------------------------------------------------------
# Stage schemas
# ---------------------------------------------------------------------------------------------------


@dataclass
class StageSchema:
    """The dataclasses a stage's flat config is split into, and hftune's own defaults."""

    name: str
    classes: dict[str, type]  # section name -> dataclass, e.g. {"training": SFTConfig, ...}
    defaults: dict[str, Any]  # hftune's defaults where they differ from TRL's (documented in --help)
    check: typing.Callable[[dict[str, Any]], list[str]] | None = None  # cross-field rules
    # TRL fields the `hftune` section declares itself, so that one key means the same thing whichever
    # trainer runs (e.g. `kl_coef` for PPO's `kl_coef` and GRPO's `beta`); the stage sets TRL's field.
    owned: frozenset[str] = frozenset()
    # Why a key this stage does not have is not there (e.g. vLLM options under PPO), for its error.
    unknown_key_hint: typing.Callable[[str], str | None] | None = None

    def skips(self, section: str, name: str) -> bool:
        return name in _OWNED_BY_HFTUNE or (section != "hftune" and name in self.owned)

    def fields(self) -> dict[str, tuple[str, dataclasses.Field, Any]]:
        """key -> (section, field, resolved annotation)."""
        out: dict[str, tuple[str, dataclasses.Field, Any]] = {}
        for section, cls in self.classes.items():
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if f.init and not self.skips(section, f.name):
                    out.setdefault(f.name, (section, f, hints[f.name]))
        return out


@dataclass
class StageConfig:
    """A parsed, validated stage config: one object per section."""

    stage: str
    source: str
    sections: dict[str, Any]
    # What the saved config reports instead of a section's live value: while a stage trains, TRL's
    # `output_dir` points at the work folder, but the artifact lives (and is recorded) elsewhere.
    reported: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    def resolved(self) -> dict[str, Any]:
        """Every setting made explicit, secrets removed: what is saved next to the artifact."""
        flat: dict[str, Any] = {"stage": self.stage}
        # hftune's section first: where it owns a TRL field (StageSchema.owned), its value is the real one.
        for _, obj in sorted(self.sections.items(), key=lambda item: item[0] != "hftune"):
            data = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
            for key, value in data.items():
                flat.setdefault(key, value)
        flat.update(self.reported)
        return strip_secrets(_jsonable(flat))

    def config_hash(self, ignore: tuple[str, ...] = ("output_dir", "logging_dir", "run_name")) -> str:
        """Hash of the resolved config; the paths a run writes to do not change what it computes."""
        data = {k: v for k, v in self.resolved().items() if k not in ignore}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def strip_secrets(data: Any) -> Any:
    """Drop secret-named keys and redact anything that looks like (or is) the live Hub token."""
    live = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if isinstance(data, dict):
        return {k: strip_secrets(v) for k, v in data.items() if not is_secret_key(str(k))}
    if isinstance(data, list):
        return [strip_secrets(v) for v in data]
    if isinstance(data, str):
        if live and live in data:
            data = data.replace(live, "<redacted>")
        return _TOKEN_VALUE.sub("<redacted>", data)
    return data


# ---------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with only `true`/`false` as booleans (as in YAML 1.2): PyYAML's YAML 1.1 also reads `no`, `off`
    and `yes` as booleans, which turns `save_strategy: no` into `False`."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)


def load_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = load_yaml(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(f"{p}{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: a config must be a mapping of `key: value`, got a {type(data).__name__}")
    return data


def parse_overrides(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """`--key value`, `--key=value` and bare `--flag` (true) into a dict; values are read as YAML scalars."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or tok == "--":
            problems.append(f"command line: unexpected argument `{tok}` (flags look like `--key value`)")
            i += 1
            continue
        key, eq, raw = tok[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                raw = argv[i + 1]
                i += 1
            else:
                raw = "true"
        try:
            values[key] = load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            values[key] = raw
        i += 1
    return values, problems


def parse_stage_config(
    schema: StageSchema, config_path: str | None, argv: list[str] | None = None
) -> StageConfig:
    """Read a stage config file plus flag overrides, validate everything, and build the sections."""
    file_values = load_yaml_mapping(config_path) if config_path else {}
    flag_values, problems = parse_overrides(argv or [])
    source = str(config_path) if config_path else "command line"
    known = schema.fields()
    coerced: dict[str, Any] = {}

    for origin, values in ((source, file_values), ("command line", flag_values)):
        for key, value in values.items():
            where = f"`{key}`" if origin == source else f"`--{key}` (command line)"
            if not isinstance(key, str):
                problems.append(f"key {key!r}: keys must be strings")
                continue
            if is_secret_key(key):
                problems.append(
                    f"{where}: secrets do not belong in a config file (it is saved next to the model). "
                    "Set the HF_TOKEN environment variable or run `hf auth login` instead."
                )
                continue
            if isinstance(value, str) and _TOKEN_VALUE.search(value):
                problems.append(f"{where}: the value looks like a Hub token; use HF_TOKEN instead")
                continue
            if key not in known:
                hint = schema.unknown_key_hint(key) if schema.unknown_key_hint else None
                problems.append(
                    f"{where}: unknown key" + (f" ({hint})" if hint else did_you_mean(key, known))
                )
                continue
            _, f, tp = known[key]
            try:
                value = coerce(value, tp)
            except _Mismatch:
                problems.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
                continue
            choices = f.metadata.get("choices") if f.metadata else None
            if choices and value is not None and value not in choices:
                problems.append(f"{where}: must be one of {', '.join(map(str, choices))}; got {value!r}")
                continue
            coerced[key] = value

    # A copy: TRL and PEFT extend some settings in place (PEFT appends to `lora_modules_to_save`), which must
    # not leak into the next config parsed in this process (a pipeline parses every stage, then runs them).
    merged = {**copy.deepcopy(schema.defaults), **coerced}
    if schema.check:
        # Cross-field rules see the valid values (bad ones fall back to defaults), so one run of the
        # checker reports combination problems alongside unknown keys and wrong types.
        problems.extend(schema.check(merged))
    if problems:
        raise ConfigError(source, problems)

    sections: dict[str, Any] = {}
    for section, cls in schema.classes.items():
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs = {k: v for k, v in merged.items() if k in names and not schema.skips(section, k)}
        try:
            sections[section] = cls(**kwargs)
        except (ValueError, TypeError) as err:
            # TRL/transformers validate combinations in __post_init__; surface them as config errors.
            raise ConfigError(source, [str(err).strip()]) from None
    return StageConfig(stage=schema.name, source=source, sections=sections)


def describe_fields(cls: type) -> list[tuple[str, str, str]]:
    """(name, type, help) for a dataclass, for `--help` output."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # lists and dicts (hftune_field makes factories)
            default = f.default_factory()
        help_text = (f.metadata or {}).get("help", "")
        out.append((f.name, f"{_type_name(hints[f.name])}, default {default!r}", help_text))
    return out


def hftune_field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a help string, as TRL's configs declare theirs."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})
