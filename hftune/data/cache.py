"""Prepared data, cached by content: a rerun with the same rows, tokenizer and settings reads them back.

Preparing 100k chats (load, convert, check, render each through the chat template to measure it) costs
tens of seconds, and every stage of every rerun paid it again. The key is everything the result depends
on: each part's recipe, the bytes of its local data file (or folder), its transform's source and the
local modules that imports, the tokenizer's vocabulary and chat template, the stage's settings (max_length,
too_long, split, seed, the prompts held out upstream, formats) and the source of hftune's data code itself;
a change to any of them is another key. Where the data lie is not: a byte-identical file under another
name or in another folder, read by the same recipe settings, is the same entry (a recipe's name and
description, which change no row, neither), and the entry read back names this run's files. The `seed`
is: it draws the held-out split, so each seed of a seeded stage prepares rows of its own. Data from the
Hub is not cached here (`datasets` caches the download; its content is not known without reading it),
nor a streamed corpus.

A hit is read back as memory-mapped Arrow (`save_prepared` / `load_prepared`) only after every file is
checked against the size and sha256 written with it (`prepare.damage`): a truncated or overwritten entry
is named in a warning and prepared again, never trained on. SFT rows carry their tokens
(`tokens.sft_columns`), so a rerun tokenizes nothing; the other trainers' own tokenization of the rows is
cached by `datasets` beside them, and done once too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hftune.data.prepare import PREPARED_META, PreparedData, damage, load_prepared, save_prepared
from hftune.data.recipe import LOCAL_BUILDERS, transform_files

logger = logging.getLogger(__name__)

_DATA_CODE = Path(__file__).parent


def cache_dir() -> Path:
    return Path(os.environ.get("HFTUNE_CACHE", Path.home() / ".cache" / "hftune")) / "data"


def _file_digest(path: Path) -> str:
    """The sha256 of a data file's bytes, or of a folder's files: each one's path inside the folder (which
    says its split and how it is read) and its bytes. A file's own name and the folder it lies in are not
    its content: a byte-identical copy under another name, or elsewhere, is the same data."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(f"{f.relative_to(path).as_posix()}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _transform_digest(recipe) -> str | None:
    """The source of a recipe's `module:function` transform and of the local modules it imports (their code
    decides which rows survive, and how): a changed helper beside the transform is another key."""
    if not recipe.transform:
        return ""
    files = transform_files(recipe.transform, recipe.path.parent if recipe.path else None)
    if files is None:
        return None
    return hashlib.sha256("".join(f"{f.name}\0{_file_digest(f)}\n" for f in files).encode()).hexdigest()


