"""The dry run's memory estimate: exact parameter and LoRA counts (checked against a real tiny model and
PEFT's own count), bytes per parameter by precision, and the extra models PPO holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from hftune import memory, pipeline, sft
from hftune.config import load_yaml_mapping

REPO = Path(__file__).resolve().parent.parent


def test_estimate_counts_match_the_real_tiny_model(tiny_llama):
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl import ModelConfig, get_peft_config

    config = AutoConfig.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    full = sft.parse(str(REPO / "configs/tiny/sft_full.yaml"))
    est = memory.estimate("sft", full, config)
    assert est.params == model.num_parameters()
    assert est.weights == 4 * est.params and est.dtype == "fp32"  # fp32 on CPU
    assert est.trainable == est.params and est.trainable_state == 12 * est.params

    lora = sft.parse(str(REPO / "configs/tiny/sft.yaml"))
    est = memory.estimate("sft", lora, config)
    peft_model = get_peft_model(model, get_peft_config(ModelConfig(**_lora_keys(lora))))
    assert est.trainable == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert est.activations > 0


def _lora_keys(cfg) -> dict:
    keys = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
    return {k: getattr(cfg.model, k) for k in keys}


@pytest.mark.parametrize("precision, per_param", [("bf16", 2), ("load_in_4bit", 0.55)])
def test_bytes_per_parameter_follow_the_precision(tiny_llama, precision, per_param):
    from transformers import AutoConfig

    cfg = sft.parse(str(REPO / "configs/tiny/sft.yaml"))
    # Set after parsing: TrainingArguments refuses bf16 on a machine without a GPU, like this one.
    setattr(cfg.training if precision == "bf16" else cfg.model, precision, True)
    est = memory.estimate("sft", cfg, AutoConfig.from_pretrained(tiny_llama))
    assert est.weights == pytest.approx(per_param * est.params)


def test_ppo_adds_a_reward_model_and_a_full_value_model(tiny_llama, capsys, tmp_path):
    config = tmp_path / "pipeline.yaml"
    stages = load_yaml_mapping(REPO / "configs/tiny/pipeline.yaml")["stages"]
    for stage in stages:
        stage["config"] = str(REPO / "configs/tiny" / stage["config"])
    import yaml

    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": stages}))
    plan = pipeline.run(str(config), dry_run=True)
    out = capsys.readouterr().out
    assert out.count("memory: ~") == 3, out  # sft, reward, ppo (the eval trains nothing)
    ppo = next(s for s in plan if s.name == "ppo")
    from transformers import AutoConfig

    est = memory.estimate("ppo", ppo.cfg, AutoConfig.from_pretrained(tiny_llama))
    assert set(est.extra) == {"reward model", "value model (trains in full)"}
    rloo = memory.estimate("rloo", ppo.cfg, AutoConfig.from_pretrained(tiny_llama))
    assert set(rloo.extra) == {"reward model"} and rloo.total < est.total
