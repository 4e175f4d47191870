"""`hftune eval`: base vs SFT vs RLHF vs best-of-N (vs the dataset's references), side by side, on the same
held-out prompts with the same decoding, every number with a paired bootstrap CI over prompts.

    hftune eval --config eval/suites/tiny.yaml [--max_prompts 16 ...]

Reads top to bottom: parse the suite, load the one tokenizer every model must share, pick the held-out
prompts, load the models (variants that differ by an adapter share one model), generate greedy replies
(reference metrics, verifier, win rates) and seeded samples (expected reward, KL to SFT, diversity, the
best-of-N pool), score everything through `hftune.models.scoring` (the reward stage's and PPO's path), compute
per-prompt metrics, aggregate, and write results.json, samples.jsonl, report.md and report.html atomically.
"""

from __future__ import annotations

import logging
import math
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hftune import artifacts, distributed
from hftune.config import StageConfig
from hftune.errors import UserError
from hftune.evaluation import contamination, curves, report, reward_exposure, stats, text_metrics, verdict
from hftune.evaluation.config_diff import config_diff
from hftune.evaluation.measures import (
    aggregate,
    check_verifier,
    reply_metrics,
    run_judge,
    sample_table,
)
from hftune.evaluation.prompts import last_user, load_prompts
from hftune.evaluation.suite import Suite, auto_batch_size, rlhf_runs, rlhf_variants
from hftune.models import loading, scoring
from hftune.models.cache import Cache, fingerprint
from hftune.models.generation import Decoding, logprobs, replies
from hftune.models.loading import load_variants
from hftune.models.scoring import score_cached
from hftune.models.tokenizer import check_same_tokenizer, encode_prompt, load_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    output_dir: Path
    results: dict[str, Any]
    samples: list[dict[str, Any]]
    cache: Cache


def parse(
    config_path: str | None,
    argv: list[str] | None = None,
    *,
    values: dict[str, Any] | None = None,
    source: str | None = None,
) -> StageConfig:
    from hftune.evaluation import suite

    return suite.parse(config_path, argv, values=values, source=source)


def schema():
    from hftune.evaluation import suite

    return suite.schema()


# ------------------------------------------------------------------------------------------------------
# Models and tokenizer
# ------------------------------------------------------------------------------------------------------


def _base_of(sft_model: str) -> str:
    """The model the SFT model was trained from: the base of its adapter chain, or its manifest's parent."""
    source = loading.resolve_source(sft_model)
    if source.adapters:
        return source.base
    manifest = artifacts.read_manifest(sft_model) or {}
    for parent in manifest.get("parents", []):
        if parent.get("role") in ("base_model", "model"):
            return parent["name_or_path"]
    raise UserError(f"`base_model`: cannot tell which base {sft_model} was trained from; set `base_model`")


def model_paths(suite: Suite) -> dict[str, str]:
    paths: dict[str, str] = {}
    if "base" in suite.variants:
        paths["base"] = suite.base_model or _base_of(suite.sft_model)
    if suite.sft_model and ({"sft", "best_of_n"} & set(suite.variants) or "kl_to_sft" in suite.metrics):
        paths["sft"] = suite.sft_model
    if "rlhf" in suite.variants:
        paths.update(rlhf_variants(suite))
    return paths


def check_tokenizers(tokenizer, paths: dict[str, str], reward_model: str | None, reference: str) -> None:
    """Invariant: one tokenizer and chat template across SFT, RLHF, the reward model and eval."""
    others = {name: p for name, p in paths.items() if name != "base" and p != reference}
    if reward_model:
        others["reward_model"] = reward_model
    fix = "evaluate models trained in one lineage (SFT -> reward model -> RL)"
    for path in others.values():
        check_same_tokenizer(tokenizer, load_tokenizer(path), reference, path, fix=fix)
    if "base" in paths:
        # A base model may lack the template SFT added: its vocabulary must still be the same.
        base = load_tokenizer(paths["base"])
        check_same_tokenizer(
            tokenizer, base, reference, f"the base model ({paths['base']})", fix=fix, rendering=False
        )