def tokenizer_digest(tokenizer) -> str:
    if tokenizer is None:
        return ""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    parts = [
        type(tokenizer).__name__,
        vocab,
        tokenizer.chat_template or "",
        str(tokenizer.all_special_tokens),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class CacheKey(str):
    """A cache key (the entry's folder name), with where this run reads each part's rows (`labels`): the key
    is their content, so an entry saved from a file under another name is read back naming this run's
    files (`_relabel`), never the name it was saved under."""

    labels: tuple[str, ...] = ()

    def __new__(cls, value: str, labels: tuple[str, ...] = ()) -> CacheKey:
        made = super().__new__(cls, value)
        made.labels = labels
        return made


def _keyed_recipe(recipe, path: Path) -> dict[str, Any]:
    """The recipe's fields that decide its rows: not its name, its description or its source's path (the
    data's bytes are keyed instead: `_file_digest`); how the file is read (its type) and, for a folder, the
    split that picks its files."""
    fields = {k: v for k, v in recipe.as_dict().items() if k not in ("description", "source")}
    if path.is_dir():
        fields["split"] = recipe.source.split
    else:
        fields["reader"] = LOCAL_BUILDERS.get(path.suffix)
    return fields


def key(parts, tokenizer, settings: dict[str, Any]) -> CacheKey | None:
    """The cache key of preparing `parts` (mixture.Part) with `settings`; None when a part is not a local file
    (or its transform's code cannot be found), which is then prepared every time."""
    from hftune.data.sources import resolve_source_path

    described, labels = [], []
    # Combining parts seeds each one's weighted sample with its recipe's name (`mixture._combine`), so
    # there the name decides rows; one part is prepared the same under any name.
    combined = len(parts) > 1 or any(part.weight != 1.0 for part in parts)
    for part in parts:
        recipe = part.recipe
        if part.data_files is not None:
            path = Path(part.data_files)
        elif recipe.source.path:
            path = resolve_source_path(recipe)
        else:
            return None
        transform = _transform_digest(recipe)
        if not path.exists() or transform is None:
            return None
        described.append(
            {
                "recipe": _keyed_recipe(recipe, path),
                "name": part.name if combined else None,
                "data": _file_digest(path),
                "transform": transform,
                "max_samples": part.max_samples,
                "weight": part.weight,
            }
        )
        labels.append(str(part.data_files if part.data_files is not None else path))  # as `load_rows` does
    code = hashlib.sha256()
    for f in sorted(_DATA_CODE.glob("*.py")):
        code.update(f.read_bytes())
    record = {
        "parts": described,
        "tokenizer": tokenizer_digest(tokenizer),
        "settings": {k: sorted(v) if isinstance(v, set | frozenset) else v for k, v in settings.items()},
        "code": code.hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return CacheKey(digest, tuple(labels))


def _relabel(data: PreparedData, cache_key: str) -> PreparedData:
    """`data` read back from an entry, naming the files this run reads (`CacheKey.labels`) rather than those
    of the run that saved it: the manifest, the log and `data preview` say where the rows came from."""
    labels = getattr(cache_key, "labels", ())
    if not labels:
        return data
    if data.sources and len(data.sources) == len(labels):
        data.sources = [{**part, "source": label} for part, label in zip(data.sources, labels, strict=True)]
    data.source = " + ".join(labels)
    return data


def _read(folder: Path, warn: bool = True) -> PreparedData | None:
    """The entry saved in `folder`, or None when there is none or it is damaged (then prepared again, never
    trained on: every file is checked against the checksums written with it). `warn`: say so (once a run:
    `cached` reads an entry twice, the second time while holding its turn)."""
    if not (folder / PREPARED_META).is_file():
        return None
    try:
        problem = damage(folder)
    except (OSError, ValueError, TypeError) as err:  # a mangled checksums file is damage too
        problem = f"its checksums cannot be read ({err})"
    if problem is not None:
        if warn:
            logger.warning("data cache entry %s is damaged (%s); preparing the data again", folder, problem)
        return None
    try:
        data = load_prepared(folder)
    except (OSError, ValueError, TypeError) as err:  # a damaged entry is prepared again, never trusted
        logger.warning("data cache %s unreadable (%s); preparing the data again", folder, err)
        return None
    logger.info("data: the same rows, tokenizer and settings as an earlier run: read from %s", folder)
    for reason, rows in data.examples.items():
        logger.warning("dropped %d rows as %s, e.g. rows %s", data.dropped.get(reason, 0), reason, rows)
    return data


@contextlib.contextmanager
def _turn(cache_key: str):
    """Runs that prepare the same rows at once (seeds side by side, parallel tests) take turns: one prepares
    and saves, the others wait and read what it saved. Saving over an entry replaces its folder, which
    would pull the files from under a run already training on them (`datasets` caches its own passes over
    the rows beside them). The lock lives outside the entries' folder, which holds entries only. A cache
    that cannot be written has no turns to take (and nothing will be saved in it)."""
    from filelock import FileLock

    try:
        locks = cache_dir().parent / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(locks / f"data-{cache_key}.lock"))
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def cached(cache_key: str | None, compute: Callable[[], PreparedData]) -> PreparedData:
    """The prepared data under `cache_key` if an earlier run saved it, else `compute()` (then saved)."""
    if cache_key is None:
        return compute()
    folder = cache_dir() / cache_key
    data = _read(folder, warn=False)  # a damaged entry is named once, below, by the run that replaces it
    if data is not None:
        return _relabel(data, cache_key)
    with _turn(cache_key):
        data = _read(folder)  # saved by another run while this one waited
        if data is not None:
            return _relabel(data, cache_key)
        data = compute()
        try:
            save_prepared(data, folder)
        except OSError as err:  # a full or read-only cache never fails the run
            logger.warning("could not cache the prepared data in %s: %s", folder, err)
            return data
    # Read back from disk: the trainers' tokenization of Arrow-backed rows is cached by `datasets` too.
    return load_prepared(folder)
