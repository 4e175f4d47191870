"""Training curves of the evaluated policies, for results.json's `training` block and the report's plot.

An eval shows where each policy ended; its training log shows how it got there, and for a variant trained
with several seeds, whether the seeds took the same path (a seed that collapsed, or one whose KL ran away,
explains a wide seed interval). Each run folder already holds its per-step log: `metrics.jsonl` for an RL
run (the guardrails' rows: TRL's logs plus the rollout statistics, such as PPO's length), and
`log_history.json` for every trainer stage (the only log of a DPO run). This module keeps a few series of
it, downsampled, so results.json stays small and the report needs no run folder to draw them:

    "training": {"rlhf": {"metrics": {"reward": "objective/scores", "kl": "objective/kl", ...},
                          "runs": {"rlhf@ppo-seed1": {"step": [...], "reward": [...], "kl": [...]}}}}

A missing or unreadable log is skipped with a warning: the curves are context, never a reason to lose an
eval at its end.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from hftune.evaluation.suite import Suite, rlhf_runs, seed_runs

logger = logging.getLogger(__name__)

# Each quantity and the names trainers log it under, the first present wins. The RL names are those the
# guardrails read (hftune.stages.rl.guardrails: PPO's `objective/*` and `response/mean_length`, GRPO's and
# RLOO's `reward`, `kl`, `completions/mean_length`), repeated here because the eval imports no stage.
# `margin` is DPO's implicit reward margin (chosen minus rejected): not a reward-model score, so it gets a
# quantity of its own rather than sharing the reward axis.
QUANTITIES: dict[str, tuple[str, ...]] = {
    "reward": ("objective/scores", "reward"),
    "margin": ("rewards/margins",),
    "kl": ("objective/kl", "kl"),
    "length": ("response/mean_length", "completions/mean_length"),
}
LOGS = ("metrics.jsonl", "log_history.json")  # in order of preference: the first one found is read
MAX_POINTS = 200  # per run; a few hundred points already draw a smooth curve at report size


def training(suite: Suite) -> dict[str, dict[str, Any]]:
    """The `training` block of every trained (RLHF) variant of the suite whose run logs have a curve."""
    if "rlhf" not in suite.variants:
        return {}
    seeded = seed_runs(suite)
    out = {}
    for variant, folders in rlhf_runs(suite).items():
        block = variant_block(seeded.get(variant) or {variant: folders[0]})
        if block:
            out[variant] = block
    return out


def variant_block(runs: dict[str, str]) -> dict[str, Any] | None:
    """{"metrics": quantity -> the logged name, "runs": run name -> its series} for one variant's runs
    (run name -> folder); None when no run has a curve. `metrics` names the first run's choice: a variant's
    seeds run one recipe, so they log under the same names."""
    metrics: dict[str, str] = {}
    series = {}
    for run, folder in runs.items():
        got = read(folder)
        if got is None:
            continue
        keys, values = got
        for quantity, key in keys.items():
            metrics.setdefault(quantity, key)
        series[run] = values
    return {"metrics": metrics, "runs": series} if series else None


def read(folder: str | Path) -> tuple[dict[str, str], dict[str, list]] | None:
    """(quantity -> the logged name read, {"step": [...], quantity: [...]}) of one run folder's log, at most
    MAX_POINTS rows (first and last kept); a value a row lacks is None. None, with a warning, when the folder
    has no readable log or its log has none of QUANTITIES."""
    rows = _rows(Path(folder))
    if rows is None:
        return None
    keys = {q: k for q, names in QUANTITIES.items() if (k := _first_logged(rows, names)) is not None}
    steps = [r for r in rows if isinstance(r.get("step"), int)]
    rows = [r for r in steps if any(_number(r.get(k)) for k in keys.values())]
    if not rows:
        logger.warning("no training curve in %s: its log has none of %s", folder, ", ".join(QUANTITIES))
        return None
    rows = downsample(sorted(rows, key=lambda r: r["step"]), MAX_POINTS)
    values: dict[str, list] = {"step": [r["step"] for r in rows]}
    for quantity, key in keys.items():
        # 6 significant digits: far finer than a curve shows, and half the characters in results.json.
        values[quantity] = [float(f"{r[key]:.6g}") if _number(r.get(key)) else None for r in rows]
    return keys, values


def _rows(folder: Path) -> list[dict] | None:
    """The rows of the first log the folder has; None, with a warning, when it has none or cannot read it."""
    for name in LOGS:
        path = folder / name
        if not path.is_file():
            continue
        try:
            text = path.read_text()
            rows = (
                json.loads(text)
                if name.endswith(".json")
                else [json.loads(x) for x in text.splitlines() if x.strip()]
            )
        except (OSError, ValueError) as exc:
            logger.warning("training curve of %s skipped: cannot read %s (%s)", folder, path, exc)
            return None
        if not isinstance(rows, list):
            logger.warning("training curve of %s skipped: %s is not a list of rows", folder, path)
            return None
        return [r for r in rows if isinstance(r, dict)]
    logger.warning("no training curve for %s: it has no %s", folder, " or ".join(LOGS))
    return None


def _first_logged(rows: list[dict], names: tuple[str, ...]) -> str | None:
    return next((k for k in names if any(_number(r.get(k)) for r in rows)), None)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def downsample(rows: list, limit: int) -> list:
    """At most `limit` (>= 2) of `rows`, evenly spaced, the first and the last always kept."""
    if len(rows) <= limit:
        return rows
    picks = sorted({round(i * (len(rows) - 1) / (limit - 1)) for i in range(limit)})
    return [rows[i] for i in picks]
