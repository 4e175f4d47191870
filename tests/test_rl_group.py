"""RLOO / GRPO (`stages/ppo.py`, `_group_trainer`) on TRL's trainers: what hftune sets on the policy before
TRL runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hftune.models import loading
from hftune.stages import ppo as rl

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_rollouts_end_at_the_end_of_turn_token_only(chain, tmp_path, monkeypatch, algorithm):
    # A base model's generation config often names a second eos (<|endoftext|> beside the chat template's
    # <|im_end|>); TRL >= 1.14.2 would end completions there too, where the reward's missing-EOS check, the
    # held-out check and the eval end them at the end-of-turn token only.
    real = loading.load_model

    def load_with_a_second_eos(*args, **kwargs):
        model = real(*args, **kwargs)
        eos = model.generation_config.eos_token_id
        model.generation_config.eos_token_id = [eos, eos + 1]
        return model

    monkeypatch.setattr(loading, "load_model", load_with_a_second_eos)
    argv = ["--model_name_or_path", chain["sft"], "--reward_model_path", chain["rm"]]
    argv += ["--output_dir", str(tmp_path / algorithm), "--algorithm", algorithm, "--num_generations", "4"]
    p = rl.prepare(rl.parse(str(REPO / "configs/tiny/ppo.yaml"), argv))
    eos = p.tokenizer.eos_token_id
    assert p.trainer.model.generation_config.eos_token_id == eos
    # What TRL stops generation at and masks after (TRL >= 1.14.2; older ones read only the tokenizer's).
    assert getattr(p.trainer, "eos_token_ids", [eos]) == [eos]


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_num_generations_reaches_trls_own_check(tmp_path, algorithm):
    # `num_generations: 4` with a batch of 4: TRL's GRPOConfig checks its generation batch against its own
    # default (8) while it is built, and refused this before hftune set the value; RLOO accepted it.
    config = Path(__file__).resolve().parent.parent / "configs/tiny/ppo.yaml"
    argv = ["--algorithm", algorithm, "--num_generations", "4", "--per_device_train_batch_size", "4"]
    cfg = rl.parse(str(config), [*argv, "--output_dir", str(tmp_path / "out")])
    assert cfg.training.num_generations == cfg.hftune.num_generations == 4
    assert rl.parse(str(config), ["--algorithm", algorithm]).training.num_generations == 8  # hftune's default
