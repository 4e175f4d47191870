"""Prompt keys: one short fingerprint per prompt, the same whichever stage, recipe or format reads it, and
the held-out rule built on them.

A prompt's key is a hash of its user turns (normalised: Unicode NFKC, case-folded, whitespace collapsed), so
an SFT conversation, the RL stage's prompt-only row, a preference pair and the eval's prompt for the same
question all get the same key; a plain-text row (pretraining) is keyed by its text. Keys are 16 hex digits
(64 bits): artifacts store them (`prompts.json`) to say what they trained on and what they held out, without
any raw text.

Whether a row is held out depends on its key alone (`is_held_out`): a seeded hash compared with
`eval_fraction`. Filtering other rows (too long, malformed) can never move a row across the split, rows
that share a prompt always land on the same side, every stage that reads the same prompt with the same seed
and fraction agrees, and a smaller fraction holds out a subset of what a larger one does.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

KEY_VERSION = "user-turns-v1"  # how keys are computed; stored with them so a change is never mixed up
PROMPTS_FILE = "prompts.json"  # in an artifact: the keys it trained on and the ones it held out


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _user_turns(turns: Iterable[Any]) -> str:
    return "\n".join(
        str(t.get("content", "")) for t in turns if isinstance(t, dict) and t.get("role") == "user"
    )


def prompt_text(example: Any) -> str:
    """The text that identifies an example's prompt: its user turns (a conversation, a prompt-completion or
    prompt-only row, a preference pair, an unpaired example), or the text of a plain-text row. A conversation
    with tools ({"messages", "tools"}) is keyed by its messages' user turns alone, as the same turns without
    tools would be: tool schemas and results are not the question."""
    if isinstance(example, str):
        return example
    if isinstance(example, list):
        return _user_turns(example)
    if isinstance(example, dict):
        for field in ("prompt", "messages", "chosen"):
            value = example.get(field)
            if isinstance(value, str):
                return value
            if isinstance(value, list) and value:
                return _user_turns(value)
        if isinstance(example.get("text"), str):
            return example["text"]
    return json.dumps(example, sort_keys=True, default=str)


def prompt_key(example: Any) -> str:
    return hashlib.sha256(normalise(prompt_text(example)).encode()).hexdigest()[:16]


def split_value(key: str, seed: int) -> float:
    """Where a prompt falls in [0, 1) for a seed: held out when below `eval_fraction`."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:16], 16) / 2**64


def is_held_out(key: str, eval_fraction: float, seed: int) -> bool:
    return split_value(key, seed) < eval_fraction


def write_prompts(out: Path, trained: Iterable[str], held_out: Iterable[str], **rule: Any) -> dict[str, int]:
    """Write `prompts.json` into an artifact; returns the counts the manifest records."""
    from hftune.artifacts import write_json

    trained, held_out = sorted(set(trained)), sorted(set(held_out))
    write_json(out / PROMPTS_FILE, {"key": KEY_VERSION, **rule, "trained": trained, "held_out": held_out})
    return {"trained_prompts": len(trained), "held_out_prompts": len(held_out)}


def read_prompts(folder: str | Path) -> dict[str, Any] | None:
    """An artifact's `prompts.json` with its key sets (None when it has none, or keys of another version)."""
    path = Path(folder) / PROMPTS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != KEY_VERSION:
        return None
    data["trained"], data["held_out"] = set(data.get("trained") or []), set(data.get("held_out") or [])
    return data


def held_out_upstream(model_path: str | None) -> set[str]:
    """Every prompt an artifact behind `model_path` held out: a stage that trains on top of it must not
    train on them (they are what the eval measures)."""
    from hftune.artifacts import is_complete
    from hftune.lineage import lineage

    keys: set[str] = set()
    if not model_path or not is_complete(model_path):
        return keys
    for node in lineage(model_path).nodes:
        record = read_prompts(node.folder) if node.folder is not None else None
        if record is not None:
            keys |= record["held_out"]
    return keys
