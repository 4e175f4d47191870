"""labels.jsonl: every submission, one JSON line each, appended and fsynced before the page hears "saved".

A row is a ranking in the `ranked` converter's schema (`prompt`, `completions` in sampling order, `ranks`,
1 = best, ties allowed) plus who and what: `status` (ranked, skipped or flagged), `flag` (unsafe or
broken), `labeller`, `item` (the prompt's key), `model`, `sampling` and `shown` (the order the page
showed the completions in). An undo never rewrites the file: it appends a `retracted` row naming the line
it takes back, so the file stays the full record of what happened and the current answers are computed
from it (`current`). The reward stage trains on a file derived from those current answers, train.jsonl,
rewritten atomically after every submission and undo (`write_training`); recipe.yaml points at it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftune import artifacts
from hftune.errors import UserError

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.jsonl"
TRAIN_FILE = "train.jsonl"
RECIPE_FILE = "recipe.yaml"
ANSWERS = ("ranked", "skipped", "flagged")
STATUSES = (*ANSWERS, "retracted")
FLAGS = ("unsafe", "broken")
AGGREGATES = ("all", "majority", "labeller:NAME")


def ranked_only(row: dict[str, Any]) -> dict[str, Any] | None:
    """The transform of the recipe.yaml older versions wrote (straight on labels.jsonl): rankings train,
    skips, flags and retraction rows do not. Kept so such a recipe still reads; it cannot know that a
    ranking was retracted later, which is why recipe.yaml now points at the derived train.jsonl."""
    return row if row.get("status", "ranked") == "ranked" else None


def normalise_name(name: str) -> str:
    """A labeller's name as typed, tidied: NFC, trimmed, inner whitespace collapsed to one space."""
    return " ".join(unicodedata.normalize("NFC", name).split())


def name_key(name: str) -> str:
    """Who a name stands for: names equal once normalised and casefolded ("Bob", " bob ") are one
    labeller, in a new file and in one written before names were normalised."""
    return unicodedata.normalize("NFC", normalise_name(name).casefold())


def untied_pairs(ranks: list[float]) -> int:
    """The training pairs one ranking gives under the `ranked` converter: every pair of different ranks."""
    return sum(ranks[i] != ranks[j] for i, j in itertools.combinations(range(len(ranks)), 2))


@dataclass(frozen=True)
class Answer:
    """A labeller's current answer to an item: its row, its line in labels.jsonl (1-based), and whether it
    is final. A skip is final only when given to an item skipped before (the second pass): a first-pass
    skip means "show me this again later"."""

    row: dict[str, Any]
    line: int
    final: bool


def current(rows: list[dict[str, Any]]) -> dict[str, dict[str, Answer]]:
    """Each labeller's (name_key) current answer per item: the last of their answers not retracted. `rows`
    is the whole file, in order (a retraction names the line it takes back). Machine rows (`hftune label
    auto`) are nobody's answer."""
    standing: dict[str, dict[str, list[int]]] = {}  # labeller -> item -> lines of answers still standing
    for line, row in enumerate(rows, 1):
        if "machine" in row:
            continue
        lines = standing.setdefault(name_key(row["labeller"]), {}).setdefault(row["item"], [])
        if row["status"] == "retracted":
            if row["retracts"]["line"] in lines:
                lines.remove(row["retracts"]["line"])
        else:
            lines.append(line)
    return {
        labeller: {
            item: Answer(
                rows[lines[-1] - 1], lines[-1], rows[lines[-1] - 1]["status"] != "skipped" or len(lines) > 1
            )
            for item, lines in items.items()
            if lines
        }
        for labeller, items in standing.items()
    }


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a labels file; a bad line is an error that names it (nothing is changed)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break  # an unfinished last line: a submission the page was never told was saved
            try:
                row = json.loads(line)
            except ValueError as err:
                raise UserError(f"{path}, line {number}: not a JSON object ({err})") from None
            if not isinstance(row, dict) or row.get("status") not in STATUSES or not row.get("labeller"):
                raise UserError(f"{path}, line {number}: not a label row (no `status` / `labeller`)")
            if row["status"] == "retracted" and not (
                isinstance(row.get("item"), str) and isinstance((row.get("retracts") or {}).get("line"), int)
            ):
                raise UserError(f"{path}, line {number}: a retraction names no `item` and `retracts.line`")
            rows.append(row)
    return rows


