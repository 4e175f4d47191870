"""Eval suites: which models to compare, on which held-out prompts, with which decoding and metrics.

A suite is one flat YAML file (built-ins in `eval/suites/`), parsed as strictly as a stage config: every
unknown key, wrong type or impossible combination is reported at once, and `--key value` flags override
the file (`hftune eval --config eval/suites/tiny.yaml --max_prompts 16`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftune.config import StageConfig, StageSchema, field_defaults, hftune_field, parse_stage_config
from hftune.errors import UserError, did_you_mean
from hftune.resources import eval_suite

VARIANT_KINDS = ("base", "sft", "rlhf", "best_of_n", "reference")
METRICS = (
    "reward",
    "win_rate",
    "expected_reward",
    "kl_to_sft",
    "length",
    "eos_rate",
    "loop_rate",
    "distinct",
    "exact_match",
    "rouge_l",
    "bleu",
    "verifier",
)

# The eval's default batch size (`batch_size: null`): a tiny model computes a batch of 256 prompts in about
# the time per-call and per-step overhead takes anyway; a real model's memory is safer with 64.
AUTO_BATCH, AUTO_BATCH_SMALL, AUTO_SMALL_PARAMS = 64, 256, 10_000_000


def auto_batch_size(parameters: int) -> int:
    """`batch_size: null`: the batch for the largest model the eval runs (`parameters` of it)."""
    return AUTO_BATCH_SMALL if parameters < AUTO_SMALL_PARAMS else AUTO_BATCH


@dataclass
class Suite:
    """An eval suite. Decoding is always set here, never inherited from a checkpoint's generation config."""

    name: str = hftune_field("eval", "Name shown in the report.")
    output_dir: str = hftune_field("runs/eval", "Where results.json, samples.jsonl and the reports go.")
    # Models
    sft_model: str | None = hftune_field(
        None,
        "The SFT model (folder or Hub id): the `sft` variant, the KL reference and the best-of-N sampler.",
    )
    base_model: str | None = hftune_field(
        None, "The base model for the `base` variant (default: the base the SFT model was trained from)."
    )
    rlhf_models: dict | list[str] | None = hftune_field(
        None,
        "RLHF policies: a folder, a list of folders, or a mapping name -> folder (one variant each). A "
        "mapping name -> list of folders is one variant trained with several seeds "
        "(`{rlhf: [runs/ppo-seed1, runs/ppo-seed2]}`): each run generates, the variant's per-prompt value is "
        "the mean over its runs, and results.json adds a CI across seeds.",
    )
    reward_model: str | None = hftune_field(
        None, "Reward model folder (`hftune reward`): rewards and win rates."
    )
    variants: list[str] = hftune_field(
        ["base", "sft", "rlhf", "best_of_n", "reference"],
        f"Variants to compare, from {', '.join(VARIANT_KINDS)}. `reference` needs reference answers.",
    )
    baseline: str | None = hftune_field("sft", "Variant the paired differences are measured against.")
    # Prompts
    data_recipe: str | None = hftune_field(None, "Recipe the prompts (and reference answers) come from.")
    data_files: str | None = hftune_field(None, "A local file in the recipe's schema, instead of its source.")
    split: str = hftune_field(
        "eval",
        "`eval`: the rows the training stages held out (same `eval_fraction` and `split_seed` as they used); "
        "`all`: every row (a prompt set made for evaluation).",
        choices=("eval", "all"),
    )
    eval_fraction: float = hftune_field(
        0.1, "The training stages' `eval_fraction` (to find their held-out rows)."
    )
    split_seed: int = hftune_field(42, "The training stages' `seed` (to find their held-out rows).")
    max_samples: int | None = hftune_field(
        None, "The training stages' `max_samples` (they split only those rows; to find their held-out rows)."
    )
    max_prompts: int | None = hftune_field(64, "Evaluate at most this many prompts (null: all).")
    # The base variant
    few_shot: int | list[dict] = hftune_field(
        3,
        "Examples in the base model's few-shot prefix: a number (taken from the recipe's training rows, "
        "never from the evaluated prompts) or a list of {prompt, response}.",
    )
    few_shot_format: str = hftune_field(
        "Q: {prompt}\nA: {response}\n", "How one few-shot example is written; the prompt ends after `A:`."
    )
    base_stop: list[str] = hftune_field(
        ["\nQ:"], "Strings that end a base model's answer (its next question)."
    )
    # Decoding
    max_new_tokens: int = hftune_field(64, "Most tokens generated per response (greedy and sampled).")
    num_samples: int = hftune_field(
        4, "Sampled responses per prompt (expected reward, KL to SFT, diversity, best-of-N pool). 0: none."
    )
    temperature: float = hftune_field(1.0, "Sampling temperature (1.0 for an unbiased KL estimate).")
    best_of_n: int = hftune_field(4, "Best-of-N: how many SFT samples the reward model picks from.")
    seed: int = hftune_field(0, "Seed of the sampled responses (each prompt's samples get their own seed).")
    batch_size: int | None = hftune_field(
        None,
        "Prompts per generation batch (sampling: times num_samples rows), sequences per scoring / log-prob "
        "batch. Batches hold one length only, so results do not depend on it: only speed and memory do. "
        f"null: {AUTO_BATCH_SMALL} for models under {AUTO_SMALL_PARAMS // 1_000_000}M parameters (per-call "
        f"overhead dominates there), {AUTO_BATCH} otherwise.",
    )
    # Metrics
    metrics: list[str] = hftune_field(list(METRICS), f"Metrics, from {', '.join(METRICS)}.")
    verifier: str | None = hftune_field(
        None, "Task verifier `module:function(prompt, response, reference) -> float` (1.0 = correct)."
    )
    tasks: dict[str, str] | str | None = hftune_field(
        None,
        "Tag each prompt with a task, for per-task subtotals (results.json `tasks`, a report table): a "
        "mapping {task: regex}, searched in the prompt's text in order, the first match wins and a prompt "
        "none matches is `other`; or `module:function(prompt, reference) -> task name`.",
    )
    bootstrap_samples: int = hftune_field(2000, "Bootstrap resamples of the prompts for the 95% CIs.")
    confidence: float = hftune_field(0.95, "Confidence level of the intervals.")
    judge: dict | None = hftune_field(
        None,
        "Optional LLM judge on an OpenAI-compatible endpoint: {base_url, model, api_key_env, pairs, ...}. "
        "The key is read from the environment variable `api_key_env` names, never from the suite.",
    )
    cache_dir: str | None = hftune_field(
        None, "Cache of generations and scores (default: $HFTUNE_CACHE/eval); adding a variant reuses it."
    )
    trust_remote_code: bool = hftune_field(False, "Allow model code from the Hub (off unless you trust it).")
    allow_contamination: bool = hftune_field(
        False,
        "Evaluate even if some prompts were trained on by a stage behind a model (the contamination audit "
        "otherwise stops the eval): the report flags the overlap and gives every metric on the clean "
        "prompts.",
    )


