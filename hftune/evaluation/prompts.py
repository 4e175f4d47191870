"""The prompts an eval runs on: the rows the training stages held out, each as a conversation up to its
reply, with the reference answer where the data has one, and few-shot examples for the base model taken
from the training rows, never from the evaluated prompts.

Which rows are held out is read from the SFT model's `prompts.json` (the prompt keys it held out) when it
has one, so the eval measures exactly what SFT never saw, whatever rows SFT dropped; otherwise the held-out
rule itself decides (`prompt_keys.is_held_out`, a function of each prompt alone, with the suite's
`eval_fraction` and `split_seed`). Either way the contamination audit checks the result against every
stage behind every evaluated model."""

from __future__ import annotations

from dataclasses import dataclass, field

from hftune.errors import UserError
from hftune.evaluation.suite import Suite

# ------------------------------------------------------------------------------------------------------


@dataclass
class Prompts:
    messages: list[list[dict[str, str]]]  # each prompt as a conversation up to the reply
    references: list[str | None]
    few_shot: list[tuple[str, str]]  # (question, answer) pairs from the training rows
    keys: list[str] = field(default_factory=list)  # each prompt's key (prompt_keys.prompt_key)
    held_out_by: str | None = None  # the artifact whose held-out prompts these are (None: the suite's rule)


def last_user(messages: list[dict[str, str]]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def load_prompts(suite: Suite) -> Prompts:
    from hftune.data import prepare_dataset
    from hftune.data.formats import prompt_and_reference
    from hftune.data.prompt_keys import read_prompts

    recorded = read_prompts(suite.sft_model) if suite.sft_model and suite.split == "eval" else None
    if recorded is not None:
        # Every row of the source, then the ones the SFT model held out (and trained on, for few-shot).
        data = prepare_dataset(
            suite.data_recipe, seed=suite.split_seed, data_files=suite.data_files, max_rows=suite.max_samples
        )
        rows = [r for r, k in zip(data.train, data.train_keys, strict=True) if k in recorded["held_out"]]
        keys = [k for k in data.train_keys if k in recorded["held_out"]]
        seen = [r for r, k in zip(data.train, data.train_keys, strict=True) if k in recorded["trained"]]
        if not rows:
            raise UserError(
                f"{suite.data_recipe}: none of its prompts is among the {len(recorded['held_out'])} that "
                f"{suite.sft_model} held out; evaluate on the data SFT trained from (its manifest names it)"
            )
    else:
        data = prepare_dataset(
            suite.data_recipe,
            eval_fraction=suite.eval_fraction if suite.split == "eval" else 0.0,
            seed=suite.split_seed,
            data_files=suite.data_files,
            max_rows=suite.max_samples,
        )
        if suite.split == "eval" and data.eval is None:
            raise UserError(f"{suite.data_recipe}: no held-out rows (eval_fraction {suite.eval_fraction})")
        rows, keys = (
            (list(data.eval), data.eval_keys)
            if suite.split == "eval"
            else (list(data.train), data.train_keys)
        )
        seen = list(data.train) if suite.split == "eval" else []
    pairs = [prompt_and_reference(r) for r in rows][: suite.max_prompts]
    keys = keys[: suite.max_prompts]
    if len(pairs) < 2:
        raise UserError(f"{suite.data_recipe}: {len(pairs)} prompt(s) to evaluate; need at least 2")
    few_shot: list[tuple[str, str]] = []
    if isinstance(suite.few_shot, list):
        few_shot = [(x["prompt"], x["response"]) for x in suite.few_shot]
    elif suite.few_shot:
        # From the training rows, never from the prompts being evaluated.
        for row in seen:
            prompt, answer = prompt_and_reference(row)
            single_turn = len(prompt) == 1 or (len(prompt) == 2 and prompt[0]["role"] == "system")
            if answer is not None and single_turn:
                few_shot.append((last_user(prompt), answer))
            if len(few_shot) == suite.few_shot:
                break
    held_out_by = suite.sft_model if recorded is not None else None
    return Prompts([p for p, _ in pairs], [r for _, r in pairs], few_shot, keys, held_out_by)