class LabelStore:
    """The labels file of one output folder, opened for appending, with each labeller's current answers
    and the derived training file kept up to date. Safe to call from several threads."""

    def __init__(self, out: Path, aggregate: str = "all"):
        self.out = out
        self.path = out / LABELS_FILE
        self.aggregate = aggregate
        self._lock = threading.Lock()
        if self.path.exists():
            self._drop_unfinished_line()
            self.rows = read_rows(self.path)
        else:
            self.rows = []
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the server's lifetime)
        if not self.rows:
            _fsync_dir(out)  # the file's name must survive a crash too, not only its contents
        self.model = _sampled_model(out)
        self._names: dict[str, str] = {}  # name_key -> the first spelling in the file: the name shown
        for row in self.rows:
            self._remember(row)
        self._current = current(self.rows)
        self.training = write_training(out, aggregate, self.rows, self.model)

    def _drop_unfinished_line(self) -> None:
        # A crash in the middle of a write leaves a last line without its newline. That submission was never
        # acknowledged (the page is answered after the fsync), so cutting it off loses nothing the labeller
        # was told was saved, and keeps the file valid JSON Lines for `hftune reward`.
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                os.fsync(f.fileno())
            logger.warning(
                "%s: dropped an unfinished last line (%d bytes) left by a crash", self.path, len(data) - keep
            )

    def _remember(self, row: dict[str, Any]) -> None:
        if "machine" not in row:
            self._names.setdefault(name_key(row["labeller"]), normalise_name(row["labeller"]))

    def display(self, name: str) -> str:
        """The name a labeller goes by: the first spelling of it in the file ("Bob" stays "Bob" when they
        come back as "bob"), or this one for a new labeller."""
        with self._lock:
            return self._names.get(name_key(name), normalise_name(name))

    def labellers(self) -> list[str]:
        """The people who labelled into this file so far (machine rows are no one's)."""
        with self._lock:
            return sorted(self._names.values(), key=name_key)

    def answers(self, labeller: str) -> dict[str, Answer]:
        """This labeller's current answer per item."""
        with self._lock:
            return dict(self._current.get(name_key(labeller), {}))

    def done(self, labeller: str) -> set[str]:
        """The items this labeller gave a final answer to."""
        return {item for item, answer in self.answers(labeller).items() if answer.final}

    def latest(self, labeller: str) -> Answer | None:
        """The labeller's most recent answer still standing: the one an undo takes back."""
        return max(self.answers(labeller).values(), key=lambda a: a.line, default=None)

    def append(self, row: dict[str, Any]) -> None:
        """Write one row (an answer or a retraction) durably, then bring the current answers and the derived
        training file up to date. The caller decides whether the row may be written (`app.Labelling`)."""
        with self._lock:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self.rows.append(row)
            self._remember(row)
            self._current = current(self.rows)
            self.training = write_training(self.out, self.aggregate, self.rows, self.model)

    def close(self) -> None:
        self._file.close()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sampled_model(out: Path) -> str | None:
    from hftune.label import items as label_items

    recorded = label_items.read(out)
    return recorded["sampling"].get("model") if recorded else None


def check_aggregate(aggregate: str) -> str | None:
    """What is wrong with an `aggregate` value, or None."""
    if aggregate in ("all", "majority"):
        return None
    kind, _, name = aggregate.partition(":")
    if kind == "labeller" and normalise_name(name):
        return None
    return f"`aggregate`: {aggregate!r} is not one of {', '.join(AGGREGATES)}"


