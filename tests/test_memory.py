"""The dry run's memory estimate: exact parameter and LoRA counts (checked against a real tiny model and
PEFT's own count), bytes per parameter by precision, and the extra models PPO holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from hftune import pipeline
from hftune.config import load_yaml_mapping
from hftune.stages import memory, reward, sft

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


def test_bf16_halves_the_weights(tiny_llama):
    from transformers import AutoConfig

    cfg = sft.parse(str(REPO / "configs/tiny/sft.yaml"))
    config = AutoConfig.from_pretrained(tiny_llama)
    fp32 = memory.estimate("sft", cfg, config)
    cfg.training.bf16 = True  # set after parsing: TrainingArguments refuses bf16 without a GPU
    bf16 = memory.estimate("sft", cfg, config)
    assert bf16.dtype == "bf16" and bf16.weights == 2 * bf16.params == fp32.weights / 2


def test_4bit_estimate_matches_a_real_quantized_load(tiny_llama):
    """The estimate against bitsandbytes itself: the tiny model loaded in 4-bit NF4 (CPU) takes what the
    estimate says, within 10% (NF4's scales are the approximate part)."""
    from transformers import AutoConfig

    from hftune.models import loading

    cfg = sft.parse(str(REPO / "configs/tiny/sft_qlora.yaml"))
    est = memory.estimate("sft", cfg, AutoConfig.from_pretrained(tiny_llama))
    assert est.dtype.startswith("4-bit NF4")
    model = loading.load_model(tiny_llama, cfg.model, for_training=False)
    actual = model.get_memory_footprint()
    assert est.weights == pytest.approx(actual, rel=0.1)
    assert est.weights < 4 * est.params  # less than fp32 (the tiny model is mostly embeddings, kept fp32)


def test_logits_count_for_language_models_not_reward_models(tiny_llama):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_llama)
    cfg = sft.parse(str(REPO / "configs/tiny/sft.yaml"))
    est = memory.estimate("sft", cfg, config)
    batch, length = cfg.training.per_device_train_batch_size, cfg.training.max_length
    assert est.logits == 4 * batch * length * config.vocab_size
    assert memory.estimate("reward", reward.parse(str(REPO / "configs/tiny/reward.yaml")), config).logits == 0


@pytest.mark.parametrize(
    "model, published",
    # The parameter counts their model cards publish (to 2-4 significant digits).
    [("HuggingFaceTB/SmolLM2-135M", 134.5e6), ("Qwen/Qwen2.5-0.5B", 0.49e9), ("Qwen/Qwen2.5-7B", 7.61e9)],
)
def test_shipped_architectures_have_the_published_parameter_counts(model, published):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(pipeline.ARCHITECTURES / (model.replace("/", "--") + ".json"))
    params = sum(p.numel() for p in memory.meta_model(config).parameters())
    assert params == pytest.approx(published, rel=0.01)  # as precise as the cards round them


def test_real_model_plans_print_estimates_offline(capsys, monkeypatch):
    """The shipped real-model pipelines get a memory line per training stage with no network, from the
    architectures hftune ships."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipeline.run(str(REPO / "configs/qwen2.5-7b/pipeline.yaml"), dry_run=True)
    out = capsys.readouterr().out
    assert "unknown" not in out and out.count("memory: ~") == 3, out
    assert "7.62B params in 4-bit NF4" in out  # the QLoRA SFT stage
    rloo = next(line for line in out.splitlines() if "memory" in line and "reward model" in line)
    assert "value model" not in rloo  # RLOO holds no value model


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


def test_preference_optimisation_counts_both_replies_and_a_full_reference_only_without_lora(tiny_llama):
    from transformers import AutoConfig

    from hftune.stages import dpo as po

    config = AutoConfig.from_pretrained(tiny_llama)
    dpo_yaml = str(REPO / "configs/tiny/dpo.yaml")
    lora = memory.estimate("dpo", po.parse(dpo_yaml), config)
    as_sft = memory.estimate(
        "sft", sft.parse(str(REPO / "configs/tiny/sft.yaml"), ["--max_length", "256"]), config
    )
    assert (
        lora.extra == {} and lora.logits == 2 * 4 * 8 * 256 * config.vocab_size
    )  # batch 8, chosen + rejected
    assert lora.activations > as_sft.activations
    full = memory.estimate("dpo", po.parse(dpo_yaml, ["--use_peft", "false"]), config)
    assert set(full.extra) == {"reference model (frozen copy)"} and full.total > lora.total
    assert (
        memory.estimate(
            "orpo", po.parse(dpo_yaml, ["--use_peft", "false", "--algorithm", "orpo"]), config
        ).extra
        == {}
    )
