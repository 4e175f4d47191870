"""Streaming a plain-text corpus too large for memory (`hftune pretrain` with `dataset_streaming: true`).

Owns reading a `language_modeling` recipe's source lazily as a `datasets.IterableDataset`: a local `.txt`
(one document a line) or `.jsonl` file is read line by line, never whole; a `.parquet` file or a Hub
dataset through `datasets.load_dataset(..., streaming=True)`. Each row meets the recipe's converter and
checks as `prepare.prepare_dataset` applies them (bad rows, blank ones included, are skipped and counted by
reason, or stop the run with `strict`), and the held-out rule is the same (`prompt_keys.is_held_out` on
the row's key, plus the prompts an earlier stage held out), so the eval's held-out documents and the
contamination audit hold whether or not a corpus is streamed.

What streaming cannot give, and what it gives instead:
- no eval split: a held-out document is skipped and its key recorded, but no eval loss is computed (the
  held-out part of an unbounded stream cannot be measured without reading all of it);
- no up-front row count or content hash: counts grow as rows are read, and the fingerprint is the
  source's identity (file size and modification time, or the Hub revision);
- the keys recorded as trained are those of every document read into TRL's packer. TRL packs 1,000
  streamed documents at a time, so that can include documents read ahead but not reached before
  `max_steps`: a superset of what trained, which errs on the side of the contamination audit.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from hftune.data.converters import CONVERTERS
from hftune.data.files import JsonFloat, JsonInt
from hftune.data.formats import FORMATS, KINDS
from hftune.data.prepare import apply_transform
from hftune.data.problems import RowProblem, format_counts
from hftune.data.prompt_keys import is_held_out, prompt_key
from hftune.data.recipe import Recipe
from hftune.data.sources import check_columns, resolve_source_path
from hftune.errors import UserError

logger = logging.getLogger("hftune.data")

STREAMED_FILES = (".txt", ".jsonl", ".parquet")  # the local files read lazily


@dataclass
class StreamedData:
    """A streamed corpus with the bookkeeping `PreparedData` carries, filled in as rows are read.

    The Trainer, and TRL before it (to peek at the first row), iterate the stream more than once; every
    count is of distinct source rows (a row is counted the first time it is read) and the keys are sets.
    """

    train: datasets.IterableDataset
    source: str
    fingerprint: str
    eval: None = None  # see the module docstring
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)
    n_source_rows: int = 0  # source rows read so far
    train_keys: set[str] = field(default_factory=set)
    eval_keys: set[str] = field(default_factory=set)

    @property
    def n_train(self) -> int:
        """Documents read into training (see the module docstring for read-ahead)."""
        return len(self.train_keys)

    def summary(self) -> str:
        dropped = sum(self.dropped.values())
        reasons = f": {format_counts(self.dropped)}" if dropped else ""
        return (
            f"streamed {self.n_source_rows} rows from {self.source} (train {self.n_train} documents, "
            f"held out {len(self.eval_keys)}); dropped {dropped}{reasons}"
        )


def stream_corpus(
    recipe: Recipe,
    *,
    data_files: str | None = None,
    strict: bool | None = None,
    eval_fraction: float = 0.0,
    seed: int = 0,
    max_rows: int | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> StreamedData:
    """The recipe's source as a lazy stream of `{"text": ...}` training rows (see the module docstring).

    The source is opened and its first row's columns checked here, before any weights load; nothing else
    is read until the stream is iterated."""
    if recipe.format != "language_modeling":
        raise UserError(f"recipe {recipe.name}: streaming reads plain text (language_modeling recipes)")
    strict = recipe.strict if strict is None else strict
    rows, label, identity = _source(recipe, data_files)
    first = next(iter(rows()), None)
    if first is None:
        raise UserError(f"{label} has no rows")
    if recipe.transform_fn is None:
        check_columns(recipe, list(first), label)

    spec, kind, fmt = CONVERTERS[recipe.converter], KINDS["text"], FORMATS[recipe.format]
    fingerprint = hashlib.sha256(
        json.dumps({"recipe": recipe.name, "source": identity, "max_rows": max_rows}, sort_keys=True).encode()
    ).hexdigest()
    data = StreamedData(train=None, source=label, fingerprint=fingerprint)  # type: ignore[arg-type]

    def skip(index: int, new: bool, reason: str, detail: str) -> None:
        if strict and reason != "filtered":
            raise UserError(
                f"{label}: row {index} (0-based) is bad: {reason}: {detail}\nstrict mode stops at bad rows; "
                "set `strict: false` in the recipe to drop and count them instead"
            )
        if new:
            data.dropped[reason] = data.dropped.get(reason, 0) + 1
            where = data.examples.setdefault(reason, [])
            if len(where) < 5:
                where.append(index)

    def documents() -> Iterator[dict[str, str]]:
        for index, row in enumerate(itertools.islice(rows(), max_rows)):
            new = index >= data.n_source_rows  # first time this row is read (see StreamedData)
            data.n_source_rows = max(data.n_source_rows, index + 1)
            try:
                if recipe.transform_fn is not None:
                    row = apply_transform(recipe, row, index, label)
                example = kind.check(spec.fn(row, recipe.mapping), recipe)
            except RowProblem as problem:
                skip(index, new, problem.reason, problem.detail)
                continue
            key = prompt_key(example)
            if is_held_out(key, eval_fraction, seed):
                data.eval_keys.add(key)
                continue
            if key in exclude:
                skip(index, new, "held_out_upstream", "an earlier stage held this document out")
                continue
            data.train_keys.add(key)
            yield fmt.fn(example)

    data.train = datasets.IterableDataset.from_generator(
        documents, features=datasets.Features({"text": datasets.Value("string")})
    )
    return data


def _source(recipe: Recipe, data_files: str | None):
    """(a function that starts a fresh pass over the raw rows, the source's name, its identity)."""
    if data_files is None and not recipe.source.path:
        hub = recipe.source
        identity = {"hub": hub.hub, "config": hub.config, "split": hub.split, "revision": hub.revision}
        kwargs = {"path": hub.hub, "name": hub.config, "split": hub.split, "revision": hub.revision}
        return (lambda: _streamed(hub.describe(), **kwargs)), hub.describe(), identity
    path = Path(data_files) if data_files is not None else resolve_source_path(recipe)
    if path.suffix not in STREAMED_FILES:
        raise UserError(
            f"data file {path}: streaming reads {', '.join(STREAMED_FILES)} files line by line (or a Hub "
            f"dataset); convert it to JSON Lines, or set `dataset_streaming: false` to load it whole"
        )
    if not path.is_file():
        raise UserError(f"data file {path} not found" + (" (it is a folder)" if path.is_dir() else ""))
    stat = path.stat()
    identity = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if path.suffix == ".parquet":  # typed columns: datasets reads it as written
        kwargs = {"path": "parquet", "data_files": str(path), "split": "train"}
        return (lambda: _streamed(str(path), **kwargs)), str(path), identity
    return (lambda: _lines(path)), str(path), identity


def _streamed(label: str, **kwargs: Any) -> Iterator[Mapping[str, Any]]:
    """Rows of `datasets.load_dataset(..., streaming=True)`: read as iterated, never downloaded whole."""
    try:
        yield from datasets.load_dataset(**kwargs, streaming=True)
    except (ConnectionError, FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        raise UserError(
            f"could not stream {label}: {err}\nOffline? Pass a local .txt or .jsonl file in the same schema "
            "with `data_files`."
        ) from err


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    """A `.txt` file's documents as `{"text": document}` (as `files` reads them: UTF-8, a BOM allowed, "\\n",
    "\\r\\n" or "\\r" line breaks; documents separated by blank lines, or one a line in a file without one)
    or a `.jsonl` file's objects, one line at a time."""
    text = path.suffix == ".txt"
    paragraphs = text and _has_paragraphs(path)
    number, document = 0, []
    try:
        with path.open(encoding="utf-8-sig") as lines:  # universal newlines, as `files` splits them
            for number, line in enumerate(lines, start=1):
                line = line.removesuffix("\n")
                if paragraphs:
                    if line.strip(" \t"):
                        document.append(line)
                    elif document:
                        yield {"text": "\n".join(document)}
                        document = []
                elif text:
                    yield {"text": line}
                elif line.strip():
                    yield _json_row(path, line, number)
            if document:
                yield {"text": "\n".join(document)}
    except UnicodeDecodeError as err:
        raise UserError(
            f"data file {path} is not UTF-8 text: after line {number}, byte 0x{err.object[err.start]:02x} "
            f"({err.reason}). hftune reads data files as UTF-8; re-save it as UTF-8"
        ) from None


def _has_paragraphs(path: Path) -> bool:
    """Whether a blank line separates two lines of text in a `.txt` file (then its documents are paragraphs,
    as `files` reads them whole); reads up to the first such line, in the worst case the file once."""
    seen_text = blank_after_text = False
    try:
        with path.open(encoding="utf-8-sig") as lines:
            for line in lines:
                if not line.strip(" \t\n"):
                    blank_after_text = seen_text
                elif blank_after_text:
                    return True
                else:
                    seen_text = True
    except UnicodeDecodeError:
        return False  # `_lines` reports it, naming the line
    return False


def _json_row(path: Path, line: str, number: int) -> dict[str, Any]:
    try:
        # JSON numbers keep the digits the file wrote, as `hftune.data.files` reads them. (No module-level
        # decoder: `datasets` hashes the generator and all it reaches, and a decoder cannot be pickled.)
        row = json.loads(line, parse_int=JsonInt, parse_float=JsonFloat, parse_constant=JsonFloat)
    except json.JSONDecodeError as err:
        raise UserError(
            f"data file {path}: line {number} is not valid JSON: {err.msg} (column {err.colno})"
        ) from None
    if not isinstance(row, dict):
        raise UserError(f"data file {path}: line {number} is not an object of column: value")
    return row
