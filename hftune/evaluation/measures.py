"""Per-prompt measurements of an eval and their aggregation: rewards through the shared scoring path
(cached), the metrics of each variant's shown replies, means with paired bootstrap CIs, paired
differences against the baseline, win-rate matrices (reward model and optional LLM judge), and the rows
of samples.jsonl. `harness.run` calls these in order."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from hftune.config import named_function
from hftune.errors import UserError
from hftune.evaluation import rankings, seeds, stats, text_metrics, verdict
from hftune.evaluation.prompts import UNTAGGED, Prompts, last_user
from hftune.evaluation.report.results import HEADLINE
from hftune.evaluation.suite import Suite, seed_runs
from hftune.models.generation import Decoding

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
        failed: list[tuple[int, str]] = []
        out["verifier"] = spread([_verify(verify, prompts, i, shown[i]["text"], failed) for i in present])
        if failed:
            # One reply the verifier cannot handle must not cost the whole eval (all generation is done):
            # it counts as unverified (NaN, left out of the mean) and the user is told which.
            i, error = failed[0]
            logger.warning(
                "%s: the verifier %s failed on %d of %d replies (left out of its mean); first: prompt %d: %s",
                name, suite.verifier, len(failed), len(present), i, error,
            )  # fmt: skip
    return out


def _verify(verify, prompts: Prompts, i: int, text: str, failed: list[tuple[int, str]]) -> float:
    try:
        value = float(verify(last_user(prompts.messages[i]), text, prompts.references[i]))
    except Exception as err:  # the user's code: any exception is its failure on this reply
        failed.append((i, f"{type(err).__name__}: {err}"[:200]))
        return float("nan")
    if not math.isfinite(value):
        failed.append((i, f"returned {value}"))
        return float("nan")
    return value


def load_verifier(spec: str):
    return named_function("verifier", spec)


def check_verifier(spec: str, prompts: Prompts) -> None:
    """Before any generation: the verifier imports, and scores the first reference answer (if there is
    one) as a number; a broken verifier would otherwise fail only after every model had generated."""
    verify = load_verifier(spec)
    i = next((i for i, ref in enumerate(prompts.references) if ref is not None), None)
    if i is None:
        return
    failed: list[tuple[int, str]] = []
    _verify(verify, prompts, i, prompts.references[i], failed)
    if failed:
        raise UserError(
            f"`verifier`: {spec} fails on prompt {i} with its own reference answer as the reply "
            f"({failed[0][1]}); fix it before the eval generates anything"
        )


def aggregate(
    suite: Suite,
    per_prompt,
    boot: stats.Bootstrap,
    paths,
    greedy: Decoding,
    sampled: Decoding,
    tasks: list[str] | None = None,
) -> dict:
    """results.json from per-prompt metrics: per variant each metric's mean and bootstrap CI over prompts,
    paired differences against the baseline, the win-rate matrix, and with `tasks` (each prompt's task) the
    per-task subtotals. `per_prompt` may hold the seed runs of a variant under their own names
    (`suite.seed_runs`): they are folded into the one variant here, with a CI across seeds beside each
    prompt-level one (`evaluation/seeds.py`)."""
    groups = {
        variant: [r for r in runs if r in per_prompt]
        for variant, runs in seed_runs(suite).items()
        if any(r in per_prompt for r in runs)
    }
    per_prompt, stacks = seeds.fold(per_prompt, groups)
    variants: dict[str, Any] = {}
    baseline = suite.baseline if suite.baseline in per_prompt else None
    for v, metrics in per_prompt.items():
        entry = {
            "kind": v if v in ("base", "sft", "best_of_n", "reference") else "rlhf",
            "model": [paths.get(r) for r in groups[v]] if v in groups else paths.get(v),
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
        win_rates = stats.win_rate_matrix({v: s["reward"] for v, s in stacks.items() if "reward" in s}, boot)
    seeds.annotate(variants, win_rates, stacks, groups, baseline, suite.confidence, paths)
    # The paired differences the verdicts need beyond `vs_baseline` (sft vs base, dpo vs rlhf, ...).
    pairs: dict[str, dict[str, dict]] = {}
    for v, parent in verdict.claims(variants):
        if baseline in (parent, v):  # read from `vs_baseline` (`verdict.differences`)
            continue
        for m in verdict.CHECKED:
            if m in per_prompt[v] and m in per_prompt[parent]:
                s = boot.summary(per_prompt[v][m] - per_prompt[parent][m])
                if s is None:
                    continue
                seed_level = seeds.difference_block(stacks[v][m], stacks[parent][m], suite.confidence)
                if seed_level is not None:
                    s["seeds"] = seed_level
                    s["survives_seeds"] = seeds.survives(s, seed_level, 0.0)
                pairs.setdefault(v, {}).setdefault(parent, {})[m] = s
    results = {
        "suite": {
            "name": suite.name,
            "data_recipe": suite.data_recipe,
            "split": suite.split,
            "confidence": suite.confidence,
        },
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
    if pairs:
        results["pairs"] = pairs
    if tasks is not None:
        results["tasks"] = task_subtotals(suite, per_prompt, tasks, baseline, stacks)
    rankings.add(results, stacks, boot)  # length-controlled win rates and the ranking, from the same wins
    if any(len(members) > 1 for members in groups.values()):
        results["seed_info"] = {
            "confidence": suite.confidence,
            "interval": seeds.INTERVAL,
            "claim": seeds.CLAIM_RULE,
        }
    return results


def task_subtotals(
    suite: Suite,
    per_prompt: dict[str, dict[str, np.ndarray]],
    tasks: list[str],
    baseline: str | None,
    stacks: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """results.json `tasks`: per task (in order of first appearance, `other` last) its number of prompts
    and, for each variant, the headline metrics (report.results.HEADLINE) as mean and CI over that task's
    prompts alone, with the paired differences against the baseline. `per_prompt` is folded: a seeded
    variant's value per prompt is the mean over its runs, as in every other table. Each task's intervals
    come from resamples of its own prompts (the eval's seed and count), so a task with few prompts gets the
    wide interval it deserves. With `stacks` (each variant's (runs, prompts) values), a difference where a
    side was trained with several seeds also gets its interval across seeds over the task's prompts and
    `survives_seeds`, as the whole-suite differences do, so its mark follows the same rule."""
    labels = np.asarray(tasks)
    names = sorted(dict.fromkeys(tasks), key=lambda t: t == UNTAGGED)  # stable: first appearance otherwise
    out: dict[str, Any] = {}
    for task in names:
        chosen = np.flatnonzero(labels == task)
        boot = stats.Bootstrap(len(chosen), suite.bootstrap_samples, suite.confidence, seed=suite.seed)
        subset = {
            v: {m: np.asarray(values)[chosen] for m, values in metrics.items() if m in HEADLINE}
            for v, metrics in per_prompt.items()
        }
        entry: dict[str, Any] = {"n": len(chosen), "variants": {}, "vs_baseline": {}}
        for v, metrics in subset.items():
            entry["variants"][v] = {m: s for m, values in metrics.items() if (s := boot.summary(values))}
            if baseline and v != baseline:
                entry["vs_baseline"][v] = {
                    m: s
                    for m, values in metrics.items()
                    if m in subset[baseline] and (s := boot.summary(values - subset[baseline][m]))
                }
                for m, summary in entry["vs_baseline"][v].items():
                    pair = [((stacks or {}).get(name) or {}).get(m) for name in (v, baseline)]
                    if all(x is not None for x in pair):
                        seed_level = seeds.difference_block(
                            *(stats.runs(x)[:, chosen] for x in pair), suite.confidence
                        )
                        if seed_level is not None:
                            summary["seeds"] = seed_level
                            summary["survives_seeds"] = seeds.survives(summary, seed_level, 0.0)
        out[task] = entry
    return out


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
        texts = [last_user(prompts.messages[i]) for i in keep]
        verdicts, info = judge_pairs_with_stats(
            cfg, texts, [shown[a][i]["text"] for i in keep], [shown[b][i]["text"] for i in keep]
        )
        full = np.full(len(shown[a]), np.nan)
        full[keep] = verdicts
        s = boot.summary(full)
        disagreements += info.get("n_disagreements", 0)
        if s is not None:
            matrix.setdefault(a, {})[b] = s
            matrix.setdefault(b, {})[a] = stats.mirrored(s)
    return {"model": cfg.model, "win_rates": matrix, "n_disagreements": disagreements}


def sample_table(prompts: Prompts, shown, per_prompt, sample_rows) -> list[dict[str, Any]]:
    rows = []
    for i, messages in enumerate(prompts.messages):
        row = {
            "prompt_index": i,
            "prompt": last_user(messages),
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
