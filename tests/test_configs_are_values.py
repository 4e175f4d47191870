"""A parsed config is a value: no stage changes it while it trains (trainers get copies, writing to the work
folder), the config.hftune.yaml saved beside each artifact is the config as parsed, and parsing that file back
gives the same config. The manifest names the stage (for `hftune ppo` and `hftune dpo`, the algorithm)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hftune.stages import registry

REPO = Path(__file__).resolve().parent.parent
SHORT = ["--max_steps", "2", "--save_steps", "1"]  # a checkpoint too: the trainer writes to its work folder


def _runs(chain: dict[str, str], tiny_llama: str) -> dict[str, tuple[str, str, list[str]]]:
    """stage name -> (command, config file, flags): one short run each, on the tiny chain."""
    sft, rm = chain["sft"], chain["rm"]
    return {
        "sft": ("sft", "sft.yaml", ["--model_name_or_path", tiny_llama, "--max_samples", "32"]),
        "pretrain": ("pretrain", "pretrain.yaml", ["--max_samples", "64"]),
        "reward": ("reward", "reward.yaml", ["--model_name_or_path", sft]),
        "dpo": ("dpo", "dpo.yaml", ["--model_name_or_path", sft]),
        "ppo": ("ppo", "ppo.yaml", ["--model_name_or_path", sft, "--reward_model_path", rm]),
        "grpo": (
            "ppo",
            "ppo.yaml",
            ["--algorithm", "grpo", "--model_name_or_path", sft, "--reward_model_path", rm],
        ),
    }


@pytest.mark.slow(40)
@pytest.mark.parametrize("name", ["sft", "pretrain", "reward", "dpo", "ppo", "grpo"])
def test_a_stage_trains_without_changing_its_config_and_saves_it_as_parsed(name, chain, tiny_llama, tmp_path):
    command, config, flags = _runs(chain, tiny_llama)[name]
    module = registry.load(command)
    out = tmp_path / name
    cfg = module.parse(str(REPO / "configs/tiny" / config), [*flags, *SHORT, "--output_dir", str(out)])
    assert cfg.stage == name
    parsed = cfg.resolved()

    module.run(cfg)

    assert cfg.resolved() == parsed  # nothing the run did changed the config it was given
    saved = out / "config.hftune.yaml"
    assert yaml.safe_load(saved.read_text()) == cfg.saved()
    assert module.parse(str(saved)).resolved() == parsed  # a saved config parses back to itself
    assert json.loads((out / "manifest.json").read_text())["stage"] == name
    assert not list(out.glob("checkpoint-*"))  # checkpoints went to the work folder, gone with it


def test_a_saved_config_run_by_another_stage_is_refused_naming_the_stage(tmp_path):
    from hftune.config import ConfigError
    from hftune.stages import sft

    saved = tmp_path / "config.hftune.yaml"
    saved.write_text("stage: reward\nmodel_name_or_path: tiny:llama\ndata_recipe: tiny_chat\n")
    with pytest.raises(ConfigError, match="`stage`: a config saved by the 'reward' stage, not sft"):
        sft.parse(str(saved))


def test_the_saved_config_keeps_tokens_as_set_not_transformers_placeholders():
    from hftune.stages import sft

    resolved = sft.parse(str(REPO / "configs/tiny/sft.yaml")).resolved()
    assert resolved["pad_token"] is None and resolved["eos_token"] is None  # not "<PAD_TOKEN>"


def test_each_keys_value_bounds_live_in_one_place():
    # `learning_rate: 0` and `max_steps: 0` are refused by the same table (config.RANGE_RULES), with the same
    # wording, whichever stage reads them; a stage's own checks hold only rules across keys.
    from hftune.config import RANGE_RULES

    sources = {p: p.read_text() for p in (REPO / "hftune").rglob("*.py") if p.name != "config.py"}
    for key in RANGE_RULES:
        elsewhere = [str(p.relative_to(REPO)) for p, text in sources.items() if f"`{key}`: must be" in text]
        assert not elsewhere, f"`{key}`'s bounds are also checked in {elsewhere}"
