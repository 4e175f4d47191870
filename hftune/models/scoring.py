"""Scoring (prompt, response) pairs with a reward model: the one path that reward training, PPO and the
eval harness all go through, so the same pair always gets the same reward.

    from hftune.models.scoring import load_scorer
    scorer = load_scorer("runs/reward")             # reward model + its tokenizer and score statistics
    scorer.score([[{"role": "user", "content": "2+2?"}]], ["4."])   # tensor([1.73])

A pair is rendered through the chat template as a conversation ending with the assistant reply and cut
right after the reply's end-of-turn token (what a policy emits when it stops), right-padded, and scored
at its last real token. Padding moves a score only in the last bits; the eval's cached scores avoid it
(`one_length` batches).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hftune.errors import UserError
from hftune.models.cache import Cache, key
from hftune.models.generation import length_batches
from hftune.models.tokenizer import encode_prompt, load_tokenizer

Prompt = str | list[dict[str, str]]
REPORT_FILE = "reward_report.json"


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def encode(tokenizer, prompt: Prompt, response: str) -> list[int]:
    """Token ids of (prompt, response) as the reward model sees them."""
    conversation = [*as_messages(prompt), {"role": "assistant", "content": response}]
    ids = list(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"])
    eos = tokenizer.eos_token_id
    # Templates often add text after the end-of-turn token (ChatML adds "\n"); a generated response stops
    # at the token itself, so training, PPO and eval all score the sequence ending there.
    if eos is not None and eos in ids:
        ids = ids[: len(ids) - ids[::-1].index(eos)]
    return ids


def prompt_length(tokenizer, prompt: Prompt) -> int:
    """How many leading tokens of `encode(tokenizer, prompt, reply)` are the prompt; the rest is the reply."""
    return len(encode_prompt(tokenizer, as_messages(prompt)))


def check_pad_token(tokenizer, where: str) -> None:
    """The score is read at the last token that is not padding: with pad == eos, the end-of-turn token
    would count as padding and the score would come from the token before it."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise UserError(
            f"{where}: the tokenizer pads with its eos token ({tokenizer.eos_token!r}), so a reward model "
            "cannot tell the end of a reply from padding. Use a tokenizer with a separate pad token."
        )


@torch.no_grad()
def score_ids(
    model,
    sequences: Sequence[Sequence[int]],
    pad_token_id: int,
    batch_size: int = 16,
    *,
    one_length: bool = False,
) -> torch.Tensor:
    """Scores of token sequences, batched by similar length; returned in the input order, on the CPU.

    A right-padded row's score can differ in the last bits from its unpadded one (the padded attention
    and matmuls have other shapes), so it depends a little on what shares its batch. `one_length` batches
    only sequences of one length, so no row is padded and a score no longer depends on its neighbours'
    lengths (the eval's cache). What remains is float32 rounding of the one-column score head, which on
    CPU can depend on how many rows one call holds (about 1e-7 relative). Off, batches stay as reward
    training and PPO have always formed them (their scores, and the statistics PPO normalises by, stay
    the same)."""
    if model.config.pad_token_id != pad_token_id:
        raise UserError(
            f"reward model pads with id {model.config.pad_token_id} but the tokenizer with {pad_token_id}; "
            "they must agree or scores are read at the wrong token"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if one_length:
        chunks = length_batches(sequences, batch_size)
    else:
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    scores = torch.empty(len(sequences), dtype=torch.float32)
    for chunk in chunks:
        width = max(len(sequences[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            seq = torch.as_tensor(list(sequences[i]), dtype=torch.long)
            input_ids[row, : len(seq)] = seq  # right padding: positions match an unpadded forward pass
            attention_mask[row, : len(seq)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        scores[chunk] = logits[:, 0].float().cpu()
    model.train(was_training)
    return scores


@dataclass
class Scorer:
    """A reward model with its tokenizer and the score statistics measured after training."""

    model: Any
    tokenizer: Any
    stats: dict[str, float] = field(default_factory=dict)  # mean/std of held-out scores (for normalising)

    def encode(self, prompt: Prompt, response: str) -> list[int]:
        return encode(self.tokenizer, prompt, response)

    def score(
        self,
        prompts: Sequence[Prompt],
        responses: Sequence[str],
        batch_size: int = 16,
        *,
        one_length: bool = False,
    ) -> torch.Tensor:
        """Scores of (prompt, response) pairs; `one_length` as in `score_ids`."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        ids = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        return score_ids(self.model, ids, self.tokenizer.pad_token_id, batch_size, one_length=one_length)

    def normalise(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores on the scale PPO expects: zero mean, unit std over the reward model's held-out data."""
        if "mean" not in self.stats or not self.stats.get("std"):
            return scores
        return (scores - self.stats["mean"]) / self.stats["std"]


def load_scorer(path: str, model_args=None, *, trust_remote_code: bool = False) -> Scorer:
    """A saved reward model (folder written by `hftune reward`), ready to score."""
    from trl import ModelConfig

    from hftune.models import loading

    source = loading.resolve_source(path)
    if not source.is_reward_model:
        raise UserError(
            f"{path} is not a reward model (no sequence-classification head); train one with `hftune reward`"
        )
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    check_pad_token(tokenizer, path)
    model = loading.load_reward_model(
        path, model_args or ModelConfig(dtype="auto"), trust_remote_code=trust_remote_code
    ).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    report = Path(path) / REPORT_FILE
    stats = json.loads(report.read_text()).get("score_stats", {}) if report.is_file() else {}
    return Scorer(model, tokenizer, stats)


def score_cached(
    scorer, scorer_fingerprint: str, prompts, texts: list[str], cache: Cache, batch_size: int
) -> list[float]:
    """Rewards through the shared scoring path, cached by (reward model, prompt, reply): the eval and
    `hftune label` (its reward-model order and `label auto`) reuse each other's scores. Unpadded
    (`one_length`), so a cached score does not depend on the lengths of the replies scored beside it."""

    def score(missing: list[int]) -> list[float]:
        values = scorer.score(
            [prompts[i] for i in missing], [texts[i] for i in missing], batch_size=batch_size, one_length=True
        )
        return [float(v) for v in values.tolist()]

    keys = [key("reward", scorer_fingerprint, p, t) for p, t in zip(prompts, texts, strict=True)]
    return cache.get_or_compute("rewards", keys, score)