def _default_batch_size(models: dict[str, Any], scorer) -> int:
    """`batch_size: null`, from the largest model the eval runs (variants sharing a model count once)."""
    loaded = {id(v.model): v.model for v in models.values()}
    if scorer is not None:
        loaded[id(scorer.model)] = scorer.model
    parameters = max((sum(p.numel() for p in m.parameters()) for m in loaded.values()), default=0)
    size = auto_batch_size(parameters)
    logger.info("batch size %d (largest model: %.1fM parameters)", size, parameters / 1e6)
    return size


# ------------------------------------------------------------------------------------------------------
# The eval
# ------------------------------------------------------------------------------------------------------


def run(cfg: StageConfig, *, resume: bool = False) -> EvalResult | None:
    del resume  # every finished generation is cached, so a re-run continues where it stopped anyway
    from trl import ModelConfig

    if distributed.is_distributed():
        # Under a launcher the main process evaluates (its generation is batched, not sharded, and its
        # outputs are written once); the others have nothing to do.
        if not distributed.is_main_process():
            return None
        logger.warning(
            "eval runs in one process: the other %d launched ones exit", distributed.world_size() - 1
        )

    started = time.time()
    suite: Suite = cfg.hftune
    paths = model_paths(suite)
    # Before any generation: finishing must not replace a folder of the user's or one of the models read.
    artifacts.check_output(
        suite.output_dir,
        overwrite=cfg.overwrite,
        inputs=[cfg.source if cfg.source != "command line" else None, *paths.values(), suite.reward_model],
    )
    reference_path = suite.sft_model or next(iter(paths.values()), None)
    if reference_path is None:
        raise UserError("nothing to evaluate: no model variant in `variants`")
    tokenizer = load_tokenizer(reference_path, trust_remote_code=suite.trust_remote_code)
    scoring.check_pad_token(tokenizer, reference_path)
    check_tokenizers(tokenizer, paths, suite.reward_model, reference_path)
    prompts = load_prompts(suite)
    if "verifier" in suite.metrics and suite.verifier:
        check_verifier(suite.verifier, prompts)
    if "reference" in suite.variants and not any(prompts.references):
        raise UserError(f"`variants`: `reference` needs reference answers; {suite.data_recipe} has none")
    if "base" in suite.variants and not prompts.few_shot:
        logger.warning("base variant without few-shot examples: a base model may not answer at all")
    n = len(prompts.messages)
    # Before any generation: no number may come from prompts a stage behind these models trained on.
    audited = contamination.audit(
        prompts.keys, {**paths, "reward_model": suite.reward_model}, duplicates=prompts.duplicates
    )
    contamination.refuse_if_contaminated(audited, suite.allow_contamination, cfg.source)
    logger.info(contamination.summary_line(audited))
    logger.info("eval %s: %d prompts, variants %s", suite.name, n, ", ".join(suite.variants))

    cache = Cache(suite.cache_dir)
    model_args = ModelConfig(dtype="auto")
    models = load_variants(paths, model_args, trust_remote_code=suite.trust_remote_code)
    scorer = scoring.load_scorer(suite.reward_model, model_args) if suite.reward_model else None
    scorer_fingerprint = fingerprint(suite.reward_model) if suite.reward_model else ""
    batch_size = suite.batch_size or _default_batch_size(models, scorer)

    chat_ids = [encode_prompt(tokenizer, m) for m in prompts.messages]
    prefix = "".join(suite.few_shot_format.format(prompt=q, response=a) for q, a in prompts.few_shot)
    cue = suite.few_shot_format.split("{response}")[0]
    base_ids = [tokenizer(prefix + cue.format(prompt=last_user(m)))["input_ids"] for m in prompts.messages]

    greedy = Decoding(suite.max_new_tokens)
    sampled = Decoding(suite.max_new_tokens, suite.temperature, suite.num_samples, suite.seed)
    outputs: dict[
        str, dict[str, Any]
    ] = {}  # variant -> {"greedy": [...] or None, "samples": [[...]] or None}
    for name, variant in models.items():
        # The base model reads a few-shot document and stops at the suite's stop strings.
        ids, stop = (base_ids, suite.base_stop) if name == "base" else (chat_ids, [])
        out: dict[str, Any] = {"greedy": None, "samples": None}
        if name in suite.variants or name in rlhf_variants(suite):  # sft may be loaded only as KL reference
            g = replace(greedy, stop_strings=stop)
            got = replies(variant, tokenizer, ids, g, cache, batch_size=batch_size, desc=f"{name} greedy")
            out["greedy"] = [r[0] for r in got]
        # SFT's samples are also the best-of-N pool.
        pool = suite.best_of_n if name == "sft" and "best_of_n" in suite.variants else 0
        if k := max(suite.num_samples, pool):
            s = replace(sampled, num_samples=k, stop_strings=stop)
            out["samples"] = replies(
                variant, tokenizer, ids, s, cache, batch_size=batch_size, desc=f"{name} samples"
            )
        outputs[name] = out

    # Rewards of every reply, through the shared scoring path (cached by reward model, prompt and reply).
    def rewards(texts: list[str], prompt_index: list[int]) -> np.ndarray:
        if scorer is None:
            return np.full(len(texts), np.nan)
        return np.asarray(
            score_cached(
                scorer,
                scorer_fingerprint,
                [prompts.messages[i] for i in prompt_index],
                texts,
                cache,
                batch_size,
            )
        )

    per_prompt: dict[str, dict[str, np.ndarray]] = {}
    shown: dict[str, list[dict[str, Any]]] = {}  # variant -> the reply shown per prompt
    sample_rows: dict[str, list[list[dict[str, Any]]]] = {}
    for name in suite.variants:
        names = list(rlhf_variants(suite)) if name == "rlhf" else [name]
        for v in names:
            if v == "reference":
                shown[v] = [
                    {"text": r, "ids": tokenizer(r, add_special_tokens=False)["input_ids"], "ended": True}
                    if r is not None
                    else None
                    for r in prompts.references
                ]
            elif v == "best_of_n":
                pool = [s[: suite.best_of_n] for s in outputs["sft"]["samples"]]
                flat = [r for s in pool for r in s]
                scores = rewards([r["text"] for r in flat], [i for i, s in enumerate(pool) for _ in s])
                picks, at = [], 0
                for s in pool:
                    best = int(np.argmax(scores[at : at + len(s)]))  # first best on ties
                    picks.append(s[best])
                    at += len(s)
                shown[v] = picks
            else:
                shown[v] = outputs[v]["greedy"]
                if outputs[v]["samples"] is not None:
                    sample_rows[v] = [s[: suite.num_samples] for s in outputs[v]["samples"]]
            per_prompt[v] = reply_metrics(v, shown[v], prompts, suite, rewards)

    # Sampled metrics: expected reward, diversity, KL to SFT.
    for v, rows in sample_rows.items():
        if not suite.num_samples:
            continue
        flat = [r for s in rows for r in s]
        index = [i for i, s in enumerate(rows) for _ in s]
        if "expected_reward" in suite.metrics and scorer is not None:
            r = rewards([x["text"] for x in flat], index).reshape(n, -1)
            per_prompt[v]["expected_reward"] = r.mean(axis=1)
            for i, s in enumerate(rows):
                for x, value in zip(s, r[i], strict=True):
                    x["reward"] = float(value)
        if "distinct" in suite.metrics:
            for k in (1, 2):
                texts = [[x["text"] for x in s] for s in rows]
                per_prompt[v][f"distinct_{k}"] = np.asarray(
                    text_metrics.compute("distinct_n", predictions=texts, n=k)["scores"]
                )
        if "kl_to_sft" in suite.metrics and "sft" in models and v != "base":
            prompt_ids = [chat_ids[i] for i in index]
            reply_ids = [x["ids"] for x in flat]

            def logp(model, prompt_ids=prompt_ids, reply_ids=reply_ids) -> np.ndarray:
                values = logprobs(
                    model, prompt_ids, reply_ids, suite.temperature, cache, batch_size=batch_size
                )
                return np.asarray(values)

            per_prompt[v]["kl_to_sft"] = (logp(models[v]) - logp(models["sft"])).reshape(n, -1).mean(axis=1)
    if "best_of_n" in per_prompt:
        bon = per_prompt["best_of_n"]
        if "expected_reward" in suite.metrics and "reward" in bon:
            bon["expected_reward"] = bon["reward"]  # its pick is one draw from the best-of-N policy
        if "kl_to_sft" in suite.metrics:
            m = suite.best_of_n
            bon["kl_to_sft"] = np.full(n, math.log(m) - (m - 1) / m)

    boot = stats.Bootstrap(n, suite.bootstrap_samples, suite.confidence, seed=suite.seed)
    results = aggregate(suite, per_prompt, boot, paths, greedy, sampled, tasks=prompts.tasks)
    results["contamination"] = audited
    results["duplicates"] = prompts.duplicates  # n_rows, n_distinct, n_dropped, repeated
    results["training"] = curves.training(suite)  # each trained variant's curves, per seed run
    # What differs between the variants' training configs (read now: the folders may be gone at a re-render).
    results["config_diff"] = config_diff({name: v.get("model") for name, v in results["variants"].items()})
    results["held_out_by"] = prompts.held_out_by or f"the suite's rule (eval_fraction {suite.eval_fraction})"
    if audited["contaminated_prompts"] and audited["clean_prompts"] >= 2:
        # Allowed contamination: the same metrics on the prompts no stage trained on, beside the full ones.
        clean = [i for i in range(n) if i not in set(audited["contaminated_prompts"])]
        subset = {v: {k: np.asarray(a)[clean] for k, a in m.items()} for v, m in per_prompt.items()}
        clean_boot = stats.Bootstrap(len(clean), suite.bootstrap_samples, suite.confidence, seed=suite.seed)
        results["clean_subset"] = {
            "n_prompts": len(clean),
            "variants": aggregate(suite, subset, clean_boot, paths, greedy, sampled)["variants"],
        }
    if suite.reward_model:
        # A policy that never trained against this reward model (DPO, ...) is scored by an outside judge, one
        # trained against it (PPO) by the model it optimised: the reports mark the difference (lineage-read).
        for variants in (results["variants"], (results.get("clean_subset") or {}).get("variants") or {}):
            reward_exposure.annotate(variants, rlhf_runs(suite), suite.reward_model)
    if suite.judge:
        results["judge"] = run_judge(suite, prompts, shown, boot)
    results["verdicts"] = verdict.verdicts(results)  # after the reward-model caveats, which its lines mark
    samples = sample_table(prompts, shown, per_prompt, sample_rows)
    with artifacts.atomic_dir(suite.output_dir, overwrite=cfg.overwrite) as out:
        artifacts.write_json(out / "results.json", results)
        (out / "samples.jsonl").write_text("".join(_jsonl(row) for row in samples))
        report.write_reports(out, results, samples)
        (out / "config.hftune.yaml").write_text(_yaml(cfg.resolved()))
        artifacts.write_manifest(
            out,
            stage="eval",
            config_hash=cfg.config_hash(ignore=("output_dir", "cache_dir")),
            parents=[artifacts.parent_ref(p, name) for name, p in paths.items()]
            + ([artifacts.parent_ref(suite.reward_model, "reward_model")] if suite.reward_model else []),
            data={"recipe": suite.data_recipe, "split": suite.split, "n_prompts": n},
            metrics={
                v: {k: s["mean"] for k, s in r["metrics"].items()} for v, r in results["variants"].items()
            },
            seed=suite.seed,
            started=started,
        )
    logger.info(
        "cache: %s",
        ", ".join(
            f"{k} {cache.hits.get(k, 0)} hit / {cache.misses.get(k, 0)} new" for k in sorted(cache.misses)
        ),
    )
    cache.close()
    return EvalResult(Path(suite.output_dir), results, samples, cache)


def _jsonl(row: dict) -> str:
    import json

    return json.dumps(row, ensure_ascii=False) + "\n"


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=True, allow_unicode=True)


def verdict_lines(results: dict[str, Any]) -> list[str]:
    """One line per claim (sft vs base, each RL variant vs sft, best-of-N vs sft, DPO vs RL): its verdict,
    then each metric checked with its paired difference and, for a seeded variant, the per-seed differences,
    the interval across seeds and whether the claim survives the seeds (`verdict.py`; the reports show the
    same lines)."""
    return verdict.lines(results)


def summary(result: EvalResult) -> str:
    audited = result.results.get("contamination")
    return (
        f"{report.summary_table(result.results)}\n\n"
        + (
            textwrap.fill(contamination.summary_line(audited), report.WIDTH, subsequent_indent="    ") + "\n"
            if audited
            else ""
        )
        + f"held-out prompts: {result.results.get('held_out_by')}\n"
        + "".join(
            f"{line}\n"
            for entry in verdict.entries(result.results)
            for line in verdict.wrapped(entry, report.WIDTH)
        )
        + f"report: {result.output_dir / 'report.html'}\nresults: {result.output_dir / 'results.json'}"
    )
