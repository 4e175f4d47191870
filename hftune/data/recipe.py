"""Recipes: the YAML schema (`Recipe`, `Source`), strict parsing, and finding built-in recipes by name.

A recipe is a small YAML file in `data_recipes/` (or anywhere, by path):

    source: {hub: tatsu-lab/alpaca, split: train}     # or {path: fixtures/alpaca.jsonl}
    format: conversational                           # the TRL dataset format it yields
    converter: alpaca                                # how one raw row becomes a conversation, a text or pairs
    mapping: {output: response}                      # converter field -> dataset column, where they differ

`load_recipe` collects every problem of a file into one UserError, and parses each file once per process:
the same Recipe is handed to every caller, so Recipe and Source are frozen.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hftune.data.converters import CONVERTERS
from hftune.data.formats import FORMATS, format_mismatch
from hftune.data.problems import is_blank
from hftune.errors import UserError, did_you_mean
from hftune.resources import builtin_dir
from hftune.yaml_loading import load_yaml, yaml_problem

BUILTIN_RECIPES_DIR = builtin_dir("data_recipes")

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
    ".txt": "text",  # one row per document (blank-line separated; see files._read_text), column `text`
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


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe. Frozen because `load_recipe` hands one instance to every caller: treat `mapping`
    as read-only too (it stays a plain dict so the recipe copies, pickles and dumps like one)."""

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
        # Completing the fields is part of construction, hence the frozen dataclass's own setattr.
        spec = CONVERTERS.get(self.converter)
        if spec is not None:
            explicit = frozenset(self.explicit_mapping) | frozenset(self.mapping)
            object.__setattr__(self, "explicit_mapping", explicit)
            object.__setattr__(self, "mapping", {**spec.defaults, **self.mapping})
        if self.transform and self.transform_fn is None:
            recipe_dir = self.path.parent if self.path else None
            object.__setattr__(self, "transform_fn", _resolve_transform(self.transform, recipe_dir))

    def replaced(self, **changes: Any) -> Recipe:
        """A copy with `changes` (another source, converter, format, name). The mapping keeps only the fields
        the recipe mapped itself, so the converter's defaults are completed anew (`dataclasses.replace`
        would count every completed default as mapped by hand)."""
        mapping = changes.pop(
            "mapping", {k: v for k, v in self.mapping.items() if k in self.explicit_mapping}
        )
        return dataclasses.replace(self, mapping=mapping, explicit_mapping=frozenset(mapping), **changes)

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


