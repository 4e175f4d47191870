"""Preparing: a recipe's rows converted, checked, counted by drop reason, split and fingerprinted.

Rows flow: raw row -> optional `transform` hook -> converter -> checks -> format -> `datasets.Dataset`.
A row that fails a check is dropped and counted by reason (or, with `strict`, is an error that names it);
a preference pair can be left out on its own and is counted in `dropped_pairs`. `PreparedData` carries
the rows and that bookkeeping, and is saved and read back so one process can prepare for the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from hftune.data.converters import CONVERTERS
from hftune.data.detect import AUTO, detect
from hftune.data.formats import FORMATS, KINDS, Format, format_mismatch
from hftune.data.problems import PairProblem, RowProblem, bad_unicode, format_counts, is_blank
from hftune.data.prompt_keys import is_held_out, prompt_key, split_value
from hftune.data.recipe import Recipe, load_recipe
from hftune.data.sources import check_columns, load_rows
from hftune.data.tokens import render, sft_columns
from hftune.errors import UserError

# The package's name: users and tests filter drop reports on "hftune.data", whichever module logs them.
logger = logging.getLogger("hftune.data")

EXAMPLES_PER_REASON = 5  # source row indices kept per drop reason, for the log and the manifest
TOO_LONG = ("drop", "truncate", "keep")  # what happens to a row over max_length (see prepare_dataset)


@dataclass
class PreparedData:
    train: datasets.Dataset
    eval: datasets.Dataset | None
    dropped: dict[str, int]  # reason -> count of source rows
    examples: dict[str, list[int]]  # reason -> first few source row indices (0-based)
    n_source_rows: int
    fingerprint: str  # sha256 of the converted rows, train then eval, in order
    source: str = ""  # the file or hub dataset the rows came from
    train_indices: list[int] = field(default_factory=list)  # source row index of each train row
    eval_indices: list[int] = field(default_factory=list)
    # Token length of every row (every pair, for preference data) that passed the content checks (before
    # too_long), in source order; None without a tokenizer. Preview reports on these so the user sees
    # what max_length cuts.
    token_lengths: list[int] | None = None
    max_length: int | None = None
    # Preference data only (None / empty otherwise): the pairs trained on, train and eval together, and the
    # pairs left out of rows that were kept, by reason (a dropped row's pairs count under `dropped` only).
    n_pairs: int | None = None
    dropped_pairs: dict[str, int] = field(default_factory=dict)
    # How the rows were read: the recipe's converter and TRL format (detected, for `dataset_name` data).
    converter: str = ""
    format: str = ""
    # A mixture's parts (mixture.prepare_parts): per part, its recipe, weight and row counts.
    sources: list[dict[str, Any]] = field(default_factory=list)
    # Rows over max_length whose final reply was cut to fit (`too_long: truncate`), source row indices.
    truncated: list[int] = field(default_factory=list)
    # The prompt key (`prompt_keys.prompt_key`) of each train / eval row, in row order: what an artifact
    # records it trained on and held out, and what the eval audits against.
    train_keys: list[str] = field(default_factory=list)
    eval_keys: list[str] = field(default_factory=list)

    @property
    def n_kept(self) -> int:
        """Source rows kept (for preference data, one row can give several training rows: its pairs)."""
        if self.n_pairs is not None or self.sources:
            # One row can give several training rows: its pairs, or a weighted mixture's repeats.
            return len(set(self.train_indices) | set(self.eval_indices))
        return len(self.train) + (len(self.eval) if self.eval is not None else 0)

    def summary(self) -> str:
        """One line: "kept 95 of 100 rows; dropped 5: empty_turn 3, too_long 2"; for preference data
        "kept 95 of 100 rows -> 540 pairs (train 480, eval 60); dropped 5 rows: ...; dropped 36 pairs: ...".
        """
        split = f" (train {len(self.train)}, eval {len(self.eval)})" if self.eval is not None else ""
        kept = f"kept {self.n_kept} of {self.n_source_rows} rows"
        if self.sources:
            kept += f" -> {len(self.train)} training rows by weight"
        if self.n_pairs is None:
            cut = f"; truncated {len(self.truncated)} to max_length" if self.truncated else ""
            return f"{kept}{split}; {_dropped_line(self.dropped, '')}{cut}"
        return (
            f"{kept} -> {self.n_pairs} pairs{split}; {_dropped_line(self.dropped, ' rows')}; "
            f"{_dropped_line(self.dropped_pairs, ' pairs')}"
        )


PREPARED_META = "prepared.json"
# Size and sha256 of every file save_prepared wrote, so a reader can tell a damaged copy (a truncated Arrow
# file, bytes overwritten) from the rows as written (`damage`).
PREPARED_SUMS = "checksums.json"


def file_checksums(folder: Path) -> dict[str, list]:
    """Every file under `folder` (but the checksums themselves): relative path -> [size, sha256]."""
    sums = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != PREPARED_SUMS):
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        sums[file.relative_to(folder).as_posix()] = [file.stat().st_size, digest.hexdigest()]
    return sums


def damage(folder: Path) -> str | None:
    """What differs in `folder` from what save_prepared wrote there (None: nothing). Files added beside
    them later (`datasets`' caches of the trainers' passes) are not its rows and are not checked. Sizes are
    compared first, so a truncated file is found without reading the rest; every byte is then hashed
    (about a second a gigabyte), which is what reading the rows back would cost anyway."""
    try:
        recorded = json.loads((folder / PREPARED_SUMS).read_text())
    except (OSError, ValueError):
        return f"no readable {PREPARED_SUMS}"
    if not isinstance(recorded, dict):
        return f"{PREPARED_SUMS} is not a mapping"
    for name, (size, _) in recorded.items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes, {size} were written"
    actual = file_checksums(folder)
    changed = [name for name, sums in recorded.items() if actual.get(name) != sums]
    return f"{changed[0]} is not the file that was written (its sha256 differs)" if changed else None


def save_prepared(data: PreparedData, folder: Path) -> None:
    """Write prepared rows (Arrow), their bookkeeping (JSON) and every file's checksum (`damage`) so other
    processes can read them back."""
    import dataclasses

    from hftune.artifacts import atomic_dir

    folder = Path(folder)
    with atomic_dir(folder, overwrite=True) as tmp:  # inside the stage's own work folder
        data.train.save_to_disk(str(tmp / "train"))
        if data.eval is not None:
            data.eval.save_to_disk(str(tmp / "eval"))
        meta = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
        del meta["train"], meta["eval"]
        (tmp / PREPARED_META).write_text(json.dumps(meta))
        (tmp / PREPARED_SUMS).write_text(json.dumps(file_checksums(tmp)))


def load_prepared(folder: Path) -> PreparedData:
    folder = Path(folder)
    meta = json.loads((folder / PREPARED_META).read_text())
    eval_dir = folder / "eval"
    return PreparedData(
        train=datasets.load_from_disk(str(folder / "train")),
        eval=datasets.load_from_disk(str(eval_dir)) if eval_dir.is_dir() else None,
        **meta,
    )


def _dropped_line(counts: Mapping[str, int], noun: str) -> str:
    n = sum(counts.values())
    return f"dropped {n}{noun}" + (f": {format_counts(counts)}" if n else "")


def token_lengths(tokenizer, sequences: list[list[Any]], batch_size: int = 512) -> list[int]:
    """Token count of each example: the longest of its sequences (conversations through the chat template)."""
    flat = [(i, s) for i, seqs in enumerate(sequences) for s in seqs]
    lengths = [0] * len(sequences)
    chats = [(i, s) for i, s in flat if not isinstance(s, str)]  # turns, or {"messages", "tools"}
    texts = [(i, s) for i, s in flat if isinstance(s, str)]
    if chats and not getattr(tokenizer, "chat_template", None):
        raise UserError("the tokenizer has no chat template; set `chat_template` in the config (e.g. chatml)")
    for start in range(0, len(chats), batch_size):
        batch = chats[start : start + batch_size]
        ids = render_chats(tokenizer, [s for _, s in batch])
        for (i, _), row_ids in zip(batch, ids, strict=True):
            lengths[i] = max(lengths[i], len(row_ids))
    eos = getattr(tokenizer, "eos_token", None)
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        ids = tokenizer([s for _, s in batch])["input_ids"]
        for (i, s), row_ids in zip(batch, ids, strict=True):
            # TRL appends EOS to plain text before tokenizing, so count it.
            extra = 1 if eos and not s.endswith(eos) else 0
            lengths[i] = max(lengths[i], len(row_ids) + extra)
    return lengths


def render_chats(tokenizer, chats: list, **kwargs) -> list[list[int]]:
    """Token ids of conversations through the chat template, as TRL renders them: a chat unit is a list of
    turns, or {"messages": turns, "tools": JSON text} for a conversation with tools (`tokens.render`)."""
    units = [(c["messages"], c.get("tools")) if isinstance(c, dict) else (c, None) for c in chats]
    return [rendered["input_ids"] for rendered in render(tokenizer, units, kwargs)]


def _fingerprint(splits: list[tuple[str, list[dict]]]) -> str:
    digest = hashlib.sha256()
    for name, rows in splits:
        digest.update(f"\x00{name}\x00".encode())
        for row in rows:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def prepare_dataset(
    recipe: Recipe | str,
    *,
    tokenizer=None,
    max_length: int | None = None,
    strict: bool | None = None,
    eval_fraction: float = 0.0,
    seed: int = 0,
    data_files: str | os.PathLike | None = None,
    max_rows: int | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
    too_long: str = "drop",
    formats: tuple[str, ...] | None = None,
    sft_tokens: dict[str, Any] | None = None,
) -> PreparedData:
    """Load, convert and check a recipe's rows; split off a seeded eval set of source rows.

    A row is held out when its prompt's key falls under `eval_fraction` for `seed`
    (`prompt_keys.is_held_out`): a property of the row alone, so no other row's fate can move it. Training
    rows whose prompt key is in `exclude` (prompts an earlier stage held out) are dropped as
    `held_out_upstream`: no stage ever trains on what the eval measures.

    `data_files` replaces the recipe's source with a local file in the same schema. With `tokenizer` and
    `max_length`, rows longer than `max_length` tokens after the chat template are handled by `too_long`:
    "drop" (counted as too_long), "truncate" (a conversation's final reply, or a text's end, is cut to fit;
    a row whose prompt alone does not fit is still dropped) or "keep" (nothing is cut or dropped: for
    pretraining, which chunks the concatenated text into blocks). For preference data a pair's length is
    that of the longer of prompt+chosen and prompt+rejected, and a row is dropped as too_long only when
    none of its pairs fits. A recipe for data in a TRL format (`detect.dataset_recipe`) is read as its
    rows' layout says, in the first of `formats` (the stage's) that fits.

    `strict` (default: the recipe's) turns the first bad row into an error; rows a transform returns None
    for are filtered on purpose and never an error, and neither are pairs left out of a row that keeps
    others (ties are part of ranked data).

    `sft_tokens` (SFT only: the keywords of `tokens.sft_columns`, {"assistant_only_loss": bool,
    "chat_template": the training template or None}) keeps the tokens of the one rendering that measures
    each row: the rows get the columns TRL's SFTTrainer would tokenize them into, so it skips its own pass.
    Lengths are then those tokens' counts.
    """
    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    strict = recipe.strict if strict is None else strict
    if not 0.0 <= eval_fraction < 1.0:
        raise UserError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if max_length is not None and max_length < 1:
        raise UserError(f"max_length must be positive, got {max_length}")
    if too_long not in TOO_LONG:
        raise UserError(f"too_long must be one of {', '.join(TOO_LONG)}, got {too_long!r}")

    raw, columns, label = load_rows(recipe, data_files, max_rows)
    if len(raw) == 0:
        raise UserError(f"{label} has no rows")
    if recipe.converter == AUTO:
        recipe = detect(recipe, columns, raw, formats)
    # With a transform the columns the converter sees are the transform's output, known only per row.
    if recipe.transform_fn is None:
        check_columns(recipe, columns, label)

    spec, fmt = CONVERTERS[recipe.converter], FORMATS[recipe.format]
    kind = KINDS[spec.yields]
    # load_recipe refuses this; a Recipe built in code may still pair a converter with a wrong format.
    if mismatch := format_mismatch(recipe.format, spec):
        raise UserError(f"recipe {recipe.name}: {mismatch}")

    # Each kept source row with its units: the example itself, or the good pairs of a preference row.
    kept: list[tuple[int, list[Any]]] = []
    problems: list[tuple[int, str, str]] = []  # (source row, reason, detail) of each dropped row
    pair_problems: list[tuple[int, str, str]] = []  # the same for each pair left out of a row
    for i, row in enumerate(raw):
        try:
            if recipe.transform_fn is not None:
                row = apply_transform(recipe, row, i, label)
            example = kind.check(spec.fn(row, recipe.mapping), recipe)
            # A lone surrogate (JSON can escape one: "\\ud800") cannot be encoded; no tokenizer takes it.
            if unreadable := bad_unicode(example):
                raise RowProblem("bad_unicode", unreadable)
        except RowProblem as problem:
            problems.append((i, problem.reason, problem.detail))
            continue
        units = example if kind.paired else [example]
        pair_problems += [(i, u.reason, u.detail) for u in units if isinstance(u, PairProblem)]
        kept.append((i, [u for u in units if not isinstance(u, PairProblem)]))

    lengths, truncated, tokens = None, [], None
    if tokenizer is not None and kept:
        if sft_tokens is not None and not kind.paired:
            tokens = _sft_tokens(tokenizer, fmt, kept, sft_tokens)
            lengths = [len(tokens[i]["input_ids"]) for i, _ in kept]
        else:
            lengths = token_lengths(tokenizer, [kind.sequences(unit) for _, units in kept for unit in units])
        if max_length is not None and too_long == "truncate":
            if kind.paired or spec.yields not in ("chat", "text"):
                raise UserError(f"recipe {recipe.name}: `too_long: truncate` cuts replies, not pairs")
            kept, truncated = _truncate(kept, lengths, tokenizer, max_length, problems)
            if tokens is not None and truncated:  # a cut row is measured (and tokenized) again
                cut = set(truncated)
                tokens.update(_sft_tokens(tokenizer, fmt, [k for k in kept if k[0] in cut], sft_tokens))
        elif max_length is not None and too_long == "drop":
            kept = _drop_too_long(kept, lengths, max_length, problems, pair_problems)
    problems.sort()
    # A dropped row is counted once, as a row, whatever its pairs' fate.
    kept_rows = {i for i, _ in kept}
    pair_problems = sorted(p for p in pair_problems if p[0] in kept_rows)

    dropped = Counter(reason for _, reason, _ in problems)
    bad = [p for p in problems if p[1] != "filtered"]
    if strict and bad:
        i, reason, detail = bad[0]
        others = (
            f"; {len(bad)} bad rows in all: {format_counts(Counter(r for _, r, _ in bad))}"
            if len(bad) > 1
            else ""
        )
        raise UserError(
            f"{label}: row {i} (0-based) is bad: {reason}: {detail}{others}\n"
            "strict mode stops at bad rows; set `strict: false` in the recipe to drop and count them instead"
        )
    if not kept:
        first = "; ".join(f"row {i} {reason}: {detail}" for i, reason, detail in problems[:3])
        raise UserError(
            f"{label}: all {len(raw)} rows were dropped ({format_counts(dropped)}); first: {first}"
        )

    # Split source rows, not training rows, so the pairs of one row never straddle train and eval. The side is
    # a function of the row's prompt key alone: rows that share a prompt land together, and dropping other
    # rows (too long for this stage's max_length) never moves a row across the split.
    keys = [prompt_key(units[0]) for _, units in kept]
    eval_pos = {pos for pos, key in enumerate(keys) if is_held_out(key, eval_fraction, seed)}
    if eval_fraction > 0 and not eval_pos:
        # Too few rows for the fraction to catch one: hold out the prompt(s) nearest the threshold, still
        # chosen by key alone among these rows.
        first = min(keys, key=lambda k: split_value(k, seed))
        eval_pos = {pos for pos, key in enumerate(keys) if key == first}
        logger.warning(
            "eval_fraction %s held out no row of %d; holding out 1 prompt", eval_fraction, len(kept)
        )
    if eval_pos and len(eval_pos) == len(kept):
        raise UserError(f"eval_fraction {eval_fraction} leaves no training rows out of {len(kept)} kept rows")
    upstream = {pos for pos, key in enumerate(keys) if pos not in eval_pos and key in exclude}
    for pos in sorted(upstream):
        problems.append((kept[pos][0], "held_out_upstream", "an earlier stage held this prompt out"))
    dropped.update(["held_out_upstream"] * len(upstream))
    if len(upstream) + len(eval_pos) == len(kept):
        raise UserError(
            f"{label}: every training row's prompt was held out by an earlier stage ({len(upstream)} rows); "
            "the eval measures those prompts, so this stage may not train on them"
        )
    train_pos = [pos for pos in range(len(kept)) if pos not in eval_pos and pos not in upstream]
    train_rows, train_indices = _format_rows(fmt, [kept[pos] for pos in train_pos])
    eval_rows, eval_indices = _format_rows(fmt, [kept[pos] for pos in sorted(eval_pos)])
    n_eval = len(eval_pos)

    examples = _examples(problems)
    # The rows' identity is their content: tokens or not, the fingerprint is the same.
    fingerprint = _fingerprint([("train", train_rows), ("eval", eval_rows)])
    if tokens is not None:
        train_rows = [{**row, **tokens[i]} for row, i in zip(train_rows, train_indices, strict=True)]
        eval_rows = [{**row, **tokens[i]} for row, i in zip(eval_rows, eval_indices, strict=True)]
    result = PreparedData(
        train=datasets.Dataset.from_list(train_rows),
        eval=datasets.Dataset.from_list(eval_rows) if n_eval else None,
        dropped=dict(sorted(dropped.items())),
        examples=examples,
        n_source_rows=len(raw),
        fingerprint=fingerprint,
        source=label,
        train_indices=train_indices,
        eval_indices=eval_indices,
        token_lengths=lengths,
        max_length=max_length,
        n_pairs=len(train_rows) + len(eval_rows) if kind.paired else None,
        dropped_pairs=dict(sorted(Counter(reason for _, reason, _ in pair_problems).items())),
        truncated=truncated,
        converter=recipe.converter,
        format=recipe.format,
        train_keys=[keys[pos] for pos in train_pos for _ in kept[pos][1]],
        eval_keys=[keys[pos] for pos in sorted(eval_pos) for _ in kept[pos][1]],
    )
    logger.info("recipe %s (%s rows from %s): %s", recipe.name, recipe.format, label, result.summary())
    for unit, found in (("rows", problems), ("pairs", pair_problems)):
        for reason, where in _examples(found).items():
            n = sum(r == reason for _, r, _ in found)
            detail = next(d for _, r, d in found if r == reason)
            logger.warning("dropped %d %s as %s, e.g. rows %s (%s)", n, unit, reason, where, detail)
    return result


def _sft_tokens(
    tokenizer, fmt: Format, kept: list[tuple[int, list[Any]]], settings: dict[str, Any]
) -> dict[int, dict[str, list[int]]]:
    """Source row index -> the TRL token columns of its (one) formatted row."""
    rows = [fmt.fn(units[0]) for _, units in kept]
    return {i: cols for (i, _), cols in zip(kept, sft_columns(tokenizer, rows, **settings), strict=True)}


def _examples(problems: list[tuple[int, str, str]]) -> dict[str, list[int]]:
    """reason -> the first few source rows (distinct) it was found in."""
    examples: dict[str, list[int]] = {}
    for i, reason, _ in problems:
        where = examples.setdefault(reason, [])
        if len(where) < EXAMPLES_PER_REASON and i not in where:
            where.append(i)
    return examples


def _drop_too_long(
    kept: list[tuple[int, list[Any]]],
    lengths: list[int],
    max_length: int,
    problems: list[tuple[int, str, str]],
    pair_problems: list[tuple[int, str, str]],
) -> list[tuple[int, list[Any]]]:
    """The rows and units within max_length; a unit left out is added to `pair_problems` (only a preference
    row has more than one), a row with none left to `problems`, both as too_long."""
    remaining = iter(lengths)  # one length per unit, in the order of `kept`
    fitting = []
    for i, units in kept:
        ns = [next(remaining) for _ in units]
        fits = [unit for unit, n in zip(units, ns, strict=True) if n <= max_length]
        if not fits:
            problems.append((i, "too_long", f"{min(ns)} tokens > max_length {max_length}"))
            continue
        pair_problems += [
            (i, "too_long", f"{n} tokens > max_length {max_length}") for n in ns if n > max_length
        ]
        fitting.append((i, fits))
    return fitting


def _truncate(
    kept: list[tuple[int, list[Any]]],
    lengths: list[int],
    tokenizer,
    max_length: int,
    problems: list[tuple[int, str, str]],
) -> tuple[list[tuple[int, list[Any]]], list[int]]:
    """Rows over max_length with their final reply (a text: its end) cut to fit; the prompt is never cut,
    so a row whose prompt alone does not fit is dropped as too_long. Returns the rows and the source
    indices of those cut."""
    fitting, truncated = [], []
    for (i, (unit,)), n in zip(kept, lengths, strict=True):
        if n <= max_length:
            fitting.append((i, [unit]))
            continue
        cut = _cut_to_fit(unit, tokenizer, max_length)
        if cut is None:
            problems.append((i, "too_long", f"the prompt alone does not fit in max_length {max_length}"))
            continue
        fitting.append((i, [cut]))
        truncated.append(i)
    return fitting, truncated


def _cut_to_fit(unit: Any, tokenizer, max_length: int) -> Any:
    """`unit` with its last assistant reply (or, for plain text, its end) cut at a token boundary so the
    whole renders in at most max_length tokens; None when not even one token of the reply fits."""
    if isinstance(unit, str):
        # TRL appends EOS to plain text: leave room for it.
        ids = tokenizer(unit, add_special_tokens=False)["input_ids"]
        reply, rebuild = ids, lambda text: text
        measure = lambda text: token_lengths(tokenizer, [[text]])[0]  # noqa: E731
    else:
        messages = unit["messages"] if isinstance(unit, dict) else unit
        reply = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]

        def rebuild(text: str) -> Any:
            turns = [*messages[:-1], {**messages[-1], "content": text}]
            return {**unit, "messages": turns} if isinstance(unit, dict) else turns

        measure = lambda text: len(render_chats(tokenizer, [rebuild(text)])[0])  # noqa: E731
    # The largest number of reply tokens that fits, by bisection: decoding and re-encoding at a cut can
    # merge tokens differently, so each candidate is measured as rendered, not computed.
    low, high = 0, len(reply)
    while low < high:
        mid = (low + high + 1) // 2
        if measure(tokenizer.decode(reply[:mid])) <= max_length:
            low = mid
        else:
            high = mid - 1
    text = tokenizer.decode(reply[:low])
    if low == 0 or is_blank(text):
        return None
    return rebuild(text)


def _format_rows(fmt: Format, kept: list[tuple[int, list[Any]]]) -> tuple[list[dict], list[int]]:
    """Training rows of these source rows, one per unit, with the source row index of each."""
    rows = [(i, fmt.fn(unit)) for i, units in kept for unit in units]
    return [row for _, row in rows], [i for i, _ in rows]


def apply_transform(recipe: Recipe, row: Mapping[str, Any], index: int, label: str) -> Mapping[str, Any]:
    """The recipe's `transform` hook on one raw row (None filters the row out, counted as `filtered`)."""
    try:
        out = recipe.transform_fn(dict(row))
    except Exception as err:
        # The user's hook has a bug: keep its traceback, but say which row it choked on.
        err.add_note(f"in transform {recipe.transform} on row {index} of {label}")
        raise
    if out is None:
        raise RowProblem("filtered", f"transform {recipe.transform} returned None")
    if not isinstance(out, Mapping):
        raise UserError(
            f"transform {recipe.transform} returned a {type(out).__name__} for row {index}, not a dict"
        )
    return out
