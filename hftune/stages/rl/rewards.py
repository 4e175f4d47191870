"""What the RL stage optimises and how it checks itself: the prompts of a recipe's rows, the one reward
every algorithm gets (the reward model through `hftune.models.scoring`, normalised, and/or a task verifier,
weighted, with the missing-EOS penalty), and the held-out evaluator that scores greedy completions of fixed
prompts the same way."""

from __future__ import annotations

import math
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


class Verifier:
    """A task verifier as a reward: `module:function(question, reply, reference) -> float`, the signature
    the eval suites' verifiers have (`hftune.evaluation.verifiers:verify_answer` for the built-in tasks),
    so the reward RL optimises can be the very check the eval reports. RL prompts carry no reference
    answer: the function gets None and must solve the task from the question, as `verify_answer` does."""

    def __init__(self, spec: str):
        from hftune.evaluation.measures import load_verifier

        self.spec = spec
        self.verify = load_verifier(spec)

    def __call__(self, prompts, responses: list[str]) -> torch.Tensor:
        from hftune.evaluation.prompts import last_user

        values = []
        for i, (prompt, reply) in enumerate(zip(prompts, responses, strict=True)):
            try:
                value = float(self.verify(last_user(prompt), reply, None))
            except Exception as err:  # the user's code: a reward that cannot be computed stops the run
                raise UserError(
                    f"`verifier`: {self.spec} failed on a rollout (prompt {last_user(prompt)[:60]!r}, reply "
                    f"{reply[:60]!r}): {type(err).__name__}: {err}"
                ) from None
            if not math.isfinite(value):
                raise UserError(
                    f"`verifier`: {self.spec} returned {value} for reply {reply[:60]!r} (row {i})"
                )
            values.append(value)
        return torch.tensor(values, dtype=torch.float)


class RewardFn:
    """The one reward every algorithm gets: `reward_model_weight` x the reward model's score (through
    `hftune.models.scoring`, normalised) + `verifier_weight` x a task verifier's, minus the missing-EOS
    penalty. Also records response lengths for the guardrails."""

    __name__ = "reward_model"  # TRL names the reward column after it

    def __init__(
        self,
        scorer: scoring.Scorer | None,
        *,
        normalize: bool,
        missing_eos_penalty: float | None,
        stats: RolloutStats,
        eos_token_id: int | None = None,
        verifier: Verifier | None = None,
        reward_model_weight: float = 1.0,
        verifier_weight: float = 1.0,
    ):
        if scorer is None and verifier is None:
            raise ValueError("a reward needs a reward model or a verifier")
        self.scorer = scorer if reward_model_weight else None
        self.normalize = normalize
        self.penalty = missing_eos_penalty
        self.stats = stats
        self.eos_token_id = eos_token_id if eos_token_id is not None else scorer.tokenizer.eos_token_id
        self.verifier = verifier
        self.reward_model_weight = reward_model_weight
        self.verifier_weight = verifier_weight

    def rewards(
        self, prompts, responses: list[str], ended: list[bool], lengths: list[int], *, record: bool = True
    ) -> torch.Tensor:
        scores = torch.zeros(len(responses))
        if self.scorer is not None:
            from_model = self.scorer.score(prompts, responses)
            if self.normalize:
                from_model = self.scorer.normalise(from_model)
            scores = scores + self.reward_model_weight * from_model.float().cpu()
        if self.verifier is not None:
            scores = scores + self.verifier_weight * self.verifier(prompts, responses)
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
        ended = [self.eos_token_id in ids for ids in completion_ids]
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
