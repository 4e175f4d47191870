"""`hftune eval` on the tiny chain (full-FT SFT -> LoRA reward model -> a short PPO run): the four outputs,
CIs for every variant and metric, win-rate matrix identities, best-of-N against plain sampling, reward
parity with the reward stage's scoring, variants that share one model really differ, and the cache."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from hftune.errors import UserError
from hftune.evaluation import harness, stats
from hftune.models import generation, loading, scoring
from hftune.models.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parent.parent
SUITE = str(REPO / "eval/suites/tiny.yaml")


@pytest.fixture(scope="module")
def ppo_policy(ppo_run) -> str:
    """The shared short PPO run's policy (tests/conftest.py)."""
    return str(ppo_run.output_dir)


def suite_args(chain, ppo_policy, out: Path, *extra: str) -> list[str]:
    return [
        *("--sft_model", chain["sft"], "--rlhf_models", ppo_policy, "--reward_model", chain["rm"]),
        *("--output_dir", str(out), "--cache_dir", str(out.parent / "cache"), "--max_prompts", "12"),
        *("--bootstrap_samples", "500", "--max_new_tokens", "16"),
        *extra,
    ]


@pytest.fixture(scope="module")
def evaluated(chain, ppo_policy, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "eval"
    return harness.run(harness.parse(SUITE, suite_args(chain, ppo_policy, out)))


def test_eval_writes_every_output_with_cis_for_every_variant_and_metric(evaluated):
    out = evaluated.output_dir
    for name in ("results.json", "samples.jsonl", "report.md", "report.html", "manifest.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    expected = {
        "base": {"reward", "length", "eos_rate", "loop_rate", "exact_match", "rouge_l", "bleu", "verifier"},
        "sft": {"reward", "expected_reward", "kl_to_sft", "distinct_1", "distinct_2", "verifier", "bleu"},
        "rlhf": {"reward", "expected_reward", "kl_to_sft", "distinct_1", "distinct_2", "verifier", "rouge_l"},
        "best_of_n": {"reward", "expected_reward", "kl_to_sft", "verifier"},
        "reference": {"reward", "length", "verifier"},
    }
    assert set(results["variants"]) == set(expected)
    for variant, metrics in expected.items():
        got = results["variants"][variant]["metrics"]
        assert metrics <= set(got), (variant, metrics - set(got))
        for stat in got.values():
            assert {"mean", "ci_low", "ci_high", "n"} <= set(stat)
            assert stat["ci_low"] <= stat["mean"] + 1e-9 <= stat["ci_high"] + 2e-9
            assert stat["n"] == 12
    # The references solve their own tasks: the verifier is a real check, not a constant.
    assert results["variants"]["reference"]["metrics"]["verifier"]["mean"] == 1.0
    assert results["variants"]["sft"]["metrics"]["kl_to_sft"]["mean"] == 0.0
    assert results["decoding"]["greedy"]["do_sample"] is False
    assert results["decoding"]["sampling"]["temperature"] == 1.0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and set(rows[0]["variants"]) == set(expected)
    assert len(rows[0]["variants"]["rlhf"]["samples"]) == 4


def test_win_rate_matrix_identities(evaluated):
    w = evaluated.results["win_rates"]
    names = list(w)
    assert set(names) == set(evaluated.results["variants"])
    for a in names:
        assert w[a][a]["mean"] == 0.5
        for b in names:
            assert w[a][b]["mean"] + w[b][a]["mean"] == pytest.approx(1.0)
            assert w[a][b]["ci_low"] + w[b][a]["ci_high"] == pytest.approx(1.0)


def test_win_rates_count_ties_half():
    boot = stats.Bootstrap(4, 100, 0.95)
    m = stats.win_rate_matrix(
        {"a": np.array([1.0, 2.0, 3.0, 0.0]), "b": np.array([0.0, 2.0, 4.0, -1.0])}, boot
    )
    assert m["a"]["b"]["mean"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_harness_rewards_equal_the_reward_stage_scoring(evaluated, chain):
    scorer = scoring.load_scorer(chain["rm"])
    rows = evaluated.samples
    for variant in ("sft", "rlhf", "reference"):
        prompts = [r["messages"] for r in rows]
        replies = [r["variants"][variant]["response"] for r in rows]
        expected = scorer.score(prompts, replies).tolist()
        got = [r["variants"][variant]["reward"] for r in rows]
        assert got == pytest.approx(expected, abs=1e-5), variant


def test_best_of_n_with_one_sample_is_plain_sft_sampling(chain, ppo_policy, evaluated, tmp_path):
    out = tmp_path / "bon1"
    args = suite_args(chain, ppo_policy, out, "--best_of_n", "1", "--variants", "[sft, best_of_n]")
    args[args.index("--cache_dir") + 1] = str(tmp_path / "fresh-cache")  # really sample again
    result = harness.run(harness.parse(SUITE, args))
    for row, before in zip(result.samples, evaluated.samples, strict=True):
        first_sample = before["variants"]["sft"]["samples"][0]
        assert row["variants"]["best_of_n"]["response"] == first_sample["response"]
        assert row["variants"]["sft"]["samples"][0]["response"] == first_sample["response"]
    # With n = num_samples the pick is the best of the very samples SFT's expected reward averages.
    bon = np.array([r["variants"]["best_of_n"]["reward"] for r in evaluated.samples])
    sft_mean = np.array(
        [np.mean([s["reward"] for s in r["variants"]["sft"]["samples"]]) for r in evaluated.samples]
    )
    assert (bon >= sft_mean - 1e-6).all()
    m = evaluated.results["variants"]
    assert (
        m["best_of_n"]["metrics"]["expected_reward"]["mean"] >= m["sft"]["metrics"]["expected_reward"]["mean"]
    )


def test_variants_share_one_model_and_really_differ(chain, ppo_policy):
    from trl import ModelConfig

    loaded = loading.load_variants({"sft": chain["sft"], "rlhf": ppo_policy}, ModelConfig(dtype="auto"))
    assert loaded["sft"].model is loaded["rlhf"].model, "the PPO adapter must sit on the SFT weights"
    tok = load_tokenizer(chain["sft"])
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    ids = torch.tensor(
        [tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]]
    )
    with torch.no_grad():
        with loaded["sft"].active() as m:
            sft_logits = m(input_ids=ids).logits
        with loaded["rlhf"].active() as m:
            rlhf_logits = m(input_ids=ids).logits
        separate = loading.load_model(chain["sft"], ModelConfig(dtype="auto"), for_training=False).eval()
        alone = separate(input_ids=ids).logits
    assert (sft_logits - alone).abs().max() < 1e-5, "adapter off must be exactly the SFT model"
    assert (sft_logits - rlhf_logits).abs().max() > 1e-3, "the PPO adapter must change the policy"


def test_batched_seeded_sampling_gives_each_prompt_the_replies_it_gets_alone(chain):
    from trl import ModelConfig

    from hftune.models.tokenizer import encode_prompt

    tok = load_tokenizer(chain["sft"])
    model = loading.load_model(chain["sft"], ModelConfig(dtype="auto"), for_training=False).eval()
    questions = ["What is 2 + 2?", "Reverse the word 'cotton'.", "What is 7 * 8?", "Sort 3, 1, 2.", "Hi"]
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in questions]
    assert len({len(p) for p in prompts}) > 1  # prompts of several lengths, some sharing one
    seeds = [generation.prompt_seed(0, p) for p in prompts]
    alone = [
        [
            r.ids
            for r in generation.generate(model, tok, [p], 16, temperature=1.0, seed=s, num_return_sequences=3)
        ]
        for p, s in zip(prompts, seeds, strict=True)
    ]
    batched = generation.sample_seeded(
        model, tok, prompts, 16, temperature=1.0, seeds=seeds, num_return_sequences=3, batch_size=12
    )
    assert [[r.ids for r in reps] for reps in batched] == alone
    assert len({tuple(r[0]) for r in alone}) > 1  # really sampled: the prompts' replies differ


