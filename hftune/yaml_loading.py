"""Reading YAML files (configs, recipes, eval suites) the way hftune needs them read.

YAML 1.2 booleans only (`save_strategy: no` stays the string "no"), and stricter than PyYAML where its
leniency loses a user's settings or hangs: a key given twice is an error naming both lines, aliases that
expand too far ("billion laughs") or refer to themselves are refused before anything walks them, and a file
that is not UTF-8 text, is a folder, or is far too big to be a config is one readable error naming it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from hftune.errors import UserError


def cut(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Aliases (`*name`) may make a document this many values bigger than it is written: plenty for sharing
# settings, while a "billion laughs" document (aliases of aliases, 10**9 values from a few lines) is refused
# before anything walks it (type checks, error messages and the config hash would otherwise never end).
MAX_ALIAS_EXPANSION = 100_000


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with only `true`/`false` as booleans (as in YAML 1.2): PyYAML's YAML 1.1 also reads `no`, `off`
    and `yes` as booleans, which turns `save_strategy: no` into `False`.

    Stricter than PyYAML where its leniency loses a user's settings or hangs: a key given twice in one
    mapping is an error (PyYAML keeps the last silently), and so are aliases that expand too far or refer
    to themselves."""

    anchors_used = False  # whether the document has an alias (`*name`) at all

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        _refuse_duplicate_keys(node)
        return node

    def compose_document(self):
        node = super().compose_document()
        if node is not None and self.anchors_used:
            _refuse_alias_bomb(node)
        return node

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.anchors_used = True
        return super().compose_node(parent, index)


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _refuse_duplicate_keys(node: yaml.MappingNode) -> None:
    first: dict[tuple[str, str], yaml.Node] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults` merges are meant to be overridden by the keys beside them
        seen = first.setdefault((key.tag, key.value), key)
        if seen is not key:
            raise yaml.composer.ComposerError(
                "while reading a mapping",
                node.start_mark,
                f"duplicate key `{cut(key.value)}` (line {seen.start_mark.line + 1} and again on line "
                f"{key.start_mark.line + 1}); give it once",
                key.start_mark,
            )


def _refuse_alias_bomb(root: yaml.Node) -> None:
    """Count the values the document holds once its aliases are expanded, without expanding them (each
    node is visited once; an alias adds the size of what it names), and refuse an alias that contains
    itself or a document that grows by more than MAX_ALIAS_EXPANSION values."""

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return node.value
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return []

    size: dict[int, int] = {}
    open_: set[int] = set()  # nodes whose children are being counted: the path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            open_.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children(node))
            continue
        if id(node) in size:
            continue
        if id(node) in open_:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to a collection that contains it (endless)", node.start_mark
            )
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children(node) if id(c) not in size)
    if size[id(root)] - len(size) > MAX_ALIAS_EXPANSION:
        raise yaml.composer.ComposerError(
            None,
            None,
            f"its aliases (`*name`) expand it to about {size[id(root)]:.3g} values, more than "
            f"{MAX_ALIAS_EXPANSION:,} beyond what is written; write the settings out instead",
            None,
        )


class YamlTooDeep(yaml.YAMLError):
    def __str__(self) -> str:
        return "nested too deeply"


def load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Yaml12Loader)
    except RecursionError:  # PyYAML composes and constructs recursively: `[[[[...` thousands deep
        raise YamlTooDeep() from None


# A config is a few kilobytes of YAML; a file far bigger was named by mistake (a weights file, a dataset).
MAX_CONFIG_BYTES = 16 * 2**20


def read_config_text(p: Path) -> str:
    """The text of the config file `p`, or one readable UserError naming it."""
    if not p.exists():
        raise UserError(f"config file not found: {p}")
    if p.is_dir():
        raise UserError(f"{p}: is a folder, not a config file (a YAML file of `key: value` lines)")
    if not p.is_file():
        raise UserError(f"{p}: not a regular file; a config is a YAML file of `key: value` lines")
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise UserError(
                f"{p}: {size / 2**20:,.0f} MiB is not a config (configs are small YAML files); "
                "was another file named by mistake?"
            )
        data = p.read_bytes()
    except PermissionError:
        raise UserError(f"{p}: cannot read the config file: permission denied") from None
    except OSError as err:
        raise UserError(f"{p}: cannot read the config file: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{p}: not a text file (byte {data[err.start]:#04x} at offset {err.start} is not UTF-8); "
            "a config is a YAML text file"
        ) from None


def yaml_problem(source: str | os.PathLike, err: yaml.YAMLError) -> str:
    """One line for a YAML error in `source`: where, and what."""
    if isinstance(err, yaml.reader.ReaderError):  # control characters, NUL bytes: a binary file
        return (
            f"{source}: not a YAML text file: character {err.character!r} at offset {err.position} "
            "is not allowed"
        )
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"{source}{where}: not valid YAML: {getattr(err, 'problem', None) or err}"


def load_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    text = read_config_text(p)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise UserError(yaml_problem(p, err)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: a config must be a mapping of `key: value`, got a {type(data).__name__}")
    return data
