"""labels.jsonl: every submission, one JSON line each, appended and fsynced before the page hears "saved".

A row is a ranking in the `ranked` converter's schema (`prompt`, `completions` in sampling order, `ranks`,
1 = best, ties allowed) plus who and what: `status` (ranked, skipped or flagged), `flag` (unsafe or
broken), `labeller`, `item` (the prompt's key), `model`, `sampling` and `shown` (the order the page
showed the completions in). Skipped and flagged rows carry no ranks; the recipe written next to the file
filters them out with `ranked_only`, so `hftune reward --data_recipe OUTPUT_DIR/recipe.yaml` trains on the
rankings alone.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from hftune import artifacts
from hftune.errors import UserError

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.jsonl"
RECIPE_FILE = "recipe.yaml"
STATUSES = ("ranked", "skipped", "flagged")
FLAGS = ("unsafe", "broken")


def ranked_only(row: dict[str, Any]) -> dict[str, Any] | None:
    """The recipe's transform: rankings train, skips and flags do not (counted as `filtered`)."""
    return row if row.get("status", "ranked") == "ranked" else None


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
            rows.append(row)
    return rows


class LabelStore:
    """The labels file of one output folder, opened for appending. Safe to call from several threads."""

    def __init__(self, out: Path):
        self.path = out / LABELS_FILE
        self._lock = threading.Lock()
        if self.path.exists():
            self._drop_unfinished_line()
            self.rows = read_rows(self.path)
        else:
            self.rows = []
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the server's lifetime)
        if not self.rows:
            _fsync_dir(out)  # the file's name must survive a crash too, not only its contents

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

    def done(self, labeller: str) -> set[str]:
        with self._lock:
            return {r["item"] for r in self.rows if r["labeller"] == labeller}

    def append(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """Write one submission durably and return None; or, if this labeller already answered the item
        (a submit sent twice, another tab), write nothing and return that earlier answer, for the caller
        to tell the labeller: one answer a labeller an item, the first."""
        with self._lock:
            for r in self.rows:
                if r["item"] == row["item"] and r["labeller"] == row["labeller"]:
                    return r
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self.rows.append(row)
            return None

    def close(self) -> None:
        self._file.close()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_recipe(out: Path, model: str) -> None:
    """recipe.yaml beside the labels: `hftune reward --data_recipe OUTPUT_DIR/recipe.yaml` trains on them."""
    artifacts.write_text(
        out / RECIPE_FILE,
        "# Written by `hftune label`: people's rankings of the model's own samples, expanded into pairs.\n"
        f"description: Rankings of {json.dumps(model)}'s samples collected with hftune label\n"
        f"source: {{path: {LABELS_FILE}}}\n"
        "format: preference\n"
        "converter: ranked\n"
        "transform: hftune.label.store:ranked_only   # skipped and flagged items do not train\n",
    )
