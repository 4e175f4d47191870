"""Sources: reading a recipe's raw rows, from a local file or a Hub dataset, and checking their columns.

Local json/jsonl/csv/txt files are read by `hftune.data.files`, text exactly as written; parquet files and
Hub datasets by `datasets`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow

from hftune.data.converters import CONVERTERS
from hftune.data.files import read_file
from hftune.data.recipe import LOCAL_BUILDERS, Recipe, Source
from hftune.errors import UserError, did_you_mean

logger = logging.getLogger("hftune.data")


def resolve_source_path(recipe: Recipe) -> Path:
    """The recipe's local data file: as given when absolute, else next to the recipe file, then in the cwd."""
    path = Path(recipe.source.path)
    if path.is_absolute() or path.is_dir():
        return path
    tried = ([recipe.path.parent / path] if recipe.path else []) + [Path.cwd() / path]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise UserError(
        f"recipe {recipe.name}: data file `{recipe.source.path}` not found (looked in "
        + ", ".join(str(p) for p in tried)
        + ")"
    )


def _load_local(path: Path, max_rows: int | None) -> tuple[Sequence[Mapping[str, Any]], list[str]]:
    if path.is_dir():
        raise UserError(f"data file {path} is a folder; give the file itself")
    if not path.is_file():
        raise UserError(f"data file {path} not found")
    builder = LOCAL_BUILDERS.get(path.suffix)
    if builder is None:
        raise UserError(
            f"data file {path}: unsupported type `{path.suffix}`; use one of {', '.join(LOCAL_BUILDERS)}"
        )
    if builder != "parquet":
        # Read by hftune, not datasets: its type inference rewrites text (a CSV `007` trained as "7.0").
        found = read_file(path, builder)
        return found.rows[:max_rows], found.columns
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
    except datasets.exceptions.DatasetGenerationError as err:
        raise UserError(f"could not read {path}: {err.__cause__ or err}") from err
    except (pyarrow.ArrowException, OSError, ValueError) as err:  # empty, truncated, not parquet at all
        raise UserError(f"could not read {path} as parquet: {err}") from None
    return _first(dataset, max_rows), dataset.column_names


def _first(dataset: datasets.Dataset, max_rows: int | None) -> datasets.Dataset:
    return dataset if max_rows is None else dataset.select(range(min(max_rows, len(dataset))))


def _load_hub(source: Source) -> datasets.Dataset:
    try:
        return datasets.load_dataset(source.hub, source.config, split=source.split, revision=source.revision)
    except (ConnectionError, FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        raise UserError(
            f"could not load {source.describe()}: {err}\n"
            "Offline? Pass a local file in the same schema with `data_files` (json/jsonl/csv/parquet/txt)."
        ) from err


def _load_folder(folder: Path, split: str, max_rows: int | None) -> tuple[list[Mapping[str, Any]], list[str]]:
    """A folder of data files (`dataset_name: data/`), as `datasets` reads one: the files named for the
    split (`train.jsonl`, `train-00000-of-00002.parquet`) when there are any, else all of them for `train`."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in LOCAL_BUILDERS and not any(part.startswith(".") for part in p.parts)
    )
    named = [p for p in files if p.name.startswith(split) or p.parent.name == split]
    chosen = named or (files if split == "train" else [])
    if not chosen:
        found = ", ".join(p.name for p in files[:5]) or "no data files"
        raise UserError(
            f"{folder}: no data file for split `{split}` (found {found}); "
            f"files named `{split}*` are that split"
        )
    rows: list[Mapping[str, Any]] = []
    columns: list[str] | None = None
    for path in chosen:
        found, found_columns = _load_local(path, None if max_rows is None else max_rows - len(rows))
        if columns is not None and set(found_columns) != set(columns):
            raise UserError(
                f"{path}: columns {', '.join(found_columns)} differ from those of {chosen[0].name} "
                f"({', '.join(columns)})"
            )
        columns = columns or list(found_columns)
        rows.extend(found)
        if max_rows is not None and len(rows) >= max_rows:
            break
    return rows, columns or []


def load_rows(
    recipe: Recipe, data_files: str | os.PathLike | None, max_rows: int | None = None
) -> tuple[Sequence[Mapping[str, Any]], list[str], str]:
    """The raw rows (the first `max_rows`), their columns, and where they came from: `data_files` when given,
    else the recipe's own source. Local json/jsonl/csv/txt rows hold the text exactly as the file wrote it
    (see hftune.data.files); parquet and Hub rows are a `datasets.Dataset`."""
    if data_files is not None:
        return *_load_local(Path(data_files), max_rows), str(data_files)
    if recipe.source.path:
        path = resolve_source_path(recipe)
        if path.is_dir():
            return *_load_folder(path, recipe.source.split, max_rows), str(path)
        return *_load_local(path, max_rows), str(path)
    dataset = _load_hub(recipe.source)
    return _first(dataset, max_rows), dataset.column_names, recipe.source.describe()


def unread_columns(recipe: Recipe, columns: Sequence[str]) -> list[str]:
    """The columns of the data that the recipe's converter does not read (none are known with a transform,
    whose output columns only its rows show)."""
    if recipe.transform_fn is not None:
        return []
    read = {recipe.mapping[f] for f in CONVERTERS[recipe.converter].columns}
    return [column for column in columns if column not in read]


def check_columns(recipe: Recipe, columns: list[str], label: str) -> None:
    """Refuse (one UserError for all) rows that lack a column the recipe's converter reads; say which columns
    it leaves unread, since their content does not reach the model."""
    spec = CONVERTERS[recipe.converter]
    if unread := unread_columns(recipe, columns):
        logger.info(
            "%s: columns ignored (the `%s` converter does not read them): %s",
            label,
            spec.name,
            ", ".join(unread),
        )
    missing = [
        (f, recipe.mapping[f])
        for f in spec.columns
        if recipe.mapping[f] not in columns and (f not in spec.optional or f in recipe.explicit_mapping)
    ]
    if missing:
        lines = [
            f"column `{column}` not found in {label} (the `{spec.name}` converter's `{f}` field)"
            f"{did_you_mean(column, columns)}"
            for f, column in missing
        ]
        raise UserError(
            "\n".join(lines) + f"\ncolumns in {label}: {', '.join(columns)}\n"
            f"Point the recipe's `mapping` at the right column, e.g. mapping: {{{missing[0][0]}: <column>}}"
        )
