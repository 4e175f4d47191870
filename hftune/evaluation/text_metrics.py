"""Text metrics as `evaluate` modules under `eval/metrics/<name>/<name>.py`, loaded by path so nothing is
fetched at run time. Each module returns per-example `scores`; the harness aggregates them itself with a
paired bootstrap over prompts."""

from __future__ import annotations

import functools
from typing import Any

from hftune.errors import UserError
from hftune.resources import builtin_dir

METRICS_DIR = builtin_dir("eval") / "metrics"


@functools.cache
def load(name: str):
    import evaluate

    path = METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        raise UserError(f"metric module not found: {path} (is hftune installed with its eval/ folder?)")
    # keep_in_memory: no scratch Arrow files or locks, which a failed compute would otherwise leave behind.
    return evaluate.load(str(path), keep_in_memory=True)


def compute(name: str, **inputs: Any) -> dict[str, Any]:
    return load(name).compute(**inputs)
