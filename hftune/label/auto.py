"""`hftune label auto DIR --reward_model PATH` (or `--verifier module:function`): a machine ranks every item
of a label folder, so `hftune label stats DIR` can say how far the people agree with it.

The rankings go to DIR/auto.jsonl, in labels.jsonl's row format (`ranked` status, `ranks` in sampling order,
1 = best), with `labeller` ("reward model" or "verifier") and `machine`, what ranked. A reward model ranks
by its scores (the eval's scoring path; equal scores tie); a verifier puts the completions that pass first,
tied among themselves, then the rest (failed or unverified), tied too. A rerun replaces the rows of the same
machine and keeps the others; the file is written whole and atomically. labels.jsonl is never touched:
a machine's ranking is never a person's, nor their progress.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hftune import artifacts
from hftune.errors import UserError
from hftune.label import items as label_items
from hftune.label.store import read_rows

AUTO_FILE = "auto.jsonl"


def ranks_by(values: Sequence[float]) -> list[int]:
    """Ranks from values, higher is better: 1 + how many are strictly better, so equal values tie."""
    return [1 + sum(other > v for other in values) for v in values]


def label_folder(folder: Path) -> dict[str, Any]:
    """The folder's items; a folder `hftune label` did not write is refused before anything loads."""
    data = label_items.read(folder) if folder.is_dir() else None
    if data is None:
        raise UserError(
            f"{folder}: not a label folder (no {label_items.ITEMS_FILE}; `hftune label` writes one)"
        )
    return data


def machine_name(machine: dict[str, Any]) -> str:
    """How stats names a machine labeller: its kind and what it was."""
    return f"{machine['kind'].replace('_', ' ')} {machine.get('path') or machine.get('function')}"


def read(folder: Path) -> list[dict[str, Any]]:
    path = folder / AUTO_FILE
    return read_rows(path) if path.is_file() else []


def rows(data: dict[str, Any], machine: dict[str, Any], labeller: str, values: list[list[float]]) -> list:
    time = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return [
        {
            "prompt": item["prompt"],
            "completions": item["completions"],
            "ranks": ranks_by(v),
            "status": "ranked",
            "labeller": labeller,
            "machine": machine,
            "item": item["id"],
            "model": data["sampling"]["model"],
            "sampling": data["sampling"],
            "time": time,
        }
        for item, v in zip(data["items"], values, strict=True)
    ]


USAGE = "hftune label auto DIR --reward_model PATH | --verifier module:function"


def parse(args: list[str]) -> tuple[Path, dict[str, str]]:
    """The command line after `label auto`: DIR and its flags (`--reward_model`, `--verifier`)."""
    flags = dict(zip(args[1::2], args[2::2], strict=False))
    if (
        not args
        or args[0].startswith("-")
        or len(args) % 2 == 0
        or set(flags) - {"--reward_model", "--verifier"}
    ):
        raise UserError(f"label auto: expected {USAGE}")
    return Path(args[0]), flags


def command(args: list[str]) -> str:
    """The command line after `label auto`: DIR and its flags; returns what to print."""
    folder, flags = parse(args)
    path = run(folder, reward_model=flags.get("--reward_model"), verifier=flags.get("--verifier"))
    return (
        f"label auto: every item ranked, in {path}\nhow far people agree with it: hftune label stats {folder}"
    )


def run(folder: Path, *, reward_model: str | None = None, verifier: str | None = None) -> Path:
    """Rank every item with each machine given; returns the file written."""
    if not reward_model and not verifier:
        raise UserError("label auto: give --reward_model PATH or --verifier module:function (or both)")
    data = label_folder(folder)
    items = data["items"]
    new = []
    if verifier:  # first: a verifier that does not import is refused before a reward model loads
        passes = label_items.verify(items, verifier)
        machine = {"kind": "verifier", "function": verifier}
        new += rows(data, machine, "verifier", [[float(p is True) for p in ps] for ps in passes])
    if reward_model:
        from hftune.models.cache import fingerprint

        scores = label_items.score(items, reward_model)
        machine = {"kind": "reward_model", "path": reward_model, "fingerprint": fingerprint(reward_model)}
        new += rows(data, machine, "reward model", scores)
    replaced = {machine_name(r["machine"]) for r in new}
    kept = [r for r in read(folder) if machine_name(r["machine"]) not in replaced]
    path = folder / AUTO_FILE
    artifacts.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept + new))
    return path
