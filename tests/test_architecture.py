"""The layout's rules, checked on the source: no import cycle, stages never import each other, the eval
never imports a stage, no private name crosses a module, one module imports TRL's experimental trainers
(PPO is hftune's own), and `--help` answers without torch, transformers or TRL."""

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
    assert {"hftune.cli", "hftune.stages.registry", "hftune.stages.sft", "hftune.stages.rl.ppo"} <= set(GRAPH)
    assert "hftune.stages.common" in GRAPH["hftune.stages.sft"] or "hftune.stages.common" in _reachable(
        "hftune.stages.sft"
    )


def test_no_import_cycle():
    cycles = sorted(name for name in GRAPH if name in _reachable(name))
    assert not cycles, f"modules that import themselves through others: {cycles}"


def test_stages_never_import_each_other():
    stage_modules = {
        spec.module for spec in registry.STAGES.values() if spec.module.startswith("hftune.stages")
    }
    assert len(stage_modules) >= 4  # pretrain, sft, reward, rl
    for name in stage_modules:
        others = (_reachable(name) & stage_modules) - {name}
        assert not others, f"{name} imports the stage module(s) {sorted(others)}"


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
    assert _importers("trl.experimental") == ["hftune.stages.po.trainers"]


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
