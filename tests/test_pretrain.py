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


def test_split_numbers_gives_a_number_the_same_tokens_wherever_it_stands():
    """Byte-level BPE alone merges a number with the space before it, so "172" after a space and at the start
    of a reply are different tokens; `init_split_numbers` cuts numbers from the text (groups of up to three
    digits) first, so both are the same token and the text still decodes to itself."""
    from hftune.models.tiny import default_corpus, train_tokenizer

    lines = default_corpus() + ["Which is larger, 172 or 92?", "172 is larger than 92."] * 50
    text = "Which is larger, 172 or 92?\n172 is larger than 92. 12345"
    plain, split = train_tokenizer(lines, 1024), train_tokenizer(lines, 1024, split_numbers=True)

    def pieces(tok, s):
        return tok.convert_ids_to_tokens(tok(s, add_special_tokens=False)["input_ids"])

    assert pieces(plain, " 172") != ["Ġ", *pieces(plain, "172")]  # merged with its space
    assert pieces(split, " 172") == ["Ġ", "172"]
    tokens = pieces(split, text)
    assert tokens.count("172") == 2 and tokens.count("92") == 2 and not any("Ġ1" in t for t in tokens)
    assert "123" in tokens and "45" in tokens  # groups of at most three digits
    assert split.decode(split(text, add_special_tokens=False)["input_ids"]) == text
