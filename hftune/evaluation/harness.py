"""`hftune eval`: base vs SFT vs RLHF vs best-of-N (vs the dataset's references), side by side, on the same
held-out prompts with the same decoding, every number with a paired bootstrap CI over prompts.

    hftune eval --config eval/suites/tiny.yaml [--max_prompts 16 ...]

Reads top to bottom: parse the suite, load the one tokenizer every model must share, pick the held-out
prompts, load the models (variants that differ by an adapter share one model), generate greedy replies
(reference metrics, verifier, win rates) and seeded samples (expected reward, KL to SFT, diversity, the
best-of-N pool), score everything through `hftune.scoring` (the reward stage's and PPO's path), compute
per-prompt metrics, aggregate, and write results.json, samples.jsonl, report.md and report.html atomically.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hftune import artifacts, modeling, scoring
from hftune.config import StageConfig
from hftune.errors import UserError
from hftune.evaluation import report, stats, text_metrics
from hftune.evaluation.cache import Cache
from hftune.evaluation.suite import Suite, rlhf_variants
from hftune.evaluation.variants import Decoding, load_variants, logprobs, replies

logger = logging.getLogger(__name__)

METRIC_INFO = {
    "reward": ("greedy", True, "Reward model score of the greedy reply (best-of-N: of its pick)."),
    "expected_reward": ("sampled", True, "Mean reward of the sampled replies (best-of-N: of its pick)."),
    "kl_to_sft": (
        "sampled",
        False,
        "KL(variant || SFT) per prompt: mean over the variant's samples of log p_variant - log p_sft. "
        "best-of-N: the analytic value log n - (n-1)/n.",
    ),
    "length": ("greedy", None, "Reply length in tokens."),
    "eos_rate": ("greedy", True, "Fraction of replies that ended by themselves (not cut at max_new_tokens)."),
    "loop_rate": ("greedy", False, "Fraction of replies that degenerate into a repeating loop."),
    "repeated_ngram_fraction": ("greedy", False, "Fraction of repeated word 4-grams in a reply."),
    "distinct_1": ("sampled", True, "Distinct unigrams / all unigrams over a prompt's samples."),
    "distinct_2": ("sampled", True, "Distinct bigrams / all bigrams over a prompt's samples."),
    "exact_match": ("greedy", True, "Reply equals the reference (whitespace-normalised)."),
    "rouge_l": ("greedy", True, "ROUGE-L F against the reference."),
    "bleu": ("greedy", True, "Sentence BLEU-4 against the reference (smoothed)."),
    "verifier": ("greedy", True, "The suite's task verifier: 1 if the reply solves the task."),
}


@dataclass
class EvalResult:
    output_dir: Path
    results: dict[str, Any]
    samples: list[dict[str, Any]]
    cache: Cache


def parse(config_path: str | None, argv: list[str] | None = None) -> StageConfig:
    from hftune.evaluation import suite

    return suite.parse(config_path, argv)


def schema():
    from hftune.evaluation import suite

    return suite.schema()


# ------------------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------------------


@dataclass
class Prompts:
    messages: list[list[dict[str, str]]]  # each prompt as a conversation up to the reply
    references: list[str | None]
    few_shot: list[tuple[str, str]]  # (question, answer) pairs from the training rows


def _last_user(messages: list[dict[str, str]]) -> str:
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
                few_shot.append((_last_user(prompt), answer))
            if len(few_shot) == suite.few_shot:
                break
    return Prompts([p for p, _ in pairs], [r for _, r in pairs], few_shot)


# ------------------------------------------------------------------------------------------------------
# Models and tokenizer
# ------------------------------------------------------------------------------------------------------


def _base_of(sft_model: str) -> str:
    """The model the SFT model was trained from: the base of its adapter chain, or its manifest's parent."""
    source = modeling.resolve_source(sft_model)
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
    from hftune.rl import check_same_tokenizer

    others = {name: p for name, p in paths.items() if name != "base"}
    if reward_model:
        others["reward_model"] = reward_model
    for path in others.values():
        check_same_tokenizer(tokenizer, modeling.load_tokenizer(path), reference, path)
    if "base" in paths and modeling.load_tokenizer(paths["base"]).get_vocab() != tokenizer.get_vocab():
        raise UserError(f"the base model ({paths['base']}) and {reference} use different vocabularies")