def _check(values: dict[str, Any]) -> list[str]:
    values = {
        **field_defaults(Suite),
        **values,
    }  # the schema has no defaults of its own: unset keys are Suite's
    problems = []
    variants = values.get("variants") or []
    for v in variants:
        if v not in VARIANT_KINDS:
            problems.append(f"`variants`: unknown variant {v!r} (choose from {', '.join(VARIANT_KINDS)})")
    if len(set(variants)) != len(variants):
        problems.append("`variants`: a variant is listed twice")
    for m in values.get("metrics") or []:
        if m not in METRICS:
            problems.append(f"`metrics`: unknown metric {m!r}{did_you_mean(m, METRICS)}")
    if not values.get("data_recipe"):
        problems.append("`data_recipe`: required (the recipe the prompts come from)")
    needs_sft = {"sft", "best_of_n"} & set(variants) or "kl_to_sft" in (values.get("metrics") or [])
    if needs_sft and not values.get("sft_model"):
        problems.append("`sft_model`: required for the sft / best_of_n variants and kl_to_sft")
    if "rlhf" in variants and not values.get("rlhf_models"):
        problems.append("`rlhf_models`: required for the rlhf variant")
    problems += _rlhf_models_problems(values.get("rlhf_models"))
    if "base" in variants and not (values.get("base_model") or values.get("sft_model")):
        problems.append("`base_model`: required for the base variant (or an `sft_model` to find it from)")
    reward_users = {"reward", "win_rate", "expected_reward"} & set(values.get("metrics") or [])
    if (reward_users or "best_of_n" in variants) and not values.get("reward_model"):
        problems.append(
            "`reward_model`: required for best_of_n and the reward, win_rate, expected_reward metrics"
        )
    if values.get("batch_size") is not None and values["batch_size"] < 1:
        problems.append("`batch_size`: at least 1 (or null for the default)")
    if values.get("max_prompts") is not None and values["max_prompts"] < 2:
        problems.append("`max_prompts`: need at least 2 prompts for a confidence interval")
    if values.get("baseline") and values["baseline"] not in variants and values["baseline"] != "sft":
        problems.append(f"`baseline`: {values['baseline']!r} is not one of the variants")
    verifier = values.get("verifier")
    if verifier and ":" not in verifier:
        problems.append(f"`verifier`: expected `module:function`, got {verifier!r}")
    problems += _tasks_problems(values.get("tasks"))
    fmt = values["few_shot_format"]
    if "{prompt}" not in fmt or "{response}" not in fmt:
        problems.append("`few_shot_format`: must contain `{prompt}` and `{response}`")
    few = values.get("few_shot")
    if isinstance(few, list) and not all(
        isinstance(x, dict) and {"prompt", "response"} <= set(x) for x in few
    ):
        problems.append("`few_shot`: each example needs `prompt` and `response`")
    return problems


