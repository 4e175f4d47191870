"""Offline preference optimisation (`hftune dpo`): DPO is evaluated beside SFT with CIs (that it fixes the
biased demonstrations end to end is tests/test_quickstart.py), KTO trains on unpaired rows, ORPO and SimPO
start from a base model, the artifact publishes, and the diagnostics warn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import synthetic
from bad_input import refused, run_cli, write

from hftune.evaluation.verifiers import verify_answer
from hftune.stages import dpo as po

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs/tiny/dpo.yaml")


def dpo_args(model: str, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", model, "--output_dir", str(out), *extra]


@pytest.mark.slow
def test_dpo_is_evaluated_beside_sft_with_cis_and_the_reward_model_caveat(chain, tmp_path, capsys):
    """DPO from the tiny SFT model, then one eval of SFT vs DPO on SFT's held-out prompts, scored by the
    tiny reward model DPO never saw (so flagged), with the task's verifier and a CI on every number."""
    result = po.run(po.parse(CONFIG, dpo_args(chain["sft"], tmp_path / "dpo")))
    m = result.metrics
    assert m["heldout/rewards/accuracies"] > 0.8 and m["heldout/rewards/margins"] > 0
    argv = ["eval", "--config", REPO / "eval/suites/tiny.yaml", "--sft_model", chain["sft"]]
    argv += ["--rlhf_models", f"{{dpo: [{tmp_path / 'dpo'}]}}", "--reward_model", chain["rm"]]
    argv += ["--variants", "[sft, rlhf]", "--output_dir", tmp_path / "eval"]
    code, _, err = run_cli(argv, tmp_path, capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    dpo = results["variants"]["dpo"]
    # The suite's 40 rows repeat some questions: each distinct prompt is evaluated once.
    n = results["n_prompts"]
    repeats = results["duplicates"]
    assert n == repeats["n_distinct"] == repeats["n_rows"] - repeats["n_dropped"] <= 40
    assert repeats["n_dropped"] > 0
    for metric in ("reward", "verifier", "kl_to_sft"):
        cell = dpo["metrics"][metric]
        assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"] and cell["n"] == n
    assert {"reward", "verifier"} <= set(dpo["vs_baseline"])
    assert dpo["trained_against_reward_model"] is False
    assert dpo["metrics"]["kl_to_sft"]["mean"] > 0  # it moved away from SFT, and the eval measures how far


def test_the_biased_demonstrator_is_wrong_where_the_second_number_is_larger():
    """The fixture behind configs/biased.yaml: 60% of the demonstrations name the first number, so about 30%
    are wrong (where the second number is larger), and every pair prefers the right answer."""
    rows = synthetic.biased_compare_rows(2000, seed=0)
    wrong = [r for r in rows if not verify_answer(r["instruction"], r["output"])]
    assert 0.26 < len(wrong) / len(rows) < 0.34
    for r in wrong:
        first, second = r["instruction"].removeprefix("Which is larger, ").rstrip("?").split(" or ")
        assert int(first) < int(second) and r["output"].startswith(f"{first} is larger")
    pairs = synthetic.compare_pair_rows(200, seed=0)
    assert all(verify_answer(p["prompt"], p["chosen"]) for p in pairs)
    assert not any(verify_answer(p["prompt"], p["rejected"]) for p in pairs)


def test_dpo_trains_a_lora_adapter_on_the_sft_model_and_measures_the_held_out_pairs(chain, tmp_path):
    result = po.run(po.parse(CONFIG, dpo_args(chain["sft"], tmp_path / "dpo", "--max_steps", "12")))
    out = result.output_dir
    assert (out / "adapter_model.safetensors").is_file() and not list(out.glob("*.bin"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "dpo"
    assert manifest["parents"][0]["role"] == "sft_model" and manifest["parents"][0]["stage"] == "sft"
    assert manifest["data"]["format"] == "preference" and manifest["data"]["n_eval"] > 0
    m = result.metrics
    # Before training the policy is its reference: every implicit reward is 0.
    assert m["heldout_before/rewards/margins"] == 0 and m["heldout/rewards/margins"] > 0
    assert m["heldout/rewards/accuracies"] > 0.5
    assert (out / "prompts.json").is_file()
    # The reference is the SFT model with the adapter switched off: one model in memory.
    trainer = result.trainer
    assert trainer.ref_model is None and hasattr(trainer.model, "disable_adapter")


def test_kto_trains_on_the_unpaired_fixture_and_on_pairs_split_in_halves(chain, tmp_path):
    unpaired = po.run(
        po.parse(CONFIG, dpo_args(chain["sft"], tmp_path / "kto", "--algorithm", "kto", "--data_recipe",
                                  "tiny_unpaired", "--max_steps", "6"))
    )  # fmt: skip
    assert (
        unpaired.manifest["stage"] == "kto" and unpaired.manifest["data"]["format"] == "unpaired_preference"
    )
    assert set(unpaired.trainer.train_dataset.column_names) >= {"prompt_ids", "label"}
    paired = po.prepare(po.parse(CONFIG, dpo_args(chain["sft"], tmp_path / "kto2", "--algorithm", "kto")))
    labels = paired.trainer.train_dataset["label"]
    assert len(labels) == 2 * len(paired.data.train) and sum(labels) == len(paired.data.train)


@pytest.mark.parametrize("algorithm", ["orpo", "simpo"])
def test_reference_free_methods_start_from_the_base_model(tiny_llama, tmp_path, algorithm):
    cfg = po.parse(
        CONFIG, dpo_args(tiny_llama, tmp_path / algorithm, "--algorithm", algorithm, "--max_steps", "4")
    )
    result = po.run(cfg)
    assert result.manifest["stage"] == algorithm
    assert result.manifest["parents"][0]["role"] == "base_model"
    assert result.metrics["global_step"] == 4 and "heldout/rewards/accuracies" in result.metrics


def test_the_diagnostics_warn_of_a_falling_chosen_log_probability_and_of_drift():
    before = {"logps/chosen": -20.0}
    assert po.diagnose(before, {"logps/chosen": -19.0}, [], 10.0) == []
    (fell,) = po.diagnose(before, {"logps/chosen": -25.0}, [], 10.0)
    assert "chosen replies' log-probability fell (-20.00 -> -25.00)" in fell
    fell, drift = po.diagnose(before, {"logps/chosen": -45.0}, [], 10.0)
    assert "drifted 25.0 nats" in drift
    # Without held-out pairs, the training log tells the trend.
    history = [{"logps/chosen": -10.0}, {"loss": 1.0}, {"logps/chosen": -12.0}]
    (fell,) = po.diagnose({}, {}, history, None)
    assert "training chosen replies' log-probability fell" in fell


def test_card_and_push_work_on_a_dpo_artifact(chain, tmp_path, capsys):
    out = tmp_path / "dpo"
    po.run(po.parse(CONFIG, dpo_args(chain["sft"], out, "--max_steps", "2")))
    code, stdout, err = run_cli(["card", str(out)], tmp_path, capsys)
    assert code == 0, err
    assert "tags:\n" in stdout and "- dpo\n" in stdout and "| DPO |" in stdout
    assert "heldout/rewards/accuracies" in stdout  # the lineage table's key numbers for the stage
    staged = tmp_path / "staged"
    code, _, err = run_cli(["push", out, "--repo-id", "me/tiny-dpo", "--dry-run", staged], tmp_path, capsys)
    assert code == 0, err
    assert (staged / "adapter_model.safetensors").is_file() and (staged / "README.md").is_file()


def test_help_documents_every_hftune_option_and_changed_default(capsys):
    code, out, _ = run_cli(["dpo", "--help"], Path.cwd(), capsys)
    assert code == 0
    for key in ("--algorithm", "--max_drift", "--data_recipe", "--eval_fraction"):
        assert key in out
    for default in ("use_peft: True", "lora_target_modules: 'all-linear'", "output_dir: 'runs/dpo'"):
        assert default in out
    assert "DPOConfig" in out and "KTOConfig" in out


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["--beta", "0"], ["beta", "must be positive"]),
        # ORPO / SimPO have no reference, so no reference log-probabilities to precompute.
        (
            ["--algorithm", "simpo", "--precompute_ref_log_probs", "true"],
            ["precompute_ref_log_probs", "unknown key"],
        ),
        (["--algorithm", "ipo"], ["`--algorithm`", "dpo, kto, orpo, simpo"]),
        (["--data_recipe", "tiny_alpaca"], ["tiny_alpaca", "not dpo data"]),
        (["--algorithm", "dpo", "--data_recipe", "tiny_unpaired"], ["tiny_unpaired", "not dpo data"]),
    ],
)
def test_bad_dpo_settings_are_refused(tmp_path, capsys, tiny_llama, argv, mentions):
    config = write(
        tmp_path / "dpo.yaml", f"model_name_or_path: {tiny_llama}\ndata_recipe: tiny_preferences\n"
    )
    refused(["dpo", "--config", config, "--output_dir", "out", *argv], tmp_path, capsys, mentions=mentions)


def test_precomputed_reference_log_probs_train_the_same_objective(chain, tmp_path):
    """`precompute_ref_log_probs: true`: TRL scores every pair under the reference once, before training,
    instead of at each step; the run trains and its held-out implicit rewards start from zero as before."""
    argv = dpo_args(chain["sft"], tmp_path / "pre", "--max_steps", "3", "--precompute_ref_log_probs", "true")
    result = po.run(po.parse(CONFIG, argv))
    assert "ref_chosen_logps" in result.trainer.train_dataset.column_names
    assert result.metrics["heldout_before/rewards/margins"] == 0 and result.metrics["global_step"] == 3


def test_dpo_loss_types_are_trls():
    # TRL names DPOTrainer's losses only in DPOConfig's help: a TRL release that adds or drops one shows here.
    import re
    from dataclasses import fields

    from trl import DPOConfig

    help_text = next(f for f in fields(DPOConfig) if f.name == "loss_type").metadata["help"]
    assert set(po.DPO_LOSS_TYPES) == set(re.findall(r"`'(\w+)'`", help_text))
