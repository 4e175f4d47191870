"""What the RL stage optimises and how it checks itself: the prompts of a recipe's rows, the one reward
every algorithm gets (the reward model through `hftune.models.scoring`, normalised, with the missing-EOS
penalty), and the held-out evaluator that scores greedy completions of fixed prompts the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hftune.errors import UserError
from hftune.models import generation, scoring
from hftune.models.tokenizer import encode_prompt
from hftune.stages.rl.guardrails import RolloutStats


def prompt_rows(dataset) -> list[list[dict[str, str]]]:
    """The prompt of each row: a prompt-only row's prompt, or a conversation up to its last reply."""
    out = []
    for row in dataset:
        if row.get("prompt") is not None:
            out.append(list(row["prompt"]))
        elif row.get("messages") is not None:
            out.append(list(row["messages"][:-1]))
        else:
            raise UserError("the RL stage needs prompts: use a prompt-only or conversational recipe")
    return out


class RewardFn:
    """Scores completions through `hftune.models.scoring`, normalised, with the missing-EOS penalty; the
    one reward every algorithm gets. Also records response lengths for the guardrails."""

    __name__ = "reward_model"  # TRL names the reward column after it

    def __init__(
        self,
        scorer: scoring.Scorer,
        *,
        normalize: bool,
        missing_eos_penalty: float | None,
        stats: RolloutStats,
    ):
        self.scorer = scorer
        self.normalize = normalize
        self.penalty = missing_eos_penalty
        self.stats = stats

    def rewards(
        self, prompts, responses: list[str], ended: list[bool], lengths: list[int], *, record: bool = True
    ) -> torch.Tensor:
        scores = self.scorer.score(prompts, responses)
        if self.normalize:
            scores = self.scorer.normalise(scores)
        if self.penalty is not None:
            scores = scores - self.penalty * (~torch.tensor(ended, dtype=torch.bool)).float()
        if record:  # rollouts feed the length guardrails; held-out checks do not
            self.stats.lengths += lengths
            self.stats.ended += ended
        return scores

    def score_replies(self, prompts, replies: Sequence[generation.Reply]) -> torch.Tensor:
        """Rewards of `hftune.models.generation` replies, not counted as rollouts (held-out checks)."""
        texts = [r.text for r in replies]
        ended = [r.ended for r in replies]
        return self.rewards(prompts, texts, ended, [len(r.ids) for r in replies], record=False)

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        # RLOO/GRPO: conversational completions are [{"role": "assistant", "content": ...}].
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        eos = self.scorer.tokenizer.eos_token_id
        ended = [eos in ids for ids in completion_ids]
        lengths = [len(ids) for ids in completion_ids]
        return self.rewards(prompts, texts, ended, lengths).tolist()


def encode_prompts(tokenizer, prompts) -> list[list[int]]:
    """Each prompt through the chat template, up to where the assistant's reply starts."""
    return [encode_prompt(tokenizer, p) for p in prompts]


def heldout_evaluator(prompts, tokenizer, reward_fn: RewardFn, max_new_tokens: int):
    """Greedy completions of fixed held-out prompts, scored like training rewards but not counted as
    rollouts. Greedy, not sampled: two checks then differ only by the policy, not by sampling noise (with
    16 prompts, sampled rewards moved by more than the alarm's tolerance between two nearby policies)."""
    encoded = encode_prompts(tokenizer, prompts)

    @torch.no_grad()
    def evaluate(policy) -> tuple[float, list[dict[str, Any]]]:
        replies = generation.generate(policy, tokenizer, encoded, max_new_tokens)
        scores = reward_fn.score_replies(prompts, replies)
        samples = [
            {"prompt": p[-1]["content"], "response": r.text, "ended": r.ended, "reward": float(s)}
            for p, r, s in zip(prompts, replies, scores, strict=True)
        ]
        return float(scores.mean()), samples

    return evaluate
