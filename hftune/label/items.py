"""What a labeller ranks: the recipe's training prompts, never a held-out one, each with K completions
sampled from the model through the generation path the eval uses too (`models/generation.replies`: a
prompt's samples are seeded by the prompt itself and cached). They are written once to items.json, so a
restart shows the very same completions and loads no model at all.

With a `reward_model`, every completion is scored at sampling time through the scoring path the eval and PPO
use (`models.scoring.score_cached`: cached by reward model, prompt and reply), and each item records its
`scores` and its `margin`: the top completion's score minus the best score of a completion with another
text (copies of one text score the same, and a person learns nothing ranking them apart; an item whose
completions are all one text has no margin, null, and nothing to rank). With a `verifier` each completion
also records whether it passes (`verified`: the verifier's value >= 0.5, None where it raised), and an item
`disagreement` when the reward model's top completion (the first of a tie) fails while another passes.
`order: uncertainty` serves the disagreements first, then the smallest margins, then the items without one:
the rankings a person adds most to first. items.json holds the items in serving order.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftune import artifacts
from hftune.config import named_function
from hftune.errors import UserError

if TYPE_CHECKING:  # for type hints only: config -> store -> items would otherwise import in a cycle
    from hftune.label.config import LabelSettings

logger = logging.getLogger(__name__)

ITEMS_FILE = "items.json"
FORMAT = "hftune-label-items/1"
PASS = 0.5  # a verifier value at or above this passes (1.0 = correct)


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
        **ordering(s),
    }


def ordering(s: LabelSettings) -> dict[str, Any]:
    """What items.json's scores and order depend on. Only the keys set: a folder sampled before these
    settings existed (and without them) still resumes."""
    from hftune.models.cache import fingerprint

    keys: dict[str, Any] = {}
    if s.order != "recipe":
        keys["order"] = s.order
    if s.reward_model:
        keys.update(reward_model=s.reward_model, reward_model_fingerprint=fingerprint(s.reward_model))
    if s.verifier:
        keys["verifier"] = s.verifier
    return keys


def prompts(s: LabelSettings) -> tuple[list[list[dict[str, str]]], list[str], list[str | None]]:
    """The prompts to label, their keys and references (for a `verifier`): the recipe's training rows (its
    held-out split and every prompt a stage behind the model held out are dropped), each conversation up to
    its reply, one per prompt."""
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
    messages, keys, references = [], [], []
    for row, key in zip(data.train, data.train_keys, strict=True):
        if key in keys:
            continue  # a prompt repeated in the source is ranked once
        prompt, reference = prompt_and_reference(row)
        messages.append(prompt)
        keys.append(key)
        references.append(reference)
    if s.max_prompts is not None:
        messages, keys, references = (x[: s.max_prompts] for x in (messages, keys, references))
    if not messages:
        raise UserError(f"{s.data_recipe}: no training prompts left to label (all held out or dropped)")
    return messages, keys, references


def sample(s: LabelSettings) -> list[dict[str, Any]]:
    """K completions per prompt from the model: one item per prompt, completions in sampling order, scored
    and ordered as the settings ask (the module docstring)."""
    from trl import ModelConfig

    from hftune.models.cache import Cache
    from hftune.models.generation import Decoding, replies
    from hftune.models.loading import load_variants
    from hftune.models.scoring import check_pad_token
    from hftune.models.tokenizer import encode_prompt, load_tokenizer

    if s.verifier:
        named_function(
            "verifier", s.verifier
        )  # one that does not import is refused before minutes of sampling
    messages, keys, references = prompts(s)
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
    del policy  # before a reward model loads beside it
    items = [
        {
            "id": key,
            "position": position,  # in the recipe's order: `order: uncertainty` serves them otherwise
            "prompt": m,
            "reference": reference,
            "completions": [r["text"] for r in reps],
            "ended": [r["ended"] for r in reps],
        }
        for position, (key, m, reference, reps) in enumerate(
            zip(keys, messages, references, got, strict=True)
        )
    ]
    if s.reward_model:
        scored = score(items, s.reward_model, cache_dir=s.cache_dir, batch_size=s.batch_size)
        for item, scores in zip(items, scored, strict=True):
            item["scores"] = scores
    if s.verifier:
        for item, passes in zip(items, verify(items, s.verifier), strict=True):
            item["verified"] = passes
    return serving_order(items, s.order)


def score(
    items: list[dict[str, Any]], reward_model: str, *, cache_dir: str | None = None, batch_size: int = 16
) -> list[list[float]]:
    """Each item's completions scored by the reward model through the scoring path PPO and the eval use,
    cached under the same key (`models.scoring.score_cached`), so either reuses the scores the other
    computed."""
    from hftune.models.cache import Cache, fingerprint
    from hftune.models.scoring import load_scorer, score_cached

    scorer = load_scorer(reward_model)
    prompts_ = [item["prompt"] for item in items for _ in item["completions"]]
    texts = [text for item in items for text in item["completions"]]
    logger.info("scoring %d completions with the reward model %s", len(texts), reward_model)
    cache = Cache(cache_dir)
    return _regroup(
        items, score_cached(scorer, fingerprint(reward_model), prompts_, texts, cache, batch_size)
    )


def verify(items: list[dict[str, Any]], spec: str) -> list[list[bool | None]]:
    """Whether each completion passes the verifier (its value >= PASS); None where the verifier raised or
    gave no number, as the eval leaves such a reply unverified rather than failed."""
    import math

    check = named_function("verifier", spec)
    flat: list[bool | None] = []
    failed: list[str] = []
    for item in items:
        # The prompt as the eval gives it to a verifier: the last user message.
        prompt = next(m["content"] for m in reversed(item["prompt"]) if m["role"] == "user")
        for text in item["completions"]:
            try:
                value = float(check(prompt, text, item.get("reference")))
            except Exception as err:  # the user's code: any exception is its failure on this reply
                value = math.nan
                failed.append(f"{item['id']}: {type(err).__name__}: {err}"[:200])
            flat.append(value >= PASS if math.isfinite(value) else None)
    if failed:
        logger.warning(
            "the verifier %s failed on %d of %d completions (left unverified); first: %s",
            spec, len(failed), len(flat), failed[0],
        )  # fmt: skip
    return _regroup(items, flat)


def _regroup(items: list[dict[str, Any]], flat: list) -> list[list]:
    out, start = [], 0
    for item in items:
        out.append(flat[start : start + len(item["completions"])])
        start += len(item["completions"])
    return out


def margin(completions: list[str], scores: list[float]) -> float | None:
    """How sure the reward model is of an item: its top completion's score minus the best score of another
    text; None when all completions are one text."""
    best = dict(zip(completions, scores, strict=True))  # a text's copies all score the same
    top, *rest = sorted(best.values(), reverse=True)
    return top - rest[0] if rest else None


def disagrees(scores: list[float], passes: list[bool | None]) -> bool:
    """The reward model's top completion (the first of a tie) fails the verifier while another passes."""
    top = scores.index(max(scores))
    return passes[top] is False and any(p is True for i, p in enumerate(passes) if i != top)


