"""Strict configs: every problem reported at once, with its key, source and the closest valid name."""

from __future__ import annotations

import dataclasses

import pytest

from hftune.config import ConfigError, parse_overrides, strip_secrets
from hftune.stages import common, sft


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


BASE = "model_name_or_path: tiny:llama\ndata_recipe: tiny_alpaca\n"


def test_misspelt_key_names_it_and_suggests(tmp_path):
    path = write(tmp_path, BASE + "learnig_rate: 1.0e-4\n")
    with pytest.raises(ConfigError) as err:
        sft.parse(str(path))
    msg = str(err.value)
    assert str(path) in msg
    assert "`learnig_rate`" in msg and "did you mean `learning_rate`" in msg


def test_three_faults_reported_together(tmp_path):
    path = write(
        tmp_path,
        BASE + "learnig_rate: 1.0e-4\nnum_train_epochs: many\nload_in_4bit: true\nload_in_8bit: true\n",
    )
    with pytest.raises(ConfigError) as err:
        sft.parse(str(path))
    problems = err.value.problems
    assert len(problems) == 3, problems
    assert any("learnig_rate" in p for p in problems)
    assert any("num_train_epochs" in p and "expected float" in p for p in problems)
    assert any("load_in_4bit" in p and "load_in_8bit" in p for p in problems)


def test_flags_override_file_and_are_typed(tmp_path):
    path = write(tmp_path, BASE + "learning_rate: 1.0e-3\nlora_r: 4\n")
    cfg = sft.parse(str(path), ["--learning_rate", "2e-4", "--lora_r=16", "--gradient_checkpointing"])
    assert cfg.training.learning_rate == pytest.approx(2e-4)
    assert cfg.model.lora_r == 16
    assert cfg.training.gradient_checkpointing is True


def test_yaml_exponent_string_is_a_float(tmp_path):
    # PyYAML reads `1e-4` (no dot) as a string; a float field must still accept it.
    cfg = sft.parse(str(write(tmp_path, BASE + "learning_rate: 1e-4\n")))
    assert cfg.training.learning_rate == pytest.approx(1e-4)


def test_no_and_off_stay_strings(tmp_path):
    # YAML 1.1 would read `no` as False, making `save_strategy: no` a type error.
    cfg = sft.parse(str(write(tmp_path, BASE + "save_strategy: no\n")), ["--report_to", "none"])
    assert cfg.training.save_strategy == "no"
    cfg = sft.parse(str(write(tmp_path, BASE + "packing: false\n")), ["--save_strategy", "no"])
    assert cfg.training.packing is False


def test_unknown_flag_is_reported_with_its_source(tmp_path):
    with pytest.raises(ConfigError) as err:
        sft.parse(str(write(tmp_path, BASE)), ["--lora_rr", "8"])
    assert "`--lora_rr` (command line)" in str(err.value) and "lora_r" in str(err.value)


@pytest.mark.parametrize("key", ["hub_token", "token", "api_key", "openai_api_key", "hf_token"])
def test_secret_keys_refused_with_pointer_to_hf_token(tmp_path, key):
    with pytest.raises(ConfigError) as err:
        sft.parse(str(write(tmp_path, BASE + f"{key}: abc\n")))
    assert key in str(err.value) and "HF_TOKEN" in str(err.value)


def test_token_looking_value_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        sft.parse(str(write(tmp_path, BASE + "run_name: hf_" + "a" * 34 + "\n")))
    assert "run_name" in str(err.value)


def test_vocabulary_token_fields_are_not_secrets(tmp_path):
    # `eos_token` names a vocabulary token, not a credential: refused for what it does, not as a secret.
    with pytest.raises(ConfigError) as err:
        sft.parse(str(write(tmp_path, BASE + "eos_token: <|im_end|>\n")))
    assert "HF_TOKEN" not in str(err.value) and "chat template" in str(err.value)
    assert sft.parse(str(write(tmp_path, BASE + "max_length: 64\n"))).training.max_length == 64


def test_wrapped_packing_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        sft.parse(str(write(tmp_path, BASE + "packing: true\npacking_strategy: wrapped\n")))
    assert "attend to each other" in str(err.value)


def test_required_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        sft.parse(str(write(tmp_path, "learning_rate: 1.0e-3\n")))
    assert "model_name_or_path" in str(err.value) and "data_recipe" in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    from hftune.errors import UserError

    with pytest.raises(UserError, match="not found"):
        sft.parse(str(tmp_path / "nope.yaml"))
    with pytest.raises(UserError, match=r"cfg.yaml \(line \d+"):
        sft.parse(str(write(tmp_path, "a: 1\nb: [unclosed\n")))


def test_hftune_fields_never_clash_with_trl():
    from trl import ModelConfig, SFTConfig

    trl_names = {f.name for cls in (SFTConfig, ModelConfig) for f in dataclasses.fields(cls)}
    ours = {f.name for f in dataclasses.fields(sft.SFTExtras)}
    # The training keys hftune owns on purpose (`gradient_checkpointing: auto`, where TRL says always on).
    assert not (ours & trl_names) - common.OWNED_TRAINING_KEYS
    assert all(f.metadata.get("help") for f in dataclasses.fields(sft.SFTExtras))


def test_resolved_config_has_defaults_and_no_secrets(tmp_path, monkeypatch):
    token = "hf_" + "Z" * 34
    monkeypatch.setenv("HF_TOKEN", token)
    cfg = sft.parse(str(write(tmp_path, BASE + f"output_dir: {tmp_path}/out\n")))
    resolved = cfg.resolved()
    assert resolved["assistant_only_loss"] is True and resolved["use_peft"] is True
    assert resolved["learning_rate"] == cfg.training.learning_rate
    assert "hub_token" not in resolved and token not in repr(resolved)
    # The config hash ignores where the output goes, not what is computed.
    other = sft.parse(str(write(tmp_path, BASE + "output_dir: elsewhere\n")))
    assert other.config_hash() == cfg.config_hash()
    assert sft.parse(str(write(tmp_path, BASE + "lora_r: 3\n"))).config_hash() != cfg.config_hash()
    # Speed switches that compute the same are not part of what a run computes.
    assert sft.parse(str(write(tmp_path, BASE + "data_cache: false\n"))).config_hash() == cfg.config_hash()


def test_strip_secrets_redacts_live_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret-value-123")
    out = strip_secrets({"a": "x secret-value-123 y", "hub_token": "q", "nested": [{"api_key": 1}]})
    assert out == {"a": "x <redacted> y", "nested": [{}]}


def test_parse_overrides_bare_flag_and_equals():
    values, problems = parse_overrides(["--packing", "--lr=3", "stray"])
    assert values == {"packing": True, "lr": 3}
    assert problems and "stray" in problems[0]


@pytest.mark.parametrize("key", ["pad_token", "eos_token", "chat_template_path"])
def test_keys_that_would_change_the_tokenizer_are_refused(tmp_path, key):
    from hftune.stages import reward

    for stage in (sft, reward):
        with pytest.raises(ConfigError) as err:
            stage.parse(str(write(tmp_path, BASE)), [f"--{key}", "<|im_end|>"])
        assert f"`{key}`" in str(err.value) and "chat_template" in str(err.value)
