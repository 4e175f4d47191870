"""The layout's rules, checked on the source: no import cycle, the core imports only the core, `models/`
imports no layer above it, stages never import each other, the eval never imports a stage, the label tool
borrows only the eval's statistics, the CLI only parses and dispatches, no private name crosses a module,
one module imports TRL's experimental trainers (PPO is hftune's own), and `--help` answers without torch,
transformers or TRL."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from hftune.stages import registry

PACKAGE = Path(__file__).resolve().parent.parent / "hftune"
HEAVY = ("torch", "transformers", "trl", "datasets", "peft", "accelerate")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` except those under `if TYPE_CHECKING:` (imports for type hints, never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if test is not None and "TYPE_CHECKING" in ast.unparse(test):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def _imports(name: str) -> dict[str, set[str]]:
    """hftune modules `name` imports (anywhere in the file, function-level imports included) -> the names
    it takes from each (empty for `import x` / `from pkg import submodule`)."""
    found: dict[str, set[str]] = {}
    for node in _runtime_nodes(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(name, node)
            if not source.startswith("hftune"):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in MODULES:
                    found.setdefault(submodule, set())
                elif source in MODULES:
                    found.setdefault(source, set()).add(alias.name)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_import_graph_covers_the_package():
    assert {"hftune.cli", "hftune.stages.registry", "hftune.stages.sft", "hftune.stages.ppo"} <= set(GRAPH)
    assert "hftune.stages.common" in GRAPH["hftune.stages.sft"] or "hftune.stages.common" in _reachable(
        "hftune.stages.sft"
    )


def test_no_import_cycle():
    cycles = sorted(name for name in GRAPH if name in _reachable(name))
    assert not cycles, f"modules that import themselves through others: {cycles}"


# The core: the modules every layer may use, which import nothing above them. The face (the command line,
# and the pipeline that orchestrates the stages) sits on top; everything else is a layer in a folder.
CORE = {
    "hftune",  # __version__
    "hftune.errors",
    "hftune.yaml_loading",
    "hftune.config",
    "hftune.artifacts",
    "hftune.distributed",
    "hftune.lineage",
    "hftune.resources",
    "hftune.logs",
}
FACE = {
    "hftune.cli",
    "hftune.__main__",
    "hftune.pipeline",
    "hftune.process_exit",
    "hftune.quick_fingerprint",
    "hftune.side_by_side",
}
LAYERS = {
    "hftune.data",
    "hftune.models",
    "hftune.stages",
    "hftune.evaluation",
    "hftune.label",
    "hftune.publish",
}


def test_every_top_level_module_is_core_face_or_a_layer():
    # A new module at the top is placed deliberately: in the core (imports only the core) or the face.
    top = {_module_name(p) for p in [*PACKAGE.glob("*.py"), *PACKAGE.glob("*/__init__.py")]}
    unplaced = sorted(top - CORE - FACE - LAYERS)
    assert not unplaced, f"top-level modules in neither CORE nor FACE: {unplaced}"


def test_the_core_imports_only_the_core():
    for name in CORE:
        above = sorted(set(GRAPH[name]) - CORE)
        assert not above, f"{name} (core) imports {above}"


def test_models_never_import_a_layer_above_them():
    above = ("hftune.evaluation", "hftune.label", "hftune.stages", "hftune.publish", *FACE)
    for name in MODULES:
        if name.startswith("hftune.models"):
            found = sorted(m for m in _reachable(name) if m.startswith(above))
            assert not found, f"{name} imports {found}"


def test_the_label_tool_borrows_only_the_evals_statistics():
    # Generation, the cache and the prompts of a row live in models/ and data/, which label and the eval
    # share; the paired bootstrap is the eval's, and label's agreement interval uses it.
    for name in MODULES:
        if name.startswith("hftune.label"):
            found = sorted(m for m in _reachable(name) if m.startswith("hftune.evaluation"))
            assert found in ([], ["hftune.evaluation.stats"]), f"{name} imports {found}"


# What the CLI may define: argument parsing, one `_cmd_X` per command that checks how its arguments combine
# and calls one function of the command's module, help text, logging setup and error printing.
CLI_DEFINES = {
    "entry",  # the console script: main(), then hftune.process_exit
    "main",
    "build_parser",
    "_Parser",
    "_stage_help",
    "_print_all_fields",
    "_pipeline_help",
}
# The hftune modules it may import: the commands' modules, the registry, and the plumbing of parsing,
# logging, locking and errors. Data, model and stage internals stay behind the commands' modules.
CLI_IMPORTS = {
    "hftune",  # __version__
    "hftune.logs",
    "hftune.errors",
    "hftune.config",  # describe_fields for --help, ConfigError
    "hftune.artifacts",  # the output lock, the full-disk message
    "hftune.distributed",
    "hftune.stages.registry",
    "hftune.stages.common",  # HARDWARE_DEFAULTS for --help
    "hftune.pipeline",
    "hftune.data",  # `data list`
    "hftune.stages.preview",
    "hftune.label.config",
    "hftune.label.serve",
    "hftune.label.stats",
    "hftune.label.auto",
    "hftune.models.tiny",
    "hftune.publish.card",
    "hftune.publish.hub",
    "hftune.publish.merge",
    "hftune.process_exit",
}


def test_the_cli_only_parses_and_dispatches():
    tree = ast.parse(MODULES["hftune.cli"].read_text())
    defined = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    commands = {f"_cmd_{c}" for c in ("stage", "pipeline", "data", "label", "tiny", "card", "push", "merge")}
    extra = sorted(defined - CLI_DEFINES - commands)
    assert not extra, f"cli.py defines {extra}: logic belongs in the module the command dispatches to"
    imported = sorted(set(GRAPH["hftune.cli"]) - CLI_IMPORTS)
    assert not imported, f"cli.py imports {imported}: dispatch to the command's module instead"


def test_stages_never_import_each_other():
    stage_modules = {
        spec.module for spec in registry.STAGES.values() if spec.module.startswith("hftune.stages")
    }
    assert len(stage_modules) >= 4  # pretrain, sft, reward, rl
    for name in stage_modules:
        others = (_reachable(name) & stage_modules) - {name}
        assert not others, f"{name} imports the stage module(s) {sorted(others)}"


def _constructed(module: str) -> set[str]:
    """The names called like a trainer class in `module`: `XTrainer(...)`, or `trainer_class(...)` where the
    class depends on the algorithm."""
    return {
        node.func.id
        for node in ast.walk(ast.parse(MODULES[module].read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and (node.func.id.endswith("Trainer") or node.func.id == "trainer_class")
    }


def test_each_training_stage_is_one_file_that_builds_its_trainer():
    # A reader of `hftune X` opens hftune/stages/X.py and finds the trainer constructed there, in order, not
    # behind a hook in a shared module; several algorithms of one command share that command's file.
    training = {spec.command for spec in registry.STAGES.values() if spec.trains}
    assert training == {"pretrain", "sft", "reward", "ppo", "dpo"}
    for command in training:
        module = registry.STAGES[command].module
        assert module == f"hftune.stages.{command}", f"`hftune {command}` lives in {module}"
        assert _constructed(module), f"{module} builds no trainer itself"
    for shared in ("hftune.stages.common", "hftune.stages.causal_lm"):
        assert not _constructed(shared), f"{shared} builds a trainer: that is each stage's to do"


def test_the_eval_never_imports_a_stage():
    for name in MODULES:
        if name.startswith("hftune.evaluation"):
            stages = sorted(m for m in _reachable(name) if m.startswith("hftune.stages"))
            assert not stages, f"{name} imports {stages}"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_crosses_a_module():
    crossing = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        # `from hftune.x import _private`
        for imported, names in GRAPH[name].items():
            crossing += [f"{name} imports {imported}.{n}" for n in names if _private(n)]
        # `module._private` where `module` is an imported hftune module
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _resolve(name, node).startswith("hftune"):
                for alias in node.names:
                    if f"{_resolve(name, node)}.{alias.name}" in MODULES:
                        aliases[alias.asname or alias.name] = f"{_resolve(name, node)}.{alias.name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _private(node.attr)
            ):
                crossing.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    assert not crossing, "\n".join(crossing)


def _importers(prefix: str) -> list[str]:
    return sorted(
        name
        for name, path in MODULES.items()
        if any(
            (isinstance(n, ast.ImportFrom) and (n.module or "").startswith(prefix))
            or (isinstance(n, ast.Import) and any(a.name.startswith(prefix) for a in n.names))
            for n in ast.walk(ast.parse(path.read_text()))
        )
    )


def test_trl_experimental_is_imported_by_one_module_a_stage():
    # ORPO / CPO (experimental in TRL) in one module; PPO (removed from TRL in 1.13) is hftune's own.
    assert _importers("trl.experimental.ppo") == []
    assert _importers("trl.experimental") == ["hftune.stages.dpo"]


COMMANDS = ["", *registry.COMMANDS, "pipeline", "data", "tiny", "card", "push", "merge"]

# One process for every command: each `--help` must leave the heavy libraries unimported, and the first that
# imports one is named.
_HELP_SCRIPT = """
import contextlib, io, sys
from hftune import cli
heavy = {heavy!r}
for command in {commands!r}:
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        cli.main([command, "--help"] if command else ["--help"])
    assert "usage: hftune" in out.getvalue(), command
    loaded = sorted(m for m in heavy if m in sys.modules)
    if loaded:
        sys.exit(f"`hftune {{command}} --help` imported {{loaded}}")
"""


@pytest.mark.integration  # launches a process
def test_help_imports_no_heavy_library():
    script = _HELP_SCRIPT.format(heavy=HEAVY, commands=COMMANDS)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(registry.STAGES))
def test_every_registered_stage_offers_the_stage_interface(name):
    module = registry.load(name)
    for function in ("schema", "parse", "run", "summary"):
        assert callable(getattr(module, function, None)), f"{module.__name__} lacks {function}()"
    options = registry.options(name)
    assert isinstance(options.EXTRAS, type) and isinstance(options.DEFAULTS, dict)
    assert isinstance(options.TRL_CONFIGS, tuple)