def serving_order(items: list[dict[str, Any]], order: str) -> list[dict[str, Any]]:
    """Each scored item's `margin` (and `disagreement`, where verified) recorded; with `order: uncertainty`
    the disagreements first, then by margin, smallest first, then the items without one (ties keep the
    recipe's order)."""
    for item in items:
        if "scores" in item:
            item["margin"] = margin(item["completions"], item["scores"])
            if "verified" in item:
                item["disagreement"] = disagrees(item["scores"], item["verified"])
    if order == "recipe":
        return items
    return sorted(
        items,
        key=lambda item: (not item.get("disagreement", False), item["margin"] is None, item["margin"] or 0.0),
    )


def margins(items: list[dict[str, Any]]) -> list[float | None]:
    """The reward model's margin on each item (the items must have been scored)."""
    return [margin(item["completions"], item["scores"]) for item in items]


def mean_margin(items: list[dict[str, Any]]) -> float:
    """The mean margin over the items that have one (NaN if none has)."""
    values = [m for m in margins(items) if m is not None]
    return sum(values) / len(values) if values else float("nan")


def read(out: Path) -> dict[str, Any] | None:
    path = out / ITEMS_FILE
    if not path.is_file():
        return None
    data = artifacts.read_json(path, "label items")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path}: not an hftune label items file; choose another `output_dir`")
    return data


def changed(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings that differ, also one set then and unset now (a reward model dropped)."""
    return [k for k in {**recorded, **now} if recorded.get(k) != now.get(k)]


def write(out: Path, settings: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """items.json, atomically. `order_salt` orders each labeller's view of an item (never sent to the
    page)."""
    data = {"format": FORMAT, "sampling": settings, "order_salt": secrets.token_hex(16), "items": items}
    artifacts.write_json(out / ITEMS_FILE, data)
    return data
