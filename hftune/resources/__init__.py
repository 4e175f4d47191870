"""hftune's built-in files, shipped as package data: `data_recipes/` (recipes and their fixtures) and `eval/`
(suites and metrics). In a checkout these are links to the repo's top-level folders; an installed package
holds copies (setup.cfg's package_data), so both are found the same way, through importlib.resources."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from hftune.errors import UserError


def builtin_dir(name: str) -> Path:
    """The folder of built-in files `name` (`data_recipes`, `eval`)."""
    return Path(str(resources.files(__name__) / name))


def eval_suite(name_or_path: str) -> str:
    """A suite given as a file path is used as is; a bare name (`tiny`) is a built-in suite."""
    if Path(name_or_path).exists() or "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        return name_or_path
    builtin = builtin_dir("eval") / "suites" / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise UserError(
            f"unknown eval suite `{name_or_path}`: neither a file nor a built-in suite "
            f"({', '.join(list_eval_suites())}); give a path to a suite .yaml file"
        )
    return str(builtin)


def list_eval_suites() -> list[str]:
    return sorted(p.stem for p in (builtin_dir("eval") / "suites").glob("*.yaml"))
