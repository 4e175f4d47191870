"""Where a stage's rows come from: one recipe, a mixture of recipes, or a dataset in a TRL format.

    data_recipe: tiny_alpaca                    # one recipe
    data_recipe:                                # a mixture: each part prepared on its own, then combined
      - tiny_alpaca
      - {recipe: tiny_dolly, max_samples: 100, weight: 2.0, data_files: dolly.jsonl}
    dataset_name: data/chats.jsonl              # TRL's ScriptArguments: rows in a TRL format, detected

`data_parts` turns a stage's settings into `Part`s (checked: every problem at once); `prepare_parts`
prepares each part with `prepare_dataset` (the same checks, drops and held-out rule), applies the weights
and combines them, keeping per-part counts for the log and the manifest.

A weight scales how many training rows a part contributes: 2.0 repeats each of its rows twice, 0.5 keeps
a seeded half. Held-out rows are never weighted: every part's held-out prompts are held out once. A weight
is at most `MAX_WEIGHT`: the repeats are real rows in memory (a weight of 1e7 on a few hundred rows grew the
process past 4 GB), and a weight is a ratio between parts, so a larger one is written as smaller weights on
the other parts (any weight above 0 still contributes a row). A part names its recipe and data once: the
same rows twice would be held out and trained on twice; `weight` is how a part gets more.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from hftune.data.detect import dataset_recipe
from hftune.data.prepare import PreparedData, prepare_dataset
from hftune.data.recipe import Recipe, load_recipe
from hftune.errors import UserError, did_you_mean

logger = logging.getLogger("hftune.data")

PART_KEYS = ("recipe", "data_files", "max_samples", "weight")
MAX_WEIGHT = 1000.0  # see the module docstring: repeats are rows in memory, and weights are ratios


@dataclass(frozen=True)
class Part:
    recipe: Recipe
    data_files: str | None = None
    max_samples: int | None = None
    weight: float = 1.0

    @property
    def name(self) -> str:
        return self.recipe.name


def mixture_problems(value: Any) -> list[str]:
    """Why a `data_recipe` value is malformed (no file is read): a name, or a list of names and mappings."""
    if value is None or isinstance(value, str):
        return []
    if not isinstance(value, list) or not value:
        return ["`data_recipe`: a recipe name or path, or a non-empty list of them (a mixture)"]
    problems = []
    for i, item in enumerate(value):
        where = f"`data_recipe[{i}]`"
        if isinstance(item, str):
            continue
        if not isinstance(item, dict):
            problems.append(f"{where}: a recipe name, or a mapping with keys {', '.join(PART_KEYS)}")
            continue
        for key in item:
            if key not in PART_KEYS:
                problems.append(f"{where}.{key}: unknown key{did_you_mean(str(key), PART_KEYS)}")
        if not isinstance(item.get("recipe"), str):
            problems.append(f"{where}.recipe: required, a recipe name or path")
        if item.get("data_files") is not None and not isinstance(item["data_files"], str):
            problems.append(f"{where}.data_files: must be a file path")
        samples = item.get("max_samples")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            problems.append(f"{where}.max_samples: must be a whole number >= 1, got {samples!r}")
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not (0 < weight < math.inf):
            problems.append(f"{where}.weight: must be a positive number, got {weight!r}")
        elif weight > MAX_WEIGHT:
            problems.append(
                f"{where}.weight: {weight!r} is over {MAX_WEIGHT:g}; a weight repeats its rows in memory, "
                "and weights are ratios between parts: give the other parts smaller weights instead"
            )
    return problems


def data_parts(extras: Any, script: Any = None) -> list[Part]:
    """The parts a stage reads, from its `data_recipe` (one or a mixture), `data_files`, `max_samples` and
    TRL's `dataset_name` / `dataset_config` / `dataset_train_split` (`script`). With `dataset_name` and a
    recipe, the recipe reads `dataset_name` instead of its own source."""
    value = extras.data_recipe
    name = getattr(script, "dataset_name", None)
    if value is None and name is None:
        raise UserError("no data: set `data_recipe` (a recipe, or a list of them) or `dataset_name`")
    if problems := mixture_problems(value):
        raise UserError("\n".join(problems))
    if isinstance(value, list):
        if name is not None or extras.data_files is not None:
            raise UserError(
                "`data_recipe` is a mixture: give each part its own `data_files` instead of a top-level "
                "`data_files` / `dataset_name`"
            )
        return _distinct([_part(item, extras.max_samples) for item in value])
    if name is not None:
        if extras.data_files is not None:
            raise UserError("`dataset_name` and `data_files`: choose one (both say where the rows are)")
        config, split = (
            getattr(script, "dataset_config", None),
            getattr(script, "dataset_train_split", "train"),
        )
        auto = dataset_recipe(name, config, split)
        recipe = auto if value is None else load_recipe(value).replaced(source=auto.source)
        return [Part(recipe, None, extras.max_samples)]
    return [Part(load_recipe(value), extras.data_files, extras.max_samples)]


def _part(item: str | dict, max_samples: int | None) -> Part:
    if isinstance(item, str):
        return Part(load_recipe(item), None, max_samples)
    return Part(
        load_recipe(item["recipe"]),
        item.get("data_files"),
        item.get("max_samples", max_samples),
        float(item.get("weight", 1.0)),
    )


def _distinct(parts: list[Part]) -> list[Part]:
    """The mixture's parts, refused when two read the same recipe file on the same data: that part's rows
    would be held out twice and trained on twice, which no one means; `weight` gives a part more rows."""
    seen: dict[tuple[str, str], int] = {}
    for i, part in enumerate(parts):
        recipe = str(part.recipe.path or part.recipe.name)
        data = str(Path(part.data_files).resolve()) if part.data_files else part.recipe.source.describe()
        first = seen.setdefault((recipe, data), i)
        if first != i:
            rows = f"data_files {part.data_files}" if part.data_files else f"its source {data}"
            raise UserError(
                f"`data_recipe[{i}]`: the same recipe ({part.name}) on the same data ({rows}) as "
                f"`data_recipe[{first}]`; a mixture names each part once: to give it more rows, set its "
                "`weight` (e.g. weight: 2.0)"
            )
    return parts


def prepare_parts(parts: list[Part], **kwargs: Any) -> PreparedData:
    """Every part prepared by `prepare_dataset(**kwargs)`, weighted and combined (one part of weight 1 is
    returned as prepared). All parts must yield the same TRL format."""
    seed = kwargs.get("seed", 0)
    prepared = [
        prepare_dataset(part.recipe, data_files=part.data_files, max_rows=part.max_samples, **kwargs)
        for part in parts
    ]
    if len(parts) == 1 and parts[0].weight == 1.0:
        return prepared[0]
    formats = {data.format for data in prepared}
    if len(formats) > 1:
        listed = ", ".join(f"{part.name}: {data.format}" for part, data in zip(parts, prepared, strict=True))
        raise UserError(f"the mixture's parts yield different TRL formats ({listed}); give them one `format`")
    margins = {data.train.column_names.count("margin") for data in prepared}
    if len(margins) > 1:
        raise UserError("in a mixture of preference data, every part or none must have a `margin` column")
    return _combine(parts, prepared, seed)


def read_as(parts: list[Part], data: PreparedData) -> Recipe:
    """The recipe the prepared rows were read with: the first part's, with the converter and format they
    were read as (detected, for `dataset_name` data), named for every part of a mixture."""
    name = " + ".join(part.name for part in parts)
    return parts[0].recipe.replaced(converter=data.converter, format=data.format, name=name)


def _weighted(n: int, weight: float, rng: random.Random) -> list[int]:
    """Row positions for a part of `n` training rows at `weight`: each row floor(weight) times, plus a
    seeded sample of the fractional part."""
    whole, frac = divmod(weight, 1.0)
    picks = [i for _ in range(int(whole)) for i in range(n)]
    extra = round(frac * n)
    picks += sorted(rng.sample(range(n), extra)) if extra else []
    return picks or [rng.randrange(n)]  # a tiny weight still contributes a row


def _combine(parts: list[Part], prepared: list[PreparedData], seed: int) -> PreparedData:
    train_rows, eval_rows, sources = [], [], []
    combined: dict[str, Any] = {
        "dropped": {},
        "dropped_pairs": {},
        "train_indices": [],
        "eval_indices": [],
        "train_keys": [],
        "eval_keys": [],
        "truncated": [],
        "token_lengths": [],
    }
    offset = 0  # row indices of later parts follow the earlier parts' rows, so every index is one row
    digest = hashlib.sha256()
    for k, (part, data) in enumerate(zip(parts, prepared, strict=True)):
        picks = _weighted(len(data.train), part.weight, random.Random(f"{seed}:{k}:{part.name}"))
        train = data.train.to_list()
        train_rows += [train[i] for i in picks]
        combined["train_indices"] += [data.train_indices[i] + offset for i in picks]
        combined["train_keys"] += [data.train_keys[i] for i in picks]
        if data.eval is not None:
            eval_rows += data.eval.to_list()
            combined["eval_indices"] += [i + offset for i in data.eval_indices]
            combined["eval_keys"] += data.eval_keys
        combined["truncated"] += [i + offset for i in data.truncated]
        combined["token_lengths"] += data.token_lengths or []
        for field in ("dropped", "dropped_pairs"):
            for reason, n in getattr(data, field).items():
                combined[field][reason] = combined[field].get(reason, 0) + n
        digest.update(f"{part.name}:{part.weight}:{data.fingerprint}\n".encode())
        sources.append(
            {
                "recipe": part.name,
                "source": data.source,
                "weight": part.weight,
                "max_samples": part.max_samples,
                "n_source_rows": data.n_source_rows,
                "n_train": len(picks),
                "n_eval": len(data.eval) if data.eval is not None else 0,
                "dropped": data.dropped,
            }
        )
        offset += data.n_source_rows
    result = PreparedData(
        train=datasets.Dataset.from_list(_aligned(train_rows)),
        eval=datasets.Dataset.from_list(_aligned(eval_rows)) if eval_rows else None,
        examples={},
        n_source_rows=offset,
        fingerprint=digest.hexdigest(),
        source=" + ".join(data.source for data in prepared),
        max_length=prepared[0].max_length,
        n_pairs=None if prepared[0].n_pairs is None else len(train_rows) + len(eval_rows),
        converter=prepared[0].converter,
        format=prepared[0].format,
        sources=sources,
        **{**combined, "token_lengths": combined["token_lengths"] or None},
    )
    for source in sources:
        logger.info(
            "mixture part %s (weight %g): %d training rows, %d held out, of %d source rows",
            source["recipe"],
            source["weight"],
            source["n_train"],
            source["n_eval"],
            source["n_source_rows"],
        )
    return result


def _aligned(rows: list[dict]) -> list[dict]:
    """Rows with the same keys (a part without tools gets `tools: None`): `Dataset.from_list` takes its
    columns from the first row, and would silently drop a column the first part lacks."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return [{key: row.get(key) for key in keys} for row in rows]
