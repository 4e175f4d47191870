"""`hftune pretrain`: a base model from scratch (its own tokenizer, random weights) learns the corpus, and
continued pretraining starts from an existing model; plain-text recipes only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hftune.errors import UserError
from hftune.models.tokenizer import load_tokenizer
from hftune.stages import pretrain

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs/tiny/pretrain.yaml")


@pytest.mark.integration  # trains a model from scratch
def test_pretrain_from_scratch_trains_a_tokenizer_and_lowers_the_loss(tmp_path):
    out = tmp_path / "pt"
    result = pretrain.run(
        pretrain.parse(CONFIG, ["--output_dir", str(out), "--max_steps", "60", "--init_vocab_size", "512"])
    )
    m = result.metrics
    assert m["eval_loss"] < m["eval_loss_before"] - 1.0, m
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "pretrain"
    assert manifest["parents"] == [{"role": "init", "from_scratch": "llama"}]
    assert not (tmp_path / "pt.work").exists(), "the initial weights go with the work folder"
    tok = load_tokenizer(str(out))
    assert len(tok) <= 512 + 8 and tok.eos_token == "<|im_end|>" and tok.pad_token != tok.eos_token
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()


def test_continued_pretraining_starts_from_a_model(tmp_path, tiny_llama):
    cfg = pretrain.parse(
        CONFIG,
        [
            *("--init_architecture", "null", "--model_name_or_path", tiny_llama),
            *("--output_dir", str(tmp_path / "cpt"), "--max_steps", "5"),
        ],
    )
    result = pretrain.run(cfg)
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    assert manifest["parents"][0]["name_or_path"] == tiny_llama


def test_pretrain_refuses_chat_data_and_mixed_init(tmp_path):
    with pytest.raises(UserError, match="plain"):
        pretrain.parse(CONFIG, ["--data_recipe", "tiny_alpaca"])
    with pytest.raises(UserError, match="choose one"):
        pretrain.parse(CONFIG, ["--model_name_or_path", "tiny:llama"])
