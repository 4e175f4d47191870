"""The prompts an eval runs on: the rows the training stages held out, each as a conversation up to its
reply, with the reference answer where the data has one, and few-shot examples for the base model taken
from the training rows, never from the evaluated prompts.

Which rows are held out is read from the SFT model's `prompts.json` (the prompt keys it held out) when it
has one, so the eval measures exactly what SFT never saw, whatever rows SFT dropped; otherwise the held-out
rule itself decides (`prompt_keys.is_held_out`, a function of each prompt alone, with the suite's
`eval_fraction` and `split_seed`). Either way the contamination audit checks the result against every
stage behind every evaluated model.

Each distinct prompt is evaluated once: a source may repeat a row, and a prompt counted twice would narrow
every bootstrap interval without adding evidence. Rows are the same prompt when the conversation the model
sees and the reference are the same (the same question with another reference is kept: its reference
metrics differ). The first occurrence is kept, in order, before `max_prompts` takes the first prompts, so
the cap counts distinct prompts; `duplicates` records what was dropped. A suite's `tasks` tags each prompt
with a task, for the per-task subtotals."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hftune.config import named_function
from hftune.errors import UserError
from hftune.evaluation.suite import Suite

logger = logging.getLogger(__name__)
REPEATED_SHOWN = 50  # entries of `duplicates.repeated` kept in results.json, most repeated first
UNTAGGED = "other"  # the task of a prompt no `tasks` pattern matches

# ------------------------------------------------------------------------------------------------------


@dataclass
class Prompts:
    messages: list[list[dict[str, str]]]  # each prompt as a conversation up to the reply
    references: list[str | None]
    few_shot: list[tuple[str, str]]  # (question, answer) pairs from the training rows
    keys: list[str] = field(default_factory=list)  # each prompt's key (prompt_keys.prompt_key)
    held_out_by: str | None = None  # the artifact whose held-out prompts these are (None: the suite's rule)
    # The rows the evaluated prompts stand for: {n_rows, n_distinct, n_dropped, repeated: [{prompt,
    # reference, count}]} (`distinct`).
    duplicates: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] | None = None  # each prompt's task, when the suite sets `tasks`


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
    pairs, keys, duplicates = distinct([prompt_and_reference(r) for r in rows], keys, suite.max_prompts)
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
    messages, references = [p for p, _ in pairs], [r for _, r in pairs]
    tasks = task_labels(suite.tasks, messages, references) if suite.tasks else None
    return Prompts(messages, references, few_shot, keys, held_out_by, duplicates, tasks)


def distinct(
    pairs: list[tuple[list[dict[str, str]], str | None]], keys: list[str], max_prompts: int | None
) -> tuple[list[tuple[list[dict[str, str]], str | None]], list[str], dict[str, Any]]:
    """The first occurrence of each distinct (conversation, reference), in order, at most `max_prompts` of
    them, with their keys, and what the rows behind them repeated: {n_rows, n_distinct, n_dropped, repeated}
    (the repeated prompts, most repeated first, at most REPEATED_SHOWN). The counts are of the rows behind
    the evaluated prompts, so `n_distinct` is always the number evaluated."""
    first: dict[str, int] = {}  # identity -> index of its first row (a dict keeps first-occurrence order)
    counts: Counter[str] = Counter()
    for i, (messages, reference) in enumerate(pairs):
        identity = json.dumps([messages, reference], sort_keys=True, ensure_ascii=False)
        first.setdefault(identity, i)
        counts[identity] += 1
    evaluated = list(first)[:max_prompts]
    repeated = sorted((x for x in evaluated if counts[x] > 1), key=lambda x: -counts[x])  # ties: in order
    n_rows = sum(counts[x] for x in evaluated)
    duplicates = {
        "n_rows": n_rows,
        "n_distinct": len(evaluated),
        "n_dropped": n_rows - len(evaluated),
        "repeated": [
            {"prompt": last_user(pairs[first[x]][0]), "reference": pairs[first[x]][1], "count": counts[x]}
            for x in repeated[:REPEATED_SHOWN]
        ],
    }
    if duplicates["n_dropped"]:
        logger.info(
            "%d distinct prompts (%d rows, %d repeats dropped: each prompt is evaluated once)",
            len(evaluated), n_rows, n_rows - len(evaluated),
        )  # fmt: skip
    return [pairs[first[x]] for x in evaluated], [keys[first[x]] for x in evaluated], duplicates


def task_labels(spec: dict[str, str] | str, messages: list[list[dict[str, str]]], references) -> list[str]:
    """Each prompt's task, from the suite's `tasks`: a mapping {task: regex}, searched in the prompt's text
    (its last user turn, what the verifier reads), where the first task whose pattern matches wins and a
    prompt none matches is UNTAGGED; or `module:function`, called with (prompt text, reference) and
    returning the task's name. A function that fails stops the eval here, before anything is generated."""
    texts = [last_user(m) for m in messages]
    if isinstance(spec, dict):
        patterns = [(task, re.compile(pattern)) for task, pattern in spec.items()]  # checked by the suite
        return [next((task for task, p in patterns if p.search(text)), UNTAGGED) for text in texts]
    tag = named_function("tasks", spec)
    labels = []
    for i, (text, reference) in enumerate(zip(texts, references, strict=True)):
        try:
            label = tag(text, reference)
        except Exception as err:  # the user's code: any exception is its failure on this prompt
            raise UserError(
                f"`tasks`: {spec} failed on prompt {i} ({text!r:.80}): {type(err).__name__}: {err}"
            ) from None
        if not isinstance(label, str) or not label:
            raise UserError(f"`tasks`: {spec} returned {label!r:.40} for prompt {i}, not a task name")
        labels.append(label)
    return labels