def training_rows(rows: list[dict[str, Any]], aggregate: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The derived training rows (the `ranked` converter's schema) from the current human rankings in
    `rows`, aggregated, and what they hold: `rankings` and `labellers` used, `rows` and `pairs` written.

    - all: every labeller's current ranking of an item is a row of its own (each gives its pairs);
    - majority: per item and pair of completions, the preference of most of the labellers who ranked the
      two differently, as a ranking of those two completions (a tied vote gives no pair);
    - labeller:NAME: only that labeller's rankings.
    """
    answers = [a for by in current(rows).values() for a in by.values() if a.row["status"] == "ranked"]
    if aggregate.startswith("labeller:"):
        wanted = name_key(aggregate.partition(":")[2])
        answers = [a for a in answers if name_key(a.row["labeller"]) == wanted]
    rankings = [a.row for a in sorted(answers, key=lambda a: a.line)]  # file order: a stable file
    if aggregate == "majority":
        derived = _majority(rankings)
    else:
        derived = [
            {k: r[k] for k in ("item", "labeller", "prompt", "completions", "ranks")} for r in rankings
        ]
    counts = {
        "aggregate": aggregate,
        "rankings": len(rankings),
        "labellers": len({name_key(r["labeller"]) for r in rankings}),
        "rows": len(derived),
        "pairs": sum(untied_pairs(r["ranks"]) for r in derived),
    }
    return derived, counts


def _majority(rankings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_item: dict[str, list[dict[str, Any]]] = {}
    for r in rankings:
        by_item.setdefault(r["item"], []).append(r)
    derived = []
    for item, ranked in by_item.items():
        completions = ranked[0]["completions"]
        for i, j in itertools.combinations(range(len(completions)), 2):
            # Rank 1 is best: a vote for i is a ranking that puts i above j.
            votes = Counter(r["ranks"][i] < r["ranks"][j] for r in ranked if r["ranks"][i] != r["ranks"][j])
            if votes[True] == votes[False]:
                continue  # nobody told them apart, or a tied vote: no preference to learn
            i_wins = votes[True] > votes[False]
            derived.append(
                {
                    "item": item,
                    "labellers": sorted(normalise_name(r["labeller"]) for r in ranked),
                    "votes": [votes[i_wins], votes[not i_wins]],  # for the preference, against it
                    "prompt": ranked[0]["prompt"],
                    "completions": [completions[i], completions[j]],
                    "ranks": [1, 2] if i_wins else [2, 1],
                }
            )
    return derived


def write_training(
    out: Path, aggregate: str = "all", rows: list[dict[str, Any]] | None = None, model: str | None = None
) -> dict[str, Any]:
    """(Re)write train.jsonl, exactly the current human rankings of `out`'s labels (no skips, flags,
    retracted answers or machine rows) aggregated by `aggregate`, and recipe.yaml, which points the reward
    stage at it and states the aggregation and counts; both atomically. Returns the counts. `rows`: the
    labels file's rows (read from `out` when not given); `model`: the sampled model (from items.json)."""
    if rows is None:
        rows = read_rows(out / LABELS_FILE) if (out / LABELS_FILE).is_file() else []
        model = model or _sampled_model(out)
    derived, counts = training_rows(rows, aggregate)
    artifacts.write_text(out / TRAIN_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in derived))
    whose = f"{model}'s samples" if model else "samples"
    description = (
        f"Rankings of {whose} collected with hftune label, aggregate {aggregate}: {counts['rankings']} "
        f"rankings by {counts['labellers']} labeller(s) -> {counts['rows']} rows, {counts['pairs']} pairs"
    )
    artifacts.write_text(
        out / RECIPE_FILE,
        "# Written by `hftune label` after every submission and undo: the current human rankings, derived\n"
        f"# from {LABELS_FILE} into {TRAIN_FILE} (`aggregate` key), expanded into pairs.\n"
        f"description: {json.dumps(description)}\n"
        f"source: {{path: {TRAIN_FILE}}}\n"
        "format: preference\n"
        "converter: ranked\n",
    )
    return counts
