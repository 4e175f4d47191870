"""The prompts an eval runs on: the rows the training stages held out (same recipe, `eval_fraction` and
seed), each as a conversation up to its reply, with the reference answer where the data has one, and
few-shot examples for the base model taken from the training rows, never from the evaluated prompts."""

from __future__ import annotations

from dataclasses import dataclass

from hftune.errors import UserError
from hftune.evaluation.suite import Suite

# ------------------------------------------------------------------------------------------------------


@dataclass
class Prompts:
    messages: list[list[dict[str, str]]]  # each prompt as a conversation up to the reply
    references: list[str | None]
    few_shot: list[tuple[str, str]]  # (question, answer) pairs from the training rows


def last_user(messages: list[dict[str, str]]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def _prompt_and_reference(row: dict) -> tuple[list[dict[str, str]], str | None]:
    if row.get("messages") is not None:
        messages = list(row["messages"])
        if messages[-1]["role"] == "assistant":
            return messages[:-1], messages[-1]["content"]
        return messages, None
    if row.get("prompt") is not None:
        prompt = row["prompt"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        completion = row.get("completion")
        if isinstance(completion, list):
            completion = completion[-1]["content"] if completion else None
        return prompt, completion
    raise UserError("eval prompts need a conversational, prompt-completion or prompt-only recipe")


def load_prompts(suite: Suite) -> Prompts:
    from hftune.data import prepare_dataset

    data = prepare_dataset(
        suite.data_recipe,
        eval_fraction=suite.eval_fraction if suite.split == "eval" else 0.0,
        seed=suite.split_seed,
        data_files=suite.data_files,
        max_rows=suite.max_samples,
    )
    if suite.split == "eval" and data.eval is None:
        raise UserError(f"{suite.data_recipe}: no held-out rows (eval_fraction {suite.eval_fraction})")
    rows = list(data.eval) if suite.split == "eval" else list(data.train)
    pairs = [_prompt_and_reference(r) for r in rows][: suite.max_prompts]
    if len(pairs) < 2:
        raise UserError(f"{suite.data_recipe}: {len(pairs)} prompt(s) to evaluate; need at least 2")
    few_shot: list[tuple[str, str]] = []
    if isinstance(suite.few_shot, list):
        few_shot = [(x["prompt"], x["response"]) for x in suite.few_shot]
    elif suite.few_shot and suite.split == "eval":
        # From the training rows, never from the prompts being evaluated.
        for row in data.train:
            prompt, answer = _prompt_and_reference(row)
            single_turn = len(prompt) == 1 or (len(prompt) == 2 and prompt[0]["role"] == "system")
            if answer is not None and single_turn:
                few_shot.append((last_user(prompt), answer))
            if len(few_shot) == suite.few_shot:
                break
    return Prompts([p for p, _ in pairs], [r for _, r in pairs], few_shot)
