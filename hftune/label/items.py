"""What a labeller ranks: the recipe's training prompts, never a held-out one, each with K completions
sampled from the model through the generation path the eval uses too (`models/generation.replies`: a
prompt's samples are seeded by the prompt itself and cached). They are written once to items.json, so a
restart shows the very same completions and loads no model at all."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

from hftune import artifacts
from hftune.errors import UserError
from hftune.label.config import LabelSettings

logger = logging.getLogger(__name__)

ITEMS_FILE = "items.json"
FORMAT = "hftune-label-items/1"


def sampling(s: LabelSettings) -> dict[str, Any]:
    """Everything the completions depend on: a folder sampled with other settings is not resumed."""
    from hftune.models.cache import fingerprint

    return {
        "model": s.model_name_or_path,
        "model_fingerprint": fingerprint(s.model_name_or_path),
        "data_recipe": s.data_recipe,
        "data_files": s.data_files,
        "max_samples": s.max_samples,
        "eval_fraction": s.eval_fraction,
        "split_seed": s.split_seed,
        "max_prompts": s.max_prompts,
        "num_completions": s.num_completions,
        "max_new_tokens": s.max_new_tokens,
        "temperature": s.temperature,
        "seed": s.seed,
        "chat_template": s.chat_template,
    }


def prompts(s: LabelSettings) -> tuple[list[list[dict[str, str]]], list[str]]:
    """The prompts to label and their keys: the recipe's training rows (its held-out split and every prompt
    a stage behind the model held out are dropped), each conversation up to its reply, one per prompt."""
    from hftune.data import prepare_dataset
    from hftune.data.formats import prompt_and_reference
    from hftune.data.prompt_keys import held_out_upstream

    data = prepare_dataset(
        s.data_recipe,
        eval_fraction=s.eval_fraction,
        seed=s.split_seed,
        data_files=s.data_files,
        max_rows=s.max_samples,
        exclude=held_out_upstream(s.model_name_or_path),
    )
    messages, keys = [], []
    for row, key in zip(data.train, data.train_keys, strict=True):
        if key in keys:
            continue  # a prompt repeated in the source is ranked once
        messages.append(prompt_and_reference(row)[0])
        keys.append(key)
    if s.max_prompts is not None:
        messages, keys = messages[: s.max_prompts], keys[: s.max_prompts]
    if not messages:
        raise UserError(f"{s.data_recipe}: no training prompts left to label (all held out or dropped)")
    return messages, keys


def sample(s: LabelSettings) -> list[dict[str, Any]]:
    """K completions per prompt from the model: one item per prompt, completions in sampling order."""
    from trl import ModelConfig

    from hftune.models.cache import Cache
    from hftune.models.generation import Decoding, replies
    from hftune.models.loading import load_variants
    from hftune.models.scoring import check_pad_token
    from hftune.models.tokenizer import encode_prompt, load_tokenizer

    messages, keys = prompts(s)
    tokenizer = load_tokenizer(
        s.model_name_or_path, chat_template=s.chat_template, trust_remote_code=s.trust_remote_code
    )
    check_pad_token(tokenizer, s.model_name_or_path)
    policy = load_variants(
        {"policy": s.model_name_or_path}, ModelConfig(dtype="auto"), trust_remote_code=s.trust_remote_code
    )["policy"]
    encoded = [encode_prompt(tokenizer, m) for m in messages]
    decoding = Decoding(s.max_new_tokens, s.temperature, s.num_completions, s.seed)
    logger.info("sampling %d completions for each of %d prompts", s.num_completions, len(messages))
    got = replies(
        policy, tokenizer, encoded, decoding, Cache(s.cache_dir), batch_size=s.batch_size, desc="sampling"
    )
    return [
        {
            "id": key,
            "prompt": m,
            "completions": [r["text"] for r in reps],
            "ended": [r["ended"] for r in reps],
        }
        for key, m, reps in zip(keys, messages, got, strict=True)
    ]


def read(out: Path) -> dict[str, Any] | None:
    path = out / ITEMS_FILE
    if not path.is_file():
        return None
    data = artifacts.read_json(path, "label items")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path}: not an hftune label items file; choose another `output_dir`")
    return data


def changed(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [k for k in now if recorded.get(k) != now[k]]


def write(out: Path, settings: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """items.json, atomically. `order_salt` orders each labeller's view of an item (never sent to the
    page)."""
    data = {"format": FORMAT, "sampling": settings, "order_salt": secrets.token_hex(16), "items": items}
    artifacts.write_json(out / ITEMS_FILE, data)
    return data
