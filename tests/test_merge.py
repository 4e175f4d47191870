"""`hftune merge`: a LoRA SFT adapter, a chain (base -> SFT adapter -> policy adapter) and a reward-model
adapter each become one full safetensors model that computes what the adapter model computes; adapters
trained on a 4-bit base are refused; user errors exit 2 with one line."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
import yaml

from hftune import artifacts, cli
from hftune.models import loading
from hftune.models.tokenizer import load_tokenizer
from hftune.publish import card

REPO = Path(__file__).resolve().parent.parent


def add_adapter(base: Path, out: Path, *, reward: bool) -> Path:
    """A LoRA adapter on top of an hftune folder, saved the way the PPO / reward stages save theirs (the base
    folder as `base_model_name_or_path`, its tokenizer, a manifest naming it). Its weights are random rather
    than trained: what matters here is that merging folds them in exactly."""
    from peft import LoraConfig, get_peft_model
    from trl import ModelConfig

    torch.manual_seed(0)
    args = ModelConfig(dtype="float32")
    if reward:  # the SFT adapter merged in, a fresh one-output score head trained in full
        model = loading.load_reward_model(str(base), args, for_training=True)
        lora = LoraConfig(task_type="SEQ_CLS", r=4, target_modules="all-linear", modules_to_save=["score"])
    else:
        model = loading.load_model(str(base), args, for_training=True)
        lora = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules="all-linear")
    lora.init_lora_weights = False  # random A and B: the adapter changes the model from the start
    peft_model = get_peft_model(model, lora)
    with artifacts.atomic_dir(out) as tmp:
        peft_model.save_pretrained(str(tmp))
        config = json.loads((tmp / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = str(base.resolve())
        (tmp / "adapter_config.json").write_text(json.dumps(config))
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copyfile(base / name, tmp / name)
        artifacts.write_manifest(
            tmp,
            stage="reward" if reward else "ppo",
            config_hash="test",
            parents=[artifacts.parent_ref(str(base), "sft_model")],
            data={},
            metrics={},
            seed=0,
            started=time.time(),
        )
    return out


def probe(folder: Path) -> torch.Tensor:
    tokenizer = load_tokenizer(str(folder))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "12 + 30 = 42."}],
        tokenize=False,
    )
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits.float()


def adapter_logits(folder: Path, ids: torch.Tensor, *, reward: bool = False) -> torch.Tensor:
    from trl import ModelConfig

    load = loading.load_reward_model if reward else loading.load_model
    return logits(load(str(folder), ModelConfig(dtype="float32"), for_training=False), ids)


def merged_logits(folder: Path, ids: torch.Tensor, *, reward: bool = False) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    return logits(auto.from_pretrained(str(folder)), ids)


def assert_full_model_folder(out: Path, parent: Path) -> None:
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names), names
    assert "adapter_config.json" not in names and "README.md" not in names
    manifest = artifacts.read_manifest(out)
    assert manifest["stage"] == "merge"
    assert [p["name_or_path"] for p in manifest["parents"]] == [str(parent)]
    assert manifest["parents"][0]["stage"] == (artifacts.read_manifest(parent) or {})["stage"]
    assert manifest["metrics"]["max_abs_logit_diff"] < 1e-4


def test_merged_lora_sft_reproduces_the_adapter_logits(lora_sft, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    assert cli.main(["merge", str(lora_sft), str(out)]) == 0
    ids = probe(lora_sft)
    expected = adapter_logits(lora_sft, ids)
    got = merged_logits(out, ids)
    assert (expected - got).abs().max().item() < 1e-4
    # Not vacuous: the adapter does change the base model's output.
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_llama), ids)
    assert (expected - base).abs().max().item() > 1e-3
    assert_full_model_folder(out, lora_sft)
    assert load_tokenizer(str(out)).chat_template  # the chat template travels with the model
    assert AutoModelForCausalLM.from_pretrained(str(out)).dtype == torch.float32


def test_merged_adapter_chain_folds_in_every_adapter(lora_sft, tmp_path):
    policy = add_adapter(lora_sft, tmp_path / "policy", reward=False)  # base -> SFT adapter -> policy adapter
    out = tmp_path / "merged"
    assert cli.main(["merge", str(policy), str(out)]) == 0
    ids = probe(policy)
    expected = adapter_logits(policy, ids)
    assert (expected - merged_logits(out, ids)).abs().max().item() < 1e-4
    assert (expected - adapter_logits(lora_sft, ids)).abs().max().item() > 1e-3  # the policy adapter matters
    assert_full_model_folder(out, policy)
    assert artifacts.read_manifest(out)["metrics"]["merged_adapters"] == 2


def test_merged_reward_adapter_is_a_sequence_classifier_with_the_same_scores(lora_sft, tmp_path):
    from huggingface_hub import ModelCard
    from safetensors import safe_open

    rm = add_adapter(lora_sft, tmp_path / "rm", reward=True)
    out = tmp_path / "rm-merged"
    assert cli.main(["merge", str(rm), str(out)]) == 0
    ids = probe(rm)
    expected = adapter_logits(rm, ids, reward=True)
    assert expected.shape == (1, 1)
    assert (expected - merged_logits(out, ids, reward=True)).abs().max().item() < 1e-4
    assert loading.resolve_source(str(out)).is_reward_model
    assert_full_model_folder(out, rm)

    # The merge runs in float32 whatever --dtype says; --dtype is what is saved.
    half = tmp_path / "rm-bf16"
    assert cli.main(["merge", str(rm), str(half), "--dtype", "bfloat16"]) == 0
    with safe_open(str(half / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118
    assert (expected - merged_logits(half, ids, reward=True)).abs().max().item() < 0.05

    # Its card walks merge -> reward adapter -> SFT adapter -> tiny:llama.
    data = ModelCard(card.render(out)).data
    assert data.pipeline_tag == "text-classification" and data.library_name == "transformers"
    assert data.base_model == "tiny:llama"
    assert {"merged", "reward-model", "sft"} <= set(data.tags)


def test_an_adapter_trained_on_a_4bit_base_is_refused(lora_sft, tmp_path, capsys):
    qlora = tmp_path / "qlora"
    shutil.copytree(lora_sft, qlora)
    config = yaml.safe_load((qlora / "config.hftune.yaml").read_text())
    (qlora / "config.hftune.yaml").write_text(yaml.safe_dump({**config, "load_in_4bit": True}))
    out = tmp_path / "merged"
    assert cli.main(["merge", str(qlora), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hftune: error:"), err
    assert "4-bit" in err[0] and "--from-full-precision" in err[0]
    assert not out.exists()

    # Asked explicitly, it merges into the unquantized base (the same weights, here: nothing was quantized).
    assert cli.main(["merge", str(qlora), str(out), "--from-full-precision"]) == 0
    assert artifacts.read_manifest(out)["metrics"]["from_full_precision"] is True


def test_stages_that_merge_a_qlora_adapter_into_full_precision_say_so(lora_sft, tmp_path, caplog):
    """The reward / RL stages and the eval load a QLoRA SFT adapter merged into the full-precision base (as
    `merge --from-full-precision`): allowed, but never silently."""
    from trl import ModelConfig

    qlora = tmp_path / "qlora"
    shutil.copytree(lora_sft, qlora)
    config = yaml.safe_load((qlora / "config.hftune.yaml").read_text())
    (qlora / "config.hftune.yaml").write_text(yaml.safe_dump({**config, "load_in_4bit": True}))
    with caplog.at_level("WARNING", logger="hftune.models.loading"):
        loading.load_reward_model(str(qlora), ModelConfig(dtype="float32"), for_training=True)
    assert "trained on a 4-bit base" in caplog.text and "approximation" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hftune.models.loading"):
        loading.load_reward_model(str(lora_sft), ModelConfig(dtype="float32"), for_training=True)
    assert "4-bit" not in caplog.text  # an adapter trained in full precision merges without a word


def test_merge_user_errors_exit_2_with_one_line(lora_sft, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(lora_sft, unfinished)
    (unfinished / "manifest.json").unlink()
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    (full / "manifest.json").write_text(json.dumps({"stage": "sft", "parents": []}))
    cases = [
        (["merge", str(unfinished), str(tmp_path / "o")], "no manifest.json"),
        (["merge", str(full), str(tmp_path / "o")], "not a LoRA adapter"),
        (["merge", str(lora_sft), str(lora_sft / "inside")], "outside"),
        (["merge", str(tmp_path / "missing"), str(tmp_path / "o")], "no such folder"),
    ]
    for argv, expected in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("hftune: error:") and expected in err[0], (argv, err)
    assert not (tmp_path / "o").exists()
