"""`hftune data preview`: trained tokens marked exactly where TRL's assistant mask puts them, length stats."""

from __future__ import annotations

import re
from pathlib import Path

import synthetic

from hftune.data import load_recipe, prepare_dataset
from hftune.data.preview import GREEN, NO_MASK_NOTE, RESET, preview

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "data_recipes" / "fixtures"


def bracketed(text: str) -> list[str]:
    """The marked spans of the examples (the legend line shows the marker too, so skip the header)."""
    body = text.split("\n--- example ", 1)[1]
    return re.findall(r"⟦(.*?)⟧", body, flags=re.S)


def test_assistant_tokens_are_marked_and_user_tokens_are_not(chat_tokenizer):
    out = preview("tiny_ultrachat", chat_tokenizer, n=2, color=False)
    spans = bracketed(out)
    for row in synthetic.ultrachat_rows(2, seed=3):
        for message in row["messages"]:
            if message["role"] == "assistant":
                # The end-of-turn token is trained too: the model must learn to stop.
                assert f"{message['content']}<|im_end|>" in spans
            else:
                assert message["content"] in out
                assert not any(message["content"] in span for span in spans)
    assert "<|im_start|>assistant\n⟦" in out  # the role header is prompt, not target
    assert out.count("--- example ") == 2


def test_color_marks_the_same_spans_with_ansi(chat_tokenizer):
    out = preview("tiny_alpaca", chat_tokenizer, n=1, color=True)
    first = synthetic.alpaca_rows(1, seed=1)[0]
    assert f"{GREEN}{first['output']}<|im_end|>{RESET}" in out
    assert f"{GREEN}{first['instruction']}" not in out and "⟦" not in out


def test_length_stats_count_rows_that_max_length_drops(chat_tokenizer):
    out = preview(
        "tiny_alpaca",
        chat_tokenizer,
        n=1,
        max_length=256,
        color=False,
        data_files=str(FIXTURES / "bad_rows.jsonl"),
    )
    lengths = prepare_dataset(
        load_recipe("tiny_alpaca"), tokenizer=chat_tokenizer, data_files=str(FIXTURES / "bad_rows.jsonl")
    ).token_lengths
    assert len(lengths) == synthetic.BAD_ROWS_GOOD + 2
    values = sorted(lengths)
    p95 = values[int(0.95 * len(values) + 0.999) - 1]
    assert f"token lengths over {len(values)} rows:" in out
    assert f"p95 {p95}, max {values[-1]}" in out and values[-1] > 256
    assert "2 rows exceed max_length 256 (dropped as too_long)" in out
    assert "kept 40 of 48 rows; dropped 8: empty_turn 3, missing_field 3, too_long 2" in out


def test_prompt_completion_marks_only_the_final_answer(chat_tokenizer, tmp_path):
    recipe = tmp_path / "pc.yaml"
    recipe.write_text(
        f"source: {{path: {FIXTURES / 'ultrachat.jsonl'}}}\nconverter: messages\nformat: prompt_completion\n"
    )
    out = preview(str(recipe), chat_tokenizer, n=1, color=False)
    messages = synthetic.ultrachat_rows(1, seed=3)[0]["messages"]
    assert bracketed(out) == [f"{messages[-1]['content']}<|im_end|>"]
    assert "max_length not set" in out


def test_template_without_generation_markers_is_explained_not_a_crash():
    from hftune.models.tiny import default_corpus, train_tokenizer

    tokenizer = train_tokenizer(default_corpus(), 1024)
    for marker in ("{% generation %}", "{% endgeneration %}"):
        tokenizer.chat_template = tokenizer.chat_template.replace(marker, "")
    out = preview("tiny_alpaca", tokenizer, n=1, color=False)
    assert NO_MASK_NOTE in out and "{% generation %}" in out
    assert "trained tokens unknown" in out and "⟦" not in out
    assert synthetic.alpaca_rows(1, seed=1)[0]["output"] in out
    assert "kept 400 of 400 rows" in out


def test_preference_pairs_render_as_the_reward_model_scores_them(chat_tokenizer):
    from hftune.models.scoring import encode

    out = preview("tiny_ranked", chat_tokenizer, n=1, color=False)
    body = out.split("\n--- example ", 1)[1]
    spans = bracketed(out)
    # Only the two replies are marked, each ending at its end-of-turn token (where scores are read).
    assert len(spans) == 2 and all(s.endswith("<|im_end|>") for s in spans)
    assert "What is" not in "".join(spans)
    assert "dropped 8 pairs: tie 8" in out
    # The chosen sequence shown is exactly what reward training encodes.
    pair = prepare_dataset(load_recipe("tiny_ranked"), tokenizer=chat_tokenizer).train[0]
    ids = encode(chat_tokenizer, pair["prompt"], pair["chosen"][0]["content"])
    assert f"[chosen: {len(ids)} tokens]" in body


def test_prompt_only_rows_show_the_generation_prompt(chat_tokenizer, tmp_path):
    recipe = tmp_path / "prompts.yaml"
    recipe.write_text(
        f"source: {{path: {FIXTURES / 'ultrachat.jsonl'}}}\nformat: prompt_only\nconverter: messages\n"
    )
    out = preview(str(recipe), chat_tokenizer, n=1, color=False)
    assert "nothing here is trained on" in out
    example = out.split("\n--- example ", 1)[1].split("\n\n")[0]
    assert example.rstrip().endswith("<|im_start|>assistant"), example
