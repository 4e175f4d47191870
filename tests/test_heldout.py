"""Held out means held out: the split is a property of each prompt, artifacts record what they trained on
and held out, later stages never train on what an earlier one held out, and the eval audits every
evaluated prompt against every stage behind every model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from bad_input import REPO, refused, run_cli

from hftune.data import prepare_dataset
from hftune.data.prompt_keys import is_held_out, normalise, prompt_key, read_prompts

SFT = str(REPO / "configs/tiny/sft.yaml")
EVAL = str(REPO / "eval/suites/tiny.yaml")
SHORT = 40  # tokens: drops rows of tiny_alpaca, which shifted every position of the old split
EVAL_ARGS = ["--variants", "[sft]", "--reward_model", "null", "--metrics", "[length]", "--baseline", "null"]
EVAL_ARGS += ["--num_samples", "1", "--max_new_tokens", "4", "--max_prompts", "1000", "--few_shot", "0"]


def user_text(row) -> str:
    turns = row["messages"] if "messages" in row else row["prompt"]
    return normalise("\n".join(t["content"] for t in turns if t["role"] == "user"))


def test_one_prompt_one_key_whatever_the_format():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is  2+2?"}]
    assert prompt_key([*chat, {"role": "assistant", "content": "4"}]) == prompt_key({"prompt": chat})
    assert prompt_key({"prompt": chat, "chosen": [], "rejected": []}) == prompt_key(chat)
    assert prompt_key([{"role": "user", "content": "what is 2+2?"}]) == prompt_key(chat)  # case, spaces
    assert prompt_key(chat) != prompt_key([{"role": "user", "content": "What is 2+3?"}])
    # A smaller fraction holds out a subset of what a larger one does.
    keys = [prompt_key(f"row {i}") for i in range(2000)]
    small = {k for k in keys if is_held_out(k, 0.05, 42)}
    large = {k for k in keys if is_held_out(k, 0.1, 42)}
    assert small < large and 60 < len(small) < 140 and 150 < len(large) < 250


def test_dropping_rows_never_moves_a_row_across_the_split(chat_tokenizer):
    everything = prepare_dataset("tiny_alpaca", eval_fraction=0.1, seed=42)
    short = prepare_dataset(
        "tiny_alpaca", tokenizer=chat_tokenizer, max_length=SHORT, eval_fraction=0.1, seed=42
    )
    assert short.dropped.get("too_long", 0) > 0
    # Every row that survives the filter is on the same side as without it.
    assert set(short.eval_keys) <= set(everything.eval_keys)
    assert set(short.train_keys) <= set(everything.train_keys)
    assert not set(short.train_keys) & set(everything.eval_keys)


def test_a_stage_never_trains_on_what_an_earlier_one_held_out():
    full = prepare_dataset("tiny_alpaca", eval_fraction=0.0, seed=42)
    held = set(full.train_keys[:50])
    data = prepare_dataset("tiny_alpaca", eval_fraction=0.0, seed=42, exclude=held)
    assert not set(data.train_keys) & held
    assert data.dropped["held_out_upstream"] == sum(k in held for k in full.train_keys)  # repeats too


@pytest.fixture(scope="module")
def short_sft(tmp_path_factory, tiny_llama):
    """An SFT run whose max_length drops rows (the case that contaminated the old eval)."""
    root = tmp_path_factory.mktemp("short-sft")
    argv = ["sft", "--config", SFT, "--output_dir", "sft", "--max_length", str(SHORT), "--max_steps", "1"]
    argv += ["--eval_fraction", "0.1"]
    import os

    from hftune import cli

    old = Path.cwd()
    os.chdir(root)
    try:
        assert cli.main(argv) == 0
    finally:
        os.chdir(old)
    return root


def test_an_eval_after_an_sft_that_dropped_rows_scores_no_training_prompt(short_sft, chat_tokenizer, capsys):
    from hftune.models.tokenizer import load_tokenizer

    root = short_sft
    argv = ["eval", "--config", EVAL, "--output_dir", "eval", "--sft_model", "sft", "--cache_dir", "cache"]
    code, out, err = run_cli([*argv, *EVAL_ARGS], root, capsys)
    assert code == 0, err
    evaluated = {normalise(json.loads(line)["prompt"]) for line in (root / "eval/samples.jsonl").open()}
    # What SFT trained on, derived independently of any record: the same preparation SFT ran.
    tokenizer = load_tokenizer(str(root / "sft"))
    trained = prepare_dataset(
        "tiny_alpaca", tokenizer=tokenizer, max_length=SHORT, eval_fraction=0.1, seed=42
    )
    trained_prompts = {user_text(r) for r in trained.train}
    assert len(evaluated) >= 20
    assert not evaluated & trained_prompts
    results = json.loads((root / "eval/results.json").read_text())
    (sft_stage,) = [s for s in results["contamination"]["stages"].values() if s["stage"] == "sft"]
    assert sft_stage["overlap"] == 0
    assert "0 of" in out and "contamination audit" in out
    assert "None of the" in (root / "eval/report.md").read_text()
    # The SFT artifact records what it trained on and held out, as keys only.
    record = read_prompts(root / "sft")
    assert record["trained"] and record["held_out"] and not record["trained"] & record["held_out"]


def test_an_eval_on_training_prompts_is_refused_naming_the_stage(short_sft, capsys):
    argv = ["eval", "--config", EVAL, "--output_dir", "bad-eval", "--sft_model", "sft", "--split", "all"]
    argv += [*EVAL_ARGS, "--cache_dir", "cache"]
    err = refused(
        argv,
        short_sft,
        capsys,
        mentions=["stage sft", "trained on", "allow_contamination"],
        allow_new=("cache",),
    )
    assert re.search(r"stage sft \(sft, behind sft\) trained on \d+ of the \d+ evaluated prompts", err), err


def test_allowed_contamination_is_reported_with_the_clean_subset(short_sft, capsys):
    root = short_sft
    # Half the prompts the SFT model held out, half it trained on: the suite's own rule with a wider fraction.
    argv = [
        "eval",
        "--config",
        EVAL,
        "--output_dir",
        "mixed",
        "--base_model",
        "sft",
        "--sft_model",
        "null",
        "--variants",
        "[base]",
    ]
    argv += ["--reward_model", "null", "--metrics", "[length]", "--baseline", "null", "--num_samples", "1"]
    argv += ["--max_new_tokens", "4", "--max_prompts", "1000", "--few_shot", "0", "--eval_fraction", "0.3"]
    argv += ["--cache_dir", "cache", "--allow_contamination"]
    code, out, err = run_cli(argv, root, capsys)
    assert code == 0, err
    results = json.loads((root / "mixed/results.json").read_text())
    audit = results["contamination"]
    (sft_stage,) = [s for s in audit["stages"].values() if s["stage"] == "sft"]
    assert 0 < sft_stage["overlap"] < audit["n_prompts"]
    assert (
        results["clean_subset"]["n_prompts"]
        == audit["clean_prompts"]
        == audit["n_prompts"] - sft_stage["overlap"]
    )
    assert "prompts seen in training" in out
    # The report flags the overlap (a red cell) and repeats the metrics on the clean prompts.
    html = (root / "mixed/report.html").read_text()
    assert "Held-out check" in html and f'class="worse">{sft_stage["overlap"]} of' in html
    assert f"on the {audit['clean_prompts']} prompts no stage" in html
    assert "Metrics on the clean prompts" in (root / "mixed/report.md").read_text()


def test_rl_never_trains_on_the_prompts_sft_held_out(chain, tmp_path):
    """RL holds out fewer prompts than SFT (a smaller eval_fraction): SFT's others stay out anyway."""
    from hftune.stages import ppo as rl

    sft_held_out = read_prompts(chain["sft"])["held_out"]
    argv = ["--model_name_or_path", chain["sft"], "--reward_model_path", chain["rm"], "--output_dir"]
    argv += [str(tmp_path / "ppo"), "--max_steps", "1", "--heldout_every", "0", "--eval_fraction", "0.01"]
    result = rl.run(rl.parse(str(REPO / "configs/tiny/ppo.yaml"), argv))
    trained = read_prompts(result.output_dir)["trained"]
    assert trained and not trained & sft_held_out
    assert result.manifest["data"]["dropped"]["held_out_upstream"] > 0
