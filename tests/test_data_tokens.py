"""SFT rows are tokenized once, by hftune, in TRL's layout: SFTTrainer trains on exactly the tokens and labels
it would have made itself, for every format hftune hands it, and skips its own tokenizing pass."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hftune.stages import sft

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "data_recipes/fixtures"
QWEN25 = str(Path(importlib.util.find_spec("trl").origin).parent / "chat_templates/qwen2_5.jinja")


def _recipe(tmp_path: Path, name: str, source: str, converter: str, fmt: str) -> str:
    path = tmp_path / f"{name}.yaml"
    recipe = f"source: {{path: {FIXTURES / source}}}\nconverter: {converter}\nformat: {fmt}\nstrict: false\n"
    path.write_text(recipe)
    return str(path)


def _prepared(tmp_path: Path, recipe: str, once: bool, *extra: str):
    argv = [
        "--data_recipe", recipe, "--output_dir", str(tmp_path / f"out-{once}"), "--max_samples", "60",
        "--max_length", "96", "--tokenize_once", str(once).lower(), "--data_cache", "false", *extra,
    ]  # fmt: skip
    return sft.prepare(sft.parse(str(REPO / "configs/tiny/sft.yaml"), argv))


FORMATS = {
    "conversational": ("ultrachat.jsonl", "messages", "conversational", ()),
    "with tools": ("tool_chats.jsonl", "messages", "conversational", ("--max_length", "1024")),
    "prompt-completion": ("ultrachat.jsonl", "messages", "prompt_completion", ()),
    "plain text": ("corpus.txt", "text", "language_modeling", ()),
    "truncated replies": ("ultrachat.jsonl", "messages", "conversational", ("--too_long", "truncate")),
    # A template without generation markers, which TRL swaps for its patched training version.
    "Qwen2.5's template": ("ultrachat.jsonl", "messages", "conversational", ("--chat_template", QWEN25)),
}


@pytest.mark.parametrize("case", list(FORMATS))
def test_trl_trains_on_the_same_tokens_and_labels_as_when_it_tokenizes_itself(case, tmp_path, tiny_llama):
    source, converter, fmt, extra = FORMATS[case]
    recipe = _recipe(tmp_path, "r", source, converter, fmt)
    ours = _prepared(tmp_path, recipe, True, *extra)
    theirs = _prepared(tmp_path, recipe, False, *extra)
    assert "input_ids" in ours.data.train.column_names  # handed over tokenized
    assert "input_ids" not in theirs.data.train.column_names
    assert ours.data.fingerprint == theirs.data.fingerprint  # the same rows
    assert ours.data.token_lengths == theirs.data.token_lengths  # measured the same
    for split in ("train_dataset", "eval_dataset"):
        a, b = getattr(ours.trainer, split), getattr(theirs.trainer, split)
        assert a["input_ids"] == b["input_ids"], split
        assert a["labels"] == b["labels"], split
        if case != "plain text":  # assistant-only loss: some tokens of every row are not trained
            assert all(-100 in labels for labels in a["labels"])
    if case == "truncated replies":
        assert ours.data.truncated and ours.data.truncated == theirs.data.truncated
    assert ours.trainer.args.assistant_only_loss == theirs.trainer.args.assistant_only_loss


def test_a_rerun_reads_the_tokens_from_the_data_cache(tmp_path, tiny_llama, monkeypatch):
    monkeypatch.setenv("HFTUNE_CACHE", str(tmp_path / "cache"))
    from hftune.data import prepare

    calls = []
    real = prepare.sft_columns
    monkeypatch.setattr(prepare, "sft_columns", lambda *a, **k: calls.append(1) or real(*a, **k))
    argv = ["--model_name_or_path", tiny_llama, "--output_dir", str(tmp_path / "out"), "--max_samples", "40"]
    cfg = lambda: sft.parse(str(REPO / "configs/tiny/sft.yaml"), argv)  # noqa: E731
    first = sft.prepare(cfg())
    again = sft.prepare(cfg())
    assert calls == [1], "the second run tokenized again"
    assert again.trainer.train_dataset["labels"] == first.trainer.train_dataset["labels"]
