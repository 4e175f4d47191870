"""bitsandbytes is imported only when a config asks for 4/8-bit loading: importing it costs seconds, and on
a CPU with AVX512-BF16 it fetches a kernel from the Hub at import (see cli.py's `kernels` note)."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
QUANTISED = ("bitsandbytes", "BitsAndBytesConfig", "prepare_model_for_kbit_training")


class _ImportsOnImport(ast.NodeVisitor):
    """The names a module imports outside any function: what importing the module imports."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def visit_FunctionDef(self, node) -> None:  # a function's imports run when it is called
        return None

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        self.names += [alias.name for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.names += [node.module or ""] + [alias.name for alias in node.names]


def _module_level_imports(path: Path) -> list[str]:
    visitor = _ImportsOnImport()
    visitor.visit(ast.parse(path.read_text()))
    return visitor.names


def test_no_hftune_module_imports_bitsandbytes_when_imported():
    """Every import of bitsandbytes or of PEFT's / transformers' quantisation helpers is inside the code that
    loads a model quantised, never at a module's top (which every command would pay)."""
    found = [
        f"{path.relative_to(REPO)}: {name}"
        for path in sorted((REPO / "hftune").rglob("*.py"))
        for name in _module_level_imports(path)
        if any(name == q or name.startswith(f"{q}.") for q in QUANTISED)
    ]
    assert found == []


# A full-precision SFT run in its own process; prints the bitsandbytes modules imported by the end.
_SFT = """
import json, sys
from hftune import cli
code = cli.main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "bitsandbytes")
print(json.dumps({"code": code, "loaded": loaded}))
"""


def test_a_full_precision_sft_never_imports_bitsandbytes(tmp_path, tiny_llama):
    """The cheapest training run, one step of full fine-tuning: nothing in hftune, TRL's configs or
    transformers' Trainer may import bitsandbytes when no 4/8-bit loading is asked for. (Not LoRA: PEFT
    0.22's LoRA layers still import bitsandbytes whenever it is installed, to dispatch quantised linear
    layers, which hftune does not control.)"""
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed: nothing could import it")
    if Version(metadata.version("peft")) < Version("0.22"):
        pytest.skip("PEFT before 0.22 imports bitsandbytes itself whenever it is imported")
    argv = [
        "sft",
        "--config", str(REPO / "configs/tiny/sft_full.yaml"),
        "--model_name_or_path", tiny_llama,
        "--output_dir", str(tmp_path / "sft"),
        "--max_steps", "1",
        "--max_samples", "16",
        "--eval_fraction", "0",
        "--save_strategy", "no",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", _SFT, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "loaded": []}, result