def _tasks_problems(tasks: Any) -> list[str]:
    """`tasks` is `module:function` or a non-empty mapping of task names to regexes that compile."""
    if tasks is None:
        return []
    if isinstance(tasks, str):
        module, _, name = tasks.partition(":")
        return [] if module and name else [f"`tasks`: expected `module:function` or a mapping, got {tasks!r}"]
    if not tasks:
        return ["`tasks`: an empty mapping (give {task: regex, ...}, or leave `tasks` out)"]
    problems = []
    for task, pattern in tasks.items():
        if not isinstance(pattern, str):
            problems.append(f"`tasks.{task}`: expected a regex string, got {pattern!r:.80}")
            continue
        try:
            re.compile(pattern)
        except re.error as err:
            problems.append(f"`tasks.{task}`: bad regex {pattern!r:.80}: {err}")
    return problems


def _rlhf_models_problems(models: Any) -> list[str]:
    """A mapping's values are a folder, or a list of distinct folders (the seed runs of one variant)."""
    if not isinstance(models, dict):
        return []
    problems = []
    for name, folders in models.items():
        where = f"`rlhf_models.{name}`"
        if isinstance(folders, str) and folders:
            continue
        if not isinstance(folders, list) or not folders or not all(isinstance(f, str) and f for f in folders):
            problems.append(
                f"{where}: expected a folder, or a list of folders (the seed runs of one variant), got "
                f"{folders!r:.80}"
            )
        elif len(set(folders)) < len(folders):
            problems.append(f"{where}: a folder is listed twice (each seed run once)")
    return problems


EXTRAS = Suite
DEFAULTS: dict[str, Any] = {}
TRL_CONFIGS: tuple[str, ...] = ()  # a suite is hftune's own config


def schema() -> StageSchema:
    return StageSchema(name="eval", classes={"hftune": Suite}, defaults={}, check=_check)


def parse(
    config_path: str | None,
    argv: list[str] | None = None,
    *,
    values: dict[str, Any] | None = None,
    source: str | None = None,
) -> StageConfig:
    """`config_path` is a suite file or the name of a built-in suite (`tiny`, `ultrachat`)."""
    if config_path:
        config_path = eval_suite(config_path)
    cfg = parse_stage_config(schema(), config_path, argv, values=values, source=source)
    suite = cfg.hftune
    if suite.judge is not None:
        from hftune.evaluation.judge import JudgeConfig

        judge = dict(suite.judge)
        pairs = judge.pop("pairs", None)
        JudgeConfig.from_dict(judge, f"{cfg.source}: `judge`")  # refuses unknown and secret keys now
        if pairs is not None and not (
            isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 for p in pairs)
        ):
            raise UserError(f"{cfg.source}: `judge.pairs`: expected a list of [variant, variant] pairs")
    return cfg


SEED_RUN = "@"  # `rlhf@ppo-seed1`: one seed run of the variant `rlhf`


def rlhf_runs(suite: Suite) -> dict[str, list[str]]:
    """Variant name -> its folders: one folder is one run; several are the same recipe trained with
    different seeds, evaluated as one variant (`rlhf_models: {rlhf: [runs/ppo-seed1, runs/ppo-seed2]}`)."""
    models = suite.rlhf_models
    if not models:
        return {}
    if isinstance(models, list):  # a single folder arrives as a one-item list (strict parsing)
        if len(models) == 1:
            return {"rlhf": [models[0]]}
        return {f"rlhf:{Path(m).name}": [m] for m in models}
    taken = set(VARIANT_KINDS) - {"rlhf"}
    clash = taken & set(models)
    if clash:
        raise UserError(f"`rlhf_models`: {', '.join(sorted(clash))} already names another variant")
    return {str(name): [str(p)] if isinstance(p, str) else [str(x) for x in p] for name, p in models.items()}


def seed_runs(suite: Suite) -> dict[str, dict[str, str]]:
    """The variants trained with several seeds: variant -> {run name -> folder}. A run is named
    `VARIANT@FOLDER` (`rlhf@ppo-seed1`), or `VARIANT@runK` when the folder names do not tell the runs apart
    (or would not do as a name)."""
    out = {}
    for variant, folders in rlhf_runs(suite).items():
        if len(folders) < 2:
            continue
        labels = [Path(f).name for f in folders]
        if len(set(labels)) < len(labels) or not all(label and "." not in label for label in labels):
            labels = [f"run{i + 1}" for i in range(len(folders))]  # a LoRA adapter's name may hold no "."
        out[variant] = {f"{variant}{SEED_RUN}{label}": f for label, f in zip(labels, folders, strict=True)}
    return out


def rlhf_variants(suite: Suite) -> dict[str, str]:
    """Name -> folder of every RLHF policy the eval generates with (one name `rlhf` when there is a single
    one). A variant with several seed runs contributes each run under its own name (`seed_runs`); the
    aggregation (`measures.aggregate`) folds them back into the one variant."""
    seeded = seed_runs(suite)
    out: dict[str, str] = {}
    for variant, folders in rlhf_runs(suite).items():
        out.update(seeded.get(variant) or {variant: folders[0]})
    return out