# (resolved file, recipe name) -> (the text it was parsed from, the Recipe). One pipeline run loads the same
# recipe many times (the plan, its checks, every stage); the text, not the mtime, decides whether the file
# changed, since rereading a small YAML file costs nothing and an mtime can miss a quick same-size edit.
_PARSED: dict[tuple[Path, str], tuple[str, Recipe]] = {}


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in recipe by name ("alpaca") or a recipe YAML by path, checked strictly (all problems at once).

    Unknown keys, bad values and converter/format mismatches are collected into one UserError. Each file is
    parsed once per process (again when its text changes): callers share the returned, frozen Recipe.
    """
    path = _find_recipe(str(name_or_path))
    text = _read_recipe_text(path)
    key = (path.resolve(), path.stem)
    cached = _PARSED.get(key)
    if cached is not None and cached[0] == text:
        return cached[1]
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as err:
        raise UserError(yaml_problem(path, err)) from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a mapping of keys ({', '.join(RECIPE_KEYS)})")
    recipe = _parse_recipe(raw, path)
    _PARSED[key] = (text, recipe)
    return recipe


def _read_recipe_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"could not read recipe {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(
            f"recipe {path} is not a UTF-8 text file (line {line} has the byte 0x{data[err.start]:02x}); "
            "a recipe is a small YAML file, saved as UTF-8"
        ) from None


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
    elif spec is not None and (mismatch := format_mismatch(format_name, spec)):
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
    if system_prompt is not None and (not isinstance(system_prompt, str) or is_blank(system_prompt)):
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
        module = _load_beside(local, recipe_dir)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        functions = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise UserError(f"`{module_name}` has no function `{fn_name}`{did_you_mean(fn_name, functions)}")
    return fn


def _load_beside(file: Path, folder: Path) -> Any:
    """The transform module `file` from the recipe's `folder`, which is importable while it loads, so the
    module can import a helper module beside it (`import helpers`), as it would run from that folder.

    sys.path gets the folder only while the module executes, and the helper modules it imported from there
    leave sys.modules afterwards (the transform keeps its own references): another recipe's folder may hold
    a helper of the same name, and must get its own. Import helpers at the module's top, not in a function.
    """
    module_spec = importlib.util.spec_from_file_location(f"_hftune_transform_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    entry, before = str(folder), set(sys.modules)
    sys.path.insert(0, entry)
    try:
        module_spec.loader.exec_module(module)
    except (ImportError, SyntaxError) as err:
        raise UserError(f"cannot load {file}: {type(err).__name__}: {err}") from err
    finally:
        if entry in sys.path:  # the one added, even if the module moved it
            sys.path.remove(entry)
        for name in set(sys.modules) - before:
            origin = getattr(sys.modules[name], "__file__", None)
            if origin and Path(origin).resolve().is_relative_to(folder.resolve()):
                del sys.modules[name]
    return module


def transform_files(spec: str, recipe_dir: Path | None) -> list[Path] | None:
    """The source files a `module:function` transform runs: its module's file and, transitively, the modules
    it imports that are found beside it (in its folder, or its package's, as `_resolve_transform` makes them
    importable), in a stable order. Installed libraries it imports are not followed. None when the module's
    file cannot be found (its rows are then never cached)."""
    module_name = spec.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is not None and found.origin and Path(found.origin).is_file():
        first = Path(found.origin)
        # The sys.path folder the module was found under: absolute imports beside it resolve from there.
        depth = module_name.count(".") + (first.name == "__init__.py")
        root = first.parents[depth]
        # An installed module: follow its own package only, never the libraries installed beside it.
        package = module_name.split(".")[0] if root.name in ("site-packages", "dist-packages") else None
    elif recipe_dir is not None and (recipe_dir / (module_name.replace(".", "/") + ".py")).is_file():
        first, root, package = recipe_dir / (module_name.replace(".", "/") + ".py"), recipe_dir, None
    else:
        return None
    files, todo = [first], [first]
    while todo:
        file = todo.pop()
        for imported in _local_imports(file, root, package):
            if imported not in files:
                files.append(imported)
                todo.append(imported)
    return sorted(files)


def _local_imports(file: Path, root: Path, package: str | None) -> list[Path]:
    """The files under `root` that `file`'s import statements (anywhere in it) name: `import a.b`, `from a
    import b` (a module or a name), `from . import b`; each package's `__init__.py` on the way included.
    With `package`, absolute imports of other top-level names are not followed."""
    if file.suffix != ".py":
        return []
    try:
        tree = ast.parse(file.read_bytes())
    except (SyntaxError, ValueError):
        return []  # hashed as bytes all the same; it cannot have run
    names: list[tuple[Path, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(root, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = root if node.level == 0 else file.parents[node.level - 1]
            module = node.module or ""
            names += [(base, module)] if module else []
            names += [(base, f"{module}.{alias.name}".strip(".")) for alias in node.names]
    found = []
    for base, dotted in names:
        if package and base == root and dotted.split(".")[0] != package:
            continue
        folder = base
        for part in dotted.split("."):
            for candidate in (folder / part / "__init__.py", folder / f"{part}.py"):
                if candidate.is_file() and candidate.resolve().is_relative_to(root.resolve()):
                    found.append(candidate)
            folder = folder / part
    return found
