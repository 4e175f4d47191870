"""Model cards in the Hub's conventions, rendered from small synthetic stage folders (manifests, configs and
reports; no weights, nothing trained): the metadata the Hub reads (license, an adapter's real base with its
relation, model-index results from an eval), the use and limitation sections written from what was measured,
the eval's verdicts, the key settings, which eval column is this model (a seed run's own numbers), and a
reward model's accuracy with its CI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from hftune import cli
from hftune.errors import UserError
from hftune.publish import card

SUITE = "tiny-suite"


def stage(root: Path, name: str, stage_name: str, parents: list[tuple[str, str]], **extra) -> Path:
    """A finished stage folder: manifest, resolved config, and (`adapter` given) an adapter_config.json."""
    folder = root / name
    folder.mkdir()
    adapter = extra.pop("adapter", None)
    config = extra.pop("config", {})
    report = extra.pop("report", None)
    manifest = {
        "stage": stage_name,
        "parents": [{"role": role, "name_or_path": path} for role, path in parents],
        "config_sha256": name,
        "data": extra.pop("data", {}),
        "metrics": extra.pop("metrics", {}),
        "seed": config.get("seed", 0),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "config.hftune.yaml").write_text(yaml.safe_dump(config))
    if adapter is not None:
        (folder / "adapter_config.json").write_text(json.dumps(adapter))
    else:
        (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    if report is not None:
        (folder / "reward_report.json").write_text(json.dumps(report))
    return folder


def cell(mean: float, per_seed: list[float] | None = None) -> dict:
    out = {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "n": 50}
    if per_seed:
        out["seeds"] = {"n": len(per_seed), "per_seed": per_seed, "mean": mean, "method": "t"}
    return out


@pytest.fixture
def runs(tmp_path) -> dict[str, Path]:
    """someone/base -> full-FT SFT -> LoRA reward model on the SFT folder, and two PPO seed runs (LoRA on the
    SFT folder), with an eval of sft and the seeded rlhf variant that carries verdicts."""
    sft_config = {"learning_rate": 2e-5, "max_steps": 100, "per_device_train_batch_size": 8, "seed": 42}
    sft_config |= {"use_peft": False, "max_length": 256, "data_recipe": "tiny_alpaca"}
    sft = stage(
        tmp_path,
        "sft",
        "sft",
        [("base_model", "someone/base")],
        config=sft_config,
        data={"recipe": "tiny_alpaca"},
    )
    lora = {"peft_type": "LORA", "base_model_name_or_path": str(sft)}
    rm = stage(
        tmp_path,
        "rm",
        "reward",
        [("sft_model", str(sft))],
        adapter={**lora, "task_type": "SEQ_CLS"},
        config={"learning_rate": 5e-3, "use_peft": True, "lora_r": 8, "lora_alpha": 16, "seed": 42},
        data={"recipe": "tiny_compare_pairs"},
        metrics={"accuracy": 0.9, "length_correlation": 0.62},
        report={
            "n_pairs": 120,
            "accuracy": 0.9,
            "accuracy_ci95": [0.85, 0.95],
            "accuracy_before": 0.5,
            "length_correlation": 0.62,
            "length_flag": True,
        },
    )
    out = {"sft": sft, "rm": rm}
    for seed in (1, 2):
        config = {"algorithm": "ppo", "learning_rate": 1e-4, "max_steps": 30, "kl_coef": 0.05, "seed": seed}
        config |= {"use_peft": True, "lora_r": 16, "lora_alpha": 32}
        out[f"ppo{seed}"] = stage(
            tmp_path,
            f"ppo-seed{seed}",
            "ppo",
            [("sft_model", str(sft)), ("reward_model", str(rm))],
            adapter={**lora, "task_type": "CAUSAL_LM"},
            config=config,
            metrics={"algorithm": "ppo", "objective/kl last": 1.5},
        )
    seeds = [str(out["ppo1"]), str(out["ppo2"])]
    results = {
        "suite": {"name": SUITE, "confidence": 0.95},
        "baseline": "sft",
        "metric_info": {
            "reward": {"higher_is_better": True, "description": "reward"},
            "verifier": {"higher_is_better": True, "description": "verifier accuracy"},
            "kl_to_sft": {"higher_is_better": False, "description": "KL"},
        },
        "variants": {
            "sft": {"model": str(sft), "metrics": {"reward": cell(1.0), "verifier": cell(0.5)}},
            "rlhf": {
                "model": seeds,
                "seed_runs": [
                    {"run": f"rlhf@ppo-seed{s}", "model": path, "seed": s}
                    for s, path in zip((1, 2), seeds, strict=True)
                ],
                "metrics": {
                    "reward": cell(3.0, [2.75, 3.25]),
                    "verifier": cell(0.625, [0.5, 0.75]),
                    "kl_to_sft": cell(1.25, [1.0, 1.5]),
                },
            },
        },
        "win_rates": {},
        "verdicts": [
            {
                "claim": "rlhf beats sft on reward",
                "variant": "rlhf",
                "baseline": "sft",
                "word": "holds",
                "line": "rlhf beats sft on reward: holds (both CIs exclude 0)",
            },
            {
                "claim": "dpo beats base on verifier",
                "variant": "dpo",
                "baseline": "base",
                "word": "mixed",
                "line": "dpo beats base on verifier: mixed",
            },
        ],
    }
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(results))
    out["eval"] = tmp_path / "eval"
    return out


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_adapter_on_an_sft_folder_links_its_real_base_with_a_license_placeholder(runs):
    text = card.render(runs["rm"])
    data = ModelCard(text).data
    assert data.base_model == str(runs["sft"])  # the model the adapter loads on, not the root someone/base
    assert data.base_model_relation == "adapter"
    assert data.license == "other"
    assert "No license was given: set `--license`" in text
    assert not data.eval_results  # no --eval, no model-index
    for title in ("Intended use", "Out-of-scope use", "Limitations", "Reward model accuracy"):
        assert section(text, title)
    assert "## Verdict" not in text
    accuracy = section(text, "Reward model accuracy")
    assert "0.900 (95% bootstrap CI 0.850-0.950) over 120 pairs; before training 0.500" in accuracy
    limitations = section(text, "Limitations")
    assert "r = +0.62" in limitations and "flagged" in limitations
    assert "seed 42" in limitations
    # tiny_alpaca and tiny_compare_pairs are built-in synthetic recipes: said so, from their descriptions.
    assert "synthetic" in section(text, "Out-of-scope use") and "`tiny_compare_pairs`" in limitations
    assert "Scoring replies" in section(text, "Intended use")


def test_full_model_links_its_root_and_marks_its_eval_column(runs):
    text = card.render(runs["sft"], eval_dir=runs["eval"])
    data = ModelCard(text).data
    assert data.base_model == "someone/base" and data.base_model_relation == "finetune"
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results == {"reward": 1.0, "verifier": 0.5}
    assert {r.dataset_name for r in data.eval_results} == {SUITE}
    assert {r.task_type for r in data.eval_results} == {"text-generation"}
    evaluation = section(text, "Evaluation")
    assert "| metric | **sft (this model)** | rlhf |" in evaluation
    # sft is the baseline of the rlhf claim: that verdict is about it; the dpo one is not.
    verdict = section(text, "Verdict")
    assert "rlhf beats sft on reward: holds" in verdict and "dpo beats base" not in verdict
    hyper = section(text, "Training config")
    assert "| learning rate | 2e-05 |" in hyper and "| steps | 100 |" in hyper
    assert "| LoRA | no (full fine-tune) |" in hyper and "| max_length | 256 |" in hyper
    assert hyper.index("| setting | value |") < hyper.index("<details>")


def test_a_seed_runs_card_shows_its_own_numbers_beside_the_mean(runs):
    text = card.render(runs["ppo2"], eval_dir=runs["eval"], license="apache-2.0")
    data = ModelCard(text).data
    assert data.license == "apache-2.0" and "No license was given" not in text
    assert data.base_model == str(runs["sft"]) and data.base_model_relation == "adapter"
    # model-index: this run's own numbers (seed 2), not the variant's mean over the seeds.
    assert {r.metric_type: r.metric_value for r in data.eval_results} == {
        "reward": 3.25,
        "verifier": 0.75,
        "kl_to_sft": 1.5,
    }
    evaluation = section(text, "Evaluation")
    assert "`rlhf@ppo-seed2` (seed 2)" in evaluation
    assert "| metric | sft | rlhf | **rlhf@ppo-seed2 (this model)** |" in evaluation
    reward_row = next(line for line in evaluation.splitlines() if line.startswith("| reward"))
    assert reward_row.endswith("| 3.000 [2.900, 3.100] | 3.250 |")
    limitations = section(text, "Limitations")
    assert "one of 2 seed runs (seeds 1, 2)" in limitations
    assert "this run 0.75; the mean over its variant's seed runs 0.625" in limitations
    assert "r = +0.62" in limitations  # the reward model it trained against tracks length
    verdict = section(text, "Verdict")
    assert "rlhf beats sft on reward: holds" in verdict and "dpo beats base" not in verdict
    hyper = section(text, "Training config")
    for row in ("| algorithm | ppo |", "| LoRA r / alpha | 16 / 32 |", "| kl_coef | 0.05 |", "| seed | 2 |"):
        assert row in hyper


def test_no_verdicts_key_no_verdict_section_and_unknown_model_gets_all_lines(runs, tmp_path):
    results = json.loads((runs["eval"] / "results.json").read_text())
    del results["verdicts"]
    (tmp_path / "plain-eval").mkdir()
    (tmp_path / "plain-eval" / "results.json").write_text(json.dumps(results))
    assert "## Verdict" not in card.render(runs["ppo1"], eval_dir=tmp_path / "plain-eval")
    # The reward model is no variant of the eval: every verdict line, saying it could not tell.
    verdict = section(card.render(runs["rm"], eval_dir=runs["eval"]), "Verdict")
    assert "could not tell" in verdict and "dpo beats base" in verdict and "rlhf beats sft" in verdict


def test_license_option_on_the_command_line(runs, capsys):
    assert cli.main(["card", str(runs["rm"]), "--license", "mit"]) == 0
    assert ModelCard(capsys.readouterr().out).data.license == "mit"
    with pytest.raises(UserError, match="--license"):
        card.render(runs["rm"], license="Not a license!")
