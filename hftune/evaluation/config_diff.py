"""What differs between the evaluated variants' training configs, for the report's "Config diff" table.

Each trained variant's folder holds the config it trained with (`config.hftune.yaml`, written by its stage).
Two variants are compared on the keys both configs have: a key whose value is the same everywhere, or that
only one stage has, says nothing about why the two models differ and is left out (it is in that run's
config.hftune.yaml). A variant trained with several seeds is one column: a key on which its runs disagree
shows each run's value, so `seed: 1, 2, 3` reads as what it is. Paths that only name the run itself
(`output_dir`, `logging_dir`, `run_name`) are never a difference worth showing.

Computed when the eval runs (the folders may be gone when a report is re-rendered) and kept in results.json:

    {"variants": ["base", "sft", "rlhf"], "keys": {"learning_rate": {"sft": "2e-05", "rlhf": "1e-05"}, ...},
     "unread": {"dpo": "no config.hftune.yaml"}}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

CONFIG = "config.hftune.yaml"
IGNORED = frozenset({"output_dir", "logging_dir", "run_name", "hub_model_id"})
MAX_VALUE = 80  # characters of one value shown; a longer one is cut with "…"


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("\n...").strip()
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def _read(folder: str) -> dict[str, Any] | None:
    path = Path(folder) / CONFIG
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        logger.debug("config diff: %s not read: %s", path, exc)
        return None
    return _flat(data) if isinstance(data, dict) else None


def _column(configs: list[dict[str, Any]]) -> tuple[dict[str, str], set[str]]:
    """One variant's values (a key every run has, with each run's value when the runs disagree) and the keys
    on which its runs disagree."""
    keys = set.intersection(*(set(c) for c in configs))
    out, varied = {}, set()
    for key in keys - IGNORED:
        values = [_text(c[key]) for c in configs]
        if len(set(values)) > 1:
            varied.add(key)
        out[key] = values[0] if key not in varied else ", ".join(values)
    return out, varied


def config_diff(models: dict[str, str | list[str] | None]) -> dict[str, Any] | None:
    """The differing keys of the variants' configs (variant -> its folder, or its seed runs' folders; a hub id
    or None is skipped quietly, a local folder without a readable config is listed under `unread`). None
    when fewer than two variants have a config."""
    columns: dict[str, dict[str, str]] = {}
    varied: set[str] = set()  # keys on which some seeded variant's runs disagree
    unread: dict[str, str] = {}
    for name, model in models.items():
        folders = model if isinstance(model, list) else [model] if model else []
        if not folders or not all(Path(f).is_dir() for f in folders):
            continue
        configs = [_read(f) for f in folders]
        if any(c is None for c in configs):
            unread[name] = f"no readable {CONFIG}"
            continue
        columns[name], disagree = _column(configs)
        varied |= disagree
    if len(columns) < 2:
        return None
    keys = {}
    for key in sorted({k for column in columns.values() for k in column}):
        values = {name: column[key] for name, column in columns.items() if key in column}
        if len(values) >= 2 and (len(set(values.values())) > 1 or key in varied):
            keys[key] = values
    # `stage` first: it says what kind of training each column is.
    ordered = {k: keys[k] for k in ("stage", "algorithm") if k in keys}
    ordered.update((k, v) for k, v in keys.items() if k not in ordered)
    return {"variants": list(columns), "keys": ordered, "unread": unread}
