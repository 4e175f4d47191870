"""Gradient checkpointing only where the memory needs it: a config that leaves `gradient_checkpointing` unset
(`auto`) trains without it where the stage's memory estimate without it fits 80% of the memory a process
trains in, and with it where it does not; an explicit true / false is always honoured. The parsed and saved
config keep `auto` (so a saved config parses back, hashes the same, and resumes), the trainer gets the
decision, and the plan's memory line and the stage's log say which and why."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from hftune.config import ConfigError
from hftune.stages import common, dpo, memory, pretrain, reward, sft
from hftune.stages.rl import config as rl_config

REPO = Path(__file__).resolve().parent.parent
SFT = str(REPO / "configs/tiny/sft.yaml")
AUTO = ["--gradient_checkpointing", "auto"]  # the shipped tiny configs set false themselves
GIB = 1024**3


def test_on_only_where_the_estimate_without_it_exceeds_the_share():
    share = memory.CHECKPOINTING_SHARE
    assert share == 0.8
    over = memory.decide_checkpointing(0.81 * 10 * GIB, 10 * GIB, "the memory of the GPU (test)")
    assert over.on and over.describe().startswith("gradient checkpointing on (needed: 8.10 GiB")
    fits = memory.decide_checkpointing(0.79 * 10 * GIB, 10 * GIB, "the host memory available")
    assert not fits.on
    assert fits.describe() == (
        "gradient checkpointing off (not needed: 7.90 GiB without it fits 80% of 10.00 GiB, the host memory "
        "available)"
    )
    assert memory.decide_checkpointing(1.0, None, "the host memory available").on  # unknown: the safe side


@pytest.mark.parametrize("parse", [sft.parse, pretrain.parse, reward.parse, dpo.parse, rl_config.parse])
def test_every_training_stage_leaves_it_auto_unless_set(parse):
    """hftune owns the key (TRL's own default is always on): unset it is `auto`, in the parsed config and
    the saved one, and a saved config parses back to the same config (what a resume compares)."""
    name = parse.__module__.split(".")[-1]
    shipped = {"sft": "sft", "pretrain": "pretrain", "reward": "reward", "dpo": "dpo", "config": "ppo"}[name]
    cfg = parse(str(REPO / "configs/tiny" / f"{shipped}.yaml"), AUTO)
    assert cfg.hftune.gradient_checkpointing == "auto"
    assert memory.requested_checkpointing(cfg) is None
    saved = cfg.saved()
    assert saved["gradient_checkpointing"] == "auto" and "activation_checkpointing" not in saved
    again = parse(None, [], values=yaml.safe_load(yaml.safe_dump(saved)))
    assert again.resolved() == cfg.resolved() and again.saved() == saved


def test_explicit_values_are_honoured_and_the_two_names_are_one_setting():
    assert memory.requested_checkpointing(sft.parse(SFT, ["--gradient_checkpointing", "true"])) is True
    assert memory.requested_checkpointing(sft.parse(SFT)) is False  # the tiny config's own `false`
    # transformers' newer name, where a config sets it instead.
    newer = sft.parse(SFT, [*AUTO, "--activation_checkpointing", "true"])
    assert memory.requested_checkpointing(newer) is True
    with pytest.raises(ConfigError, match="are one setting"):
        sft.parse(SFT, ["--activation_checkpointing", "true"])  # beside the config's `false`
    with pytest.raises(ConfigError, match="expected bool or one of 'auto'"):
        sft.parse(SFT, ["--gradient_checkpointing", "sometimes"])


def test_the_estimate_decides_for_the_device_and_describe_says_so(tiny_llama):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_llama)
    cfg = sft.parse(SFT, AUTO)
    roomy = memory.estimate("sft", cfg, config, device=(64 * GIB, "the GPU's (test)"))
    assert roomy.checkpointing == memory.Checkpointing(
        False, f"not needed: {memory._size(roomy.total)} without it fits 80% of 64.00 GiB, the GPU's (test)"
    )
    assert roomy.describe().endswith(f"; {roomy.checkpointing.describe()})")
    tight = memory.estimate("sft", cfg, config, device=(roomy.total, "the host memory available"))
    assert tight.checkpointing.on and "needed: " in tight.describe()
    assert tight.activations == roomy.activations * 2 / 34  # only the layer inputs are kept
    explicit = memory.estimate("sft", sft.parse(SFT, ["--gradient_checkpointing", "true"]), config)
    assert explicit.checkpointing == memory.Checkpointing(True, "set in the config")
    assert "gradient checkpointing on (set in the config)" in explicit.describe()
    assert (
        "gradient checkpointing off (set in the config)"
        in memory.estimate("sft", sft.parse(SFT), config).describe()
    )


@pytest.mark.slow(20)
@pytest.mark.parametrize("short", [False, True], ids=["this machine", "1 KiB of memory"])
def test_an_unset_key_trains_as_the_estimate_decides_and_the_saved_config_keeps_auto(
    short, tiny_llama, tmp_path, monkeypatch, caplog
):
    """The tiny model trains without checkpointing on this machine (CPU or GPU), with it where the memory is
    short; the model the trainer trained says so, the log says why, and config.hftune.yaml keeps `auto`
    (parsing back to the config that ran) with a comment saying how it ran."""
    if short:
        monkeypatch.setattr(memory, "device_memory", lambda: (1024.0, "the host memory available"))
    out = tmp_path / "out"
    flags = [*AUTO, "--model_name_or_path", tiny_llama, "--max_samples", "32", "--max_steps", "2"]
    cfg = sft.parse(SFT, [*flags, "--output_dir", str(out)])
    parsed = cfg.resolved()
    with caplog.at_level(logging.INFO, logger="hftune.stages.common"):
        result = sft.run(cfg)
    ran = "on" if short else "off"
    args = result.trainer.args
    assert args.gradient_checkpointing is short and args.activation_checkpointing is short
    assert result.trainer.model.is_gradient_checkpointing is short  # what the Trainer turned on, or not
    assert f"gradient checkpointing {ran} ({'needed' if short else 'not needed'}: " in caplog.text
    text = (out / "config.hftune.yaml").read_text()
    assert f"# gradient_checkpointing: auto ran {ran} here" in text
    assert yaml.safe_load(text) == cfg.saved() and cfg.resolved() == parsed  # the run changed no setting
    assert sft.parse(str(out / "config.hftune.yaml")).resolved() == parsed  # `auto`, not the decision


def test_an_explicit_false_stays_false_however_short_the_memory(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda: (1024.0, "the host memory available"))
    cfg = sft.parse(SFT, ["--output_dir", str(tmp_path / "out")])
    assert common.gradient_checkpointing(cfg, tiny_llama) is False


def test_a_config_the_estimate_cannot_read_falls_back_on(tmp_path, caplog):
    cfg = sft.parse(SFT, AUTO)
    with caplog.at_level(logging.INFO, logger="hftune.stages.common"):
        assert common.gradient_checkpointing(cfg, str(tmp_path / "missing")) is True
    assert "no memory estimate" in caplog.text


def test_the_plan_states_it_for_each_training_stage(capsys, monkeypatch):
    from hftune import pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipeline.run(str(REPO / "configs/qwen2.5-7b/pipeline.yaml"), dry_run=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if "memory: ~" in line]
    assert len(lines) == 3 and all(
        line.endswith("; gradient checkpointing on (set in the config))") for line in lines
    )


def test_help_states_the_rule():
    from hftune.cli import _stage_help

    text = " ".join(_stage_help(sft, "sft").split())
    assert (
        "gradient_checkpointing: `auto`: on only where the stage's memory estimate without it exceeds 80%"
        in text
    )
    assert "--gradient_checkpointing (bool or one of 'auto', default 'auto')" in text
