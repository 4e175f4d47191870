"""The reward stage on a tiny SFT model: it learns a known preference, its saved form scores exactly
like the trained one, scores ignore batching and padding, and mismatched tokenizers are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hftune.errors import UserError
from hftune.models import scoring
from hftune.stages import reward, sft

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs/tiny/reward.yaml")
TOKEN = "hf_" + "R3wardT0ken" * 4


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory, tiny_llama) -> str:
    out = tmp_path_factory.mktemp("reward-sft") / "sft"
    sft.run(
        sft.parse(str(REPO / "configs/tiny/sft.yaml"), ["--output_dir", str(out), "--eval_fraction", "0"])
    )
    return str(out)


def reward_config(sft_model: str, out: Path, *extra: str):
    return reward.parse(CONFIG, ["--model_name_or_path", sft_model, "--output_dir", str(out), *extra])


@pytest.fixture(scope="module")
def lora_rm(tmp_path_factory, sft_model):
    out = tmp_path_factory.mktemp("rm") / "rm"
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_TOKEN", TOKEN)
    try:
        # 120 steps, not the config's 60: with the SFT adapter now seeded (it was initialised from whatever
        # random state earlier tests left), 60 steps reach 44 of 49 held-out pairs (0.898, 95% CI
        # 0.80-0.98), at the edge of the 0.9 asserted below; 120 reach 0.918 (measured, seed 42).
        return reward.run(reward_config(sft_model, out, "--max_steps", "120"))
    finally:
        mp.undo()


def assert_reload_reproduces_scores(result) -> scoring.Scorer:
    """The saved reward model scores the held-out pairs exactly as the trained one in memory did."""
    pairs, pad = result.eval_pairs, result.trainer.processing_class.pad_token_id
    scorer = scoring.load_scorer(str(result.output_dir))
    for key in ("chosen_ids", "rejected_ids"):
        trained = scoring.score_ids(result.trainer.model, pairs[key], pad)
        reloaded = scoring.score_ids(scorer.model, pairs[key], scorer.tokenizer.pad_token_id)
        assert (trained - reloaded).abs().max() < 1e-5, key
    return scorer


def test_reward_model_learns_the_known_preference(lora_rm):
    report = lora_rm.report
    assert report["accuracy"] >= 0.9, report
    assert report["accuracy"] > report["accuracy_before"] + 0.2, report
    low, high = report["accuracy_ci95"]
    assert low <= report["accuracy"] <= high
    # A real interval, unless every held-out pair is ranked right (then every resample is 1.0 too).
    assert high - low > 0 or report["accuracy"] == 1.0
    assert report["mean_margin"] > 0 and report["chosen"]["mean"] > report["rejected"]["mean"]
    assert set(report["score_stats"]) == {"mean", "std"} and report["score_stats"]["std"] > 0
    assert -1.0 <= report["length_correlation"] <= 1.0
    saved = json.loads((lora_rm.output_dir / scoring.REPORT_FILE).read_text())
    assert saved["accuracy"] == report["accuracy"]


def test_saved_lora_reward_model_reproduces_scores(lora_rm):
    scorer = assert_reload_reproduces_scores(lora_rm)
    assert scorer.stats == lora_rm.report["score_stats"]


def test_adapter_carries_score_head_and_names_sft_as_base(lora_rm, sft_model):
    out = lora_rm.output_dir
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(".score." in k for k in keys), "the trained score head must be saved with the adapter"
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"
    assert Path(config["base_model_name_or_path"]) == Path(sft_model).resolve()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "reward" and manifest["parents"][0]["stage"] == "sft"
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), f"token found in {path}"


def test_scores_do_not_depend_on_batch_size_or_padding(lora_rm):
    scorer = scoring.load_scorer(str(lora_rm.output_dir))
    prompts = ["What is 2 + 2?", "Reverse the word 'garden'.", "What is the capital of Peru?"]
    responses = ["2 + 2 = 4.", "The word 'garden' reversed is 'nedrag'. " * 3, "Lima."]
    alone = torch.cat([scorer.score([p], [r], batch_size=1) for p, r in zip(prompts, responses, strict=True)])
    batched = scorer.score(prompts, responses, batch_size=3)
    padded = scorer.score(prompts * 2, responses * 2, batch_size=4)[:3]
    assert torch.allclose(alone, batched, atol=1e-5, rtol=0)
    assert torch.allclose(alone, padded, atol=1e-5, rtol=0)


def test_full_fine_tuned_reward_model_reloads_identically(tmp_path, sft_model):
    result = reward.run(
        reward_config(sft_model, tmp_path / "full", "--use_peft", "false", "--max_steps", "5")
    )
    assert (result.output_dir / "model.safetensors").is_file()
    assert_reload_reproduces_scores(result)
    # Full fine-tuning on an SFT adapter trains the merged weights (they load frozen from the adapter).
    from trl import ModelConfig

    from hftune.models import loading

    merged = loading.load_model(sft_model, ModelConfig(dtype="float32"), for_training=True).state_dict()
    trained = result.trainer.model.state_dict()
    common = [k for k in merged if k in trained]  # the reward model's score head replaces the LM head
    unchanged = [k for k in common if torch.equal(merged[k], trained[k])]
    assert len(common) >= 10 and not unchanged, unchanged


def test_a_different_chat_template_is_refused(tmp_path, sft_model):
    other = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(UserError, match="chat template differs"):
        reward.prepare(reward_config(sft_model, tmp_path / "rm", "--chat_template", other))


def test_a_different_tokenizer_is_refused(tmp_path, sft_model):
    from hftune.models.tiny import default_corpus, train_tokenizer

    folder = tmp_path / "other-tokenizer"
    train_tokenizer(default_corpus()[:500], 600).save_pretrained(folder)
    with pytest.raises(UserError, match=r"their vocabulary( and [a-z ]+)? differs?"):
        reward.prepare(reward_config(sft_model, tmp_path / "rm", "--tokenizer_name_or_path", str(folder)))


def test_preference_file_missing_rejected_names_column_and_file(tmp_path, sft_model):
    bad = tmp_path / "prefs.jsonl"
    row = {
        "prompt": "Hi",
        "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
    }
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError) as err:
        reward.prepare(reward_config(sft_model, tmp_path / "rm", "--data_files", str(bad)))
    assert "rejected" in str(err.value) and str(bad) in str(err.value)


def test_config_checks_protect_the_score_head(tmp_path):
    with pytest.raises(UserError) as err:
        reward.parse(CONFIG, ["--lora_task_type", "CAUSAL_LM", "--lora_modules_to_save", "[lm_head]"])
    text = str(err.value)
    assert "lora_task_type" in text and "SEQ_CLS" in text and "lora_modules_to_save" in text


def test_sft_data_and_reward_model_inputs_are_refused(tmp_path, sft_model, lora_rm):
    with pytest.raises(UserError, match="not preference data"):
        reward.prepare(reward_config(sft_model, tmp_path / "rm", "--data_recipe", "tiny_alpaca"))
    with pytest.raises(UserError, match="already a reward model"):
        reward.prepare(reward_config(str(lora_rm.output_dir), tmp_path / "rm2"))


def test_report_flags_a_reward_that_tracks_length():
    lengths_c, lengths_r = [10, 20, 30, 40], [5, 15, 25, 35]
    chosen = torch.tensor([float(n) for n in lengths_c])
    rejected = torch.tensor([float(n) for n in lengths_r])
    report = reward.build_report(
        chosen, rejected, lengths_c, lengths_r, bootstrap=200, seed=0, length_warning=0.5
    )
    assert report["accuracy"] == 1.0 and report["accuracy_ci95"] == [1.0, 1.0]
    assert report["length_correlation"] > 0.99 and report["length_flag"]
    assert "WARNING" in reward.format_report(report)
    ties = reward.build_report(
        chosen, chosen.clone(), lengths_c, lengths_c, bootstrap=0, seed=0, length_warning=0.5
    )
    assert ties["accuracy"] == 0.5 and "accuracy_ci95" not in ties


def test_a_retrained_sft_base_is_refused(tmp_path, sft_model, lora_rm):
    import shutil

    sft_copy, rm_copy = tmp_path / "sft", tmp_path / "rm"
    shutil.copytree(sft_model, sft_copy)
    shutil.copytree(lora_rm.output_dir, rm_copy)
    config = json.loads((rm_copy / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(sft_copy)
    (rm_copy / "adapter_config.json").write_text(json.dumps(config))
    assert scoring.load_scorer(str(rm_copy)).stats  # the same SFT artifact: loads
    manifest = json.loads((sft_copy / "manifest.json").read_text())
    manifest["created"] = "2000-01-01T00:00:00Z"  # as if SFT had been run again into the same folder
    (sft_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="has changed since"):
        scoring.load_scorer(str(rm_copy))