def test_adding_a_variant_reuses_cached_generations(chain, ppo_policy, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    first = harness.parse(SUITE, suite_args(chain, ppo_policy, out, "--variants", "[sft, rlhf]"))
    harness.run(first)
    calls = []
    real = generation.greedy_by_length

    def counting(model, tokenizer, encoded, *args, **kwargs):
        calls.append((kwargs.get("temperature"), len(encoded)))
        return real(model, tokenizer, encoded, *args, **kwargs)

    real_sampled = generation.sample_seeded

    def counting_sampled(model, tokenizer, encoded, *args, **kwargs):
        calls.append((kwargs.get("temperature"), len(encoded)))
        return real_sampled(model, tokenizer, encoded, *args, **kwargs)

    monkeypatch.setattr(generation, "greedy_by_length", counting)
    monkeypatch.setattr(generation, "sample_seeded", counting_sampled)
    second = harness.run(
        harness.parse(SUITE, suite_args(chain, ppo_policy, out, "--variants", "[base, sft, rlhf]"))
    )
    # Only the new base variant generated: its greedy replies, then its samples, each in one batched call.
    n = len(second.samples)
    assert n >= 4
    assert calls == [(None, n), (1.0, n)]
    unique = len({row["prompt"] for row in second.samples})  # a repeated prompt's replies are cached once
    assert second.cache.misses["replies"] == 2 * unique and second.cache.hits["replies"] >= 4 * unique


def test_suite_errors_name_every_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data_recipe: tiny_alpaca\nvariants: [sft, rlfh]\nmetrix: [reward]\nnum_samples: many\n")
    with pytest.raises(UserError) as err:
        harness.parse(str(bad))
    text = str(err.value)
    assert str(bad) in text
    assert "rlfh" in text and "metrix" in text and "did you mean `metrics`" in text and "num_samples" in text
    assert "sft_model" in text  # the sft variant needs one


def test_a_suite_that_leaves_the_few_shot_format_unset_takes_its_default(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "data_recipe: tiny_alpaca\nsft_model: some/sft\nvariants: [base, sft]\nmetrics: [length]\n"
    )
    cfg = harness.parse(str(suite))
    assert cfg.sections["hftune"].few_shot_format == "Q: {prompt}\nA: {response}\n"


def test_report_of_a_real_eval_opens_in_chromium(evaluated, tmp_path):
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no Chromium installed")
    page = (evaluated.output_dir / "report.html").resolve()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path}",
    ]
    dom = subprocess.run(
        [browser, *flags, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert 'data-plots-ok="true"' in dom.stdout
    assert "Uncaught" not in dom.stderr