# ------------------------------------------------------------------------------------------------------
# The eval
# ------------------------------------------------------------------------------------------------------


def run(cfg: StageConfig, *, resume: bool = False) -> EvalResult:
    del resume  # every finished generation is cached, so a re-run continues where it stopped anyway
    from trl import ModelConfig

    started = time.time()
    suite: Suite = cfg.hftune
    paths = model_paths(suite)
    reference_path = suite.sft_model or next(iter(paths.values()), None)
    if reference_path is None:
        raise UserError("nothing to evaluate: no model variant in `variants`")
    tokenizer = modeling.load_tokenizer(reference_path, trust_remote_code=suite.trust_remote_code)
    scoring.check_pad_token(tokenizer, reference_path)
    check_tokenizers(tokenizer, paths, suite.reward_model, reference_path)
    prompts = load_prompts(suite)
    if "reference" in suite.variants and not any(prompts.references):
        raise UserError(f"`variants`: `reference` needs reference answers; {suite.data_recipe} has none")
    if "base" in suite.variants and not prompts.few_shot:
        logger.warning("base variant without few-shot examples: a base model may not answer at all")
    n = len(prompts.messages)
    logger.info("eval %s: %d prompts, variants %s", suite.name, n, ", ".join(suite.variants))

    cache = Cache(suite.cache_dir)
    model_args = ModelConfig(dtype="auto")
    models = load_variants(paths, model_args, trust_remote_code=suite.trust_remote_code)
    scorer = scoring.load_scorer(suite.reward_model, model_args) if suite.reward_model else None

    chat_ids = [
        list(
            tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
        for m in prompts.messages
    ]
    prefix = "".join(suite.few_shot_format.format(prompt=q, response=a) for q, a in prompts.few_shot)
    cue = suite.few_shot_format.split("{response}")[0]
    base_ids = [tokenizer(prefix + cue.format(prompt=_last_user(m)))["input_ids"] for m in prompts.messages]

    greedy = Decoding(suite.max_new_tokens)
    sampled = Decoding(suite.max_new_tokens, suite.temperature, suite.num_samples, suite.seed)
    wanted_samples = suite.num_samples
    outputs: dict[str, dict[str, Any]] = {}  # variant -> {"greedy": [...], "samples": [[...]] or None}
    for name, variant in models.items():
        ids = base_ids if name == "base" else chat_ids
        stop = suite.base_stop if name == "base" else []
        if name == "sft" and name not in suite.variants:
            out = {"greedy": None}
        else:
            g = Decoding(greedy.max_new_tokens, stop_strings=stop)
            out = {
                "greedy": [
                    r[0]
                    for r in replies(
                        variant, tokenizer, ids, g, cache, batch_size=suite.batch_size, desc=f"{name} greedy"
                    )
                ]
            }
        k = max(wanted_samples, suite.best_of_n if name == "sft" and "best_of_n" in suite.variants else 0)
        if k:
            s = Decoding(sampled.max_new_tokens, sampled.temperature, k, sampled.seed, stop)
            out["samples"] = replies(
                variant, tokenizer, ids, s, cache, batch_size=suite.batch_size, desc=f"{name} samples"
            )
        else:
            out["samples"] = None
        outputs[name] = out

    # Rewards of every reply, through the shared scoring path (cached by reward model, prompt and reply).
    def rewards(texts: list[str], prompt_index: list[int]) -> np.ndarray:
        if scorer is None:
            return np.full(len(texts), np.nan)
        return np.asarray(
            score_cached(
                scorer,
                suite.reward_model,
                [prompts.messages[i] for i in prompt_index],
                texts,
                cache,
                suite.batch_size,
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
                    model, prompt_ids, reply_ids, tokenizer.pad_token_id, suite.temperature, cache,
                    batch_size=suite.batch_size,
                )  # fmt: skip
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
    results = aggregate(suite, per_prompt, boot, paths, greedy, sampled)
    if suite.judge:
        results["judge"] = run_judge(suite, prompts, shown, boot)
    samples = sample_table(prompts, shown, per_prompt, sample_rows)
    with artifacts.atomic_dir(suite.output_dir) as out:
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
    return EvalResult(Path(suite.output_dir), results, samples, cache)


def score_cached(
    scorer, reward_path: str, prompts, texts: list[str], cache: Cache, batch_size: int
) -> list[float]:
    from hftune.evaluation.cache import fingerprint, key

    fp = getattr(scorer, "_hftune_fp", None) or fingerprint(reward_path)
    scorer._hftune_fp = fp
    keys = [key("reward", fp, p, t) for p, t in zip(prompts, texts, strict=True)]
    found = cache.get_many("rewards", keys)
    missing = [i for i, k in enumerate(keys) if k not in found]
    if missing:
        values = scorer.score(
            [prompts[i] for i in missing], [texts[i] for i in missing], batch_size=batch_size
        )
        new = {keys[i]: float(v) for i, v in zip(missing, values.tolist(), strict=True)}
        cache.put_many(new)
        found.update(new)
    return [found[k] for k in keys]


def reply_metrics(name: str, shown, prompts: Prompts, suite: Suite, rewards) -> dict[str, np.ndarray]:
    """Per-prompt metrics of the reply shown for each prompt (NaN where a prompt has none)."""
    n = len(shown)
    present = [i for i, r in enumerate(shown) if r is not None]
    texts = [shown[i]["text"] for i in present]
    out: dict[str, np.ndarray] = {}

    def spread(values) -> np.ndarray:
        full = np.full(n, np.nan)
        full[present] = np.asarray(values, dtype=np.float64)
        return full

    if "reward" in suite.metrics or "win_rate" in suite.metrics:
        out["reward"] = spread(rewards(texts, present))
    if "length" in suite.metrics:
        out["length"] = spread([len(shown[i]["ids"]) for i in present])
    if "eos_rate" in suite.metrics and name != "reference":
        out["eos_rate"] = spread([float(shown[i]["ended"]) for i in present])
    if "loop_rate" in suite.metrics:
        rep = text_metrics.compute("repetition", predictions=texts)
        out["loop_rate"] = spread(rep["scores"])
        out["repeated_ngram_fraction"] = spread(rep["repeated_ngram_fraction"])
    with_ref = [i for i in present if prompts.references[i] is not None]
    if name != "reference" and with_ref:
        preds = [shown[i]["text"] for i in with_ref]
        refs = [prompts.references[i] for i in with_ref]
        for metric in ("exact_match", "rouge_l", "bleu"):
            if metric in suite.metrics:
                full = np.full(n, np.nan)
                full[with_ref] = text_metrics.compute(metric, predictions=preds, references=refs)["scores"]
                out[metric] = full
    if "verifier" in suite.metrics and suite.verifier:
        verify = load_verifier(suite.verifier)
        out["verifier"] = spread(
            [
                float(verify(_last_user(prompts.messages[i]), shown[i]["text"], prompts.references[i]))
                for i in present
            ]
        )
    return out


def load_verifier(spec: str):
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"`verifier`: cannot import {spec}: {err}") from None


def aggregate(
    suite: Suite, per_prompt, boot: stats.Bootstrap, paths, greedy: Decoding, sampled: Decoding
) -> dict:
    variants: dict[str, Any] = {}
    baseline = suite.baseline if suite.baseline in per_prompt else None
    for v, metrics in per_prompt.items():
        entry = {
            "kind": v if v in ("base", "sft", "best_of_n", "reference") else "rlhf",
            "model": paths.get(v),
        }
        entry["metrics"] = {m: s for m, values in metrics.items() if (s := boot.summary(values)) is not None}
        entry["vs_baseline"] = {}
        if baseline and v != baseline:
            for m, values in metrics.items():
                if m in per_prompt[baseline]:
                    s = boot.summary(values - per_prompt[baseline][m])
                    if s is not None:
                        entry["vs_baseline"][m] = s
        variants[v] = entry
    win_rates = {}
    if "win_rate" in suite.metrics:
        win_rates = stats.win_rate_matrix(
            {v: m["reward"] for v, m in per_prompt.items() if "reward" in m}, boot
        )
    return {
        "suite": {"name": suite.name, "data_recipe": suite.data_recipe, "split": suite.split},
        "n_prompts": int(boot.indices.shape[1]),
        "baseline": baseline,
        "decoding": {
            "greedy": greedy.as_dict(),
            "sampling": sampled.as_dict(),
            "base_stop_strings": suite.base_stop,
        },
        "metric_info": {
            m: {"decoding": d, "higher_is_better": h, "description": t}
            for m, (d, h, t) in METRIC_INFO.items()
            if any(m in metrics for metrics in per_prompt.values())
        },
        "variants": variants,
        "win_rates": win_rates,
        "judge": None,
    }


def run_judge(suite: Suite, prompts: Prompts, shown, boot: stats.Bootstrap) -> dict[str, Any]:
    from hftune.evaluation.judge import JudgeConfig, judge_pairs_with_stats

    raw = dict(suite.judge)
    pairs = raw.pop("pairs", None) or [[v, "sft"] for v in shown if v not in ("sft", "reference", "base")]
    cfg = JudgeConfig.from_dict(raw, "`judge`")
    matrix: dict[str, dict[str, Any]] = {}
    disagreements = 0
    for a, b in pairs:
        if a not in shown or b not in shown:
            raise UserError(f"`judge.pairs`: {a!r} or {b!r} is not an evaluated variant")
        keep = [i for i in range(len(shown[a])) if shown[a][i] is not None and shown[b][i] is not None]
        texts = [_last_user(prompts.messages[i]) for i in keep]
        verdicts, info = judge_pairs_with_stats(
            cfg, texts, [shown[a][i]["text"] for i in keep], [shown[b][i]["text"] for i in keep]
        )
        full = np.full(len(shown[a]), np.nan)
        full[keep] = verdicts
        s = boot.summary(full)
        disagreements += info.get("n_disagreements", 0)
        if s is not None:
            matrix.setdefault(a, {})[b] = s
            matrix.setdefault(b, {})[a] = {
                **s,
                "mean": 1 - s["mean"],
                "ci_low": 1 - s["ci_high"],
                "ci_high": 1 - s["ci_low"],
            }
    return {"model": cfg.model, "win_rates": matrix, "n_disagreements": disagreements}


def sample_table(prompts: Prompts, shown, per_prompt, sample_rows) -> list[dict[str, Any]]:
    rows = []
    for i, messages in enumerate(prompts.messages):
        row = {
            "prompt_index": i,
            "prompt": _last_user(messages),
            "messages": messages,
            "reference": prompts.references[i],
            "variants": {},
        }
        for v, replies_ in shown.items():
            reply = replies_[i]
            if reply is None:
                continue
            metrics = per_prompt[v]
            entry = {
                "response": reply["text"],
                "reward": _num(metrics.get("reward"), i),
                "length": len(reply["ids"]),
                "ended": reply["ended"],
                "verified": _num(metrics.get("verifier"), i),
            }
            if v in sample_rows:
                entry["samples"] = [
                    {
                        "response": x["text"],
                        "reward": x.get("reward"),
                        "length": len(x["ids"]),
                        "ended": x["ended"],
                    }
                    for x in sample_rows[v][i]
                ]
            row["variants"][v] = entry
        rows.append(row)
    return rows


def _num(values, i: int) -> float | None:
    if values is None or np.isnan(values[i]):
        return None
    return float(values[i])


def _jsonl(row: dict) -> str:
    import json

    return json.dumps(row, ensure_ascii=False) + "\n"


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=True, allow_unicode=True)


def summary(result: EvalResult) -> str:
    return (
        f"{report.summary_table(result.results)}\n\n"
        f"report: {result.output_dir / 'report.html'}\nresults: {result.output_dir / 'results.json'}"
    )
