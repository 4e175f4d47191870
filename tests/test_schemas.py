"""More schemas, no Python needed: ShareGPT preferences, orca-style system/question pairs, OpenAI-style tool
chats and unpaired (KTO) preferences each train or prepare from a built-in recipe with no transform, preview,
and drop their bad rows under a reason that says what is wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import synthetic

from hftune.data import load_recipe, prepare_dataset
from hftune.data.converters import CONVERTERS
from hftune.data.formats import FORMATS
from hftune.data.preview import preview
from hftune.data.prompt_keys import prompt_key
from hftune.errors import UserError

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "data_recipes" / "fixtures"


def jsonl(path: Path, *rows: dict) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def bracketed(text: str) -> list[str]:
    body = text.split("\n--- example ", 1)[1]
    return re.findall(r"⟦(.*?)⟧", body, flags=re.S)


def refused_row(recipe: str, data_file: str) -> str:
    """The strict-mode message for the first bad row of `data_file` (it names the reason and the detail)."""
    with pytest.raises(UserError) as err:
        prepare_dataset(load_recipe(recipe), data_files=data_file, strict=True)
    return str(err.value)


# --- the two paired schemas train a reward model ----------------------------------------------------------


@pytest.mark.parametrize(
    ("recipe", "fixture"),
    [("tiny_sharegpt_preferences", "sharegpt_preferences.jsonl"), ("tiny_orca_pairs", "orca_pairs.jsonl")],
)
def test_paired_schemas_train_a_reward_model(recipe, fixture, tmp_path, tiny_llama):
    from hftune.stages import reward

    n = len((FIXTURES / fixture).read_text().splitlines())
    assert 40 <= n <= 200
    argv = ["--model_name_or_path", tiny_llama, "--output_dir", str(tmp_path / "rm"), "--data_recipe", recipe]
    result = reward.run(reward.parse(str(REPO / "configs/tiny/reward.yaml"), [*argv, "--max_steps", "3"]))
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    data = manifest["data"]
    assert data["recipe"] == recipe and data["dropped"] == {}
    assert data["n_train"] + data["n_eval"] == n  # one pair per row, every row kept
    assert data["n_eval"] > 0 and result.report["accuracy_before"] is not None


def test_sharegpt_preference_rows_keep_system_and_history():
    data = prepare_dataset(load_recipe("tiny_sharegpt_preferences"))
    source = synthetic.sharegpt_preference_rows(200, seed=11)
    row, pair = source[data.train_indices[0]], data.train[0]
    assert [t["content"] for t in pair["prompt"] if t["role"] != "system"] == [
        t["value"] for t in row["conversations"]
    ]
    assert pair["chosen"] == [{"role": "assistant", "content": row["chosen"]["value"]}]
    with_system = [i for i, r in enumerate(source) if r.get("system")]
    k = data.train_indices.index(next(i for i in with_system if i in data.train_indices))
    assert data.train[k]["prompt"][0] == {
        "role": "system",
        "content": source[data.train_indices[k]]["system"],
    }
    assert any(len(p["prompt"]) > 2 for p in data.train)  # multi-turn prompts


def test_sharegpt_preference_replies_may_be_a_turn_a_list_or_text(tmp_path):
    conversations = [{"from": "human", "value": "What is 2 + 2?"}]
    shapes = [
        ({"from": "gpt", "value": "2 + 2 = 4."}, {"from": "gpt", "value": "2 + 2 = 5."}),
        ([{"from": "gpt", "value": "2 + 2 = 4."}], [{"from": "gpt", "value": "2 + 2 = 5."}]),
        ("2 + 2 = 4.", "2 + 2 = 5."),
    ]
    rows = [{"conversations": conversations, "chosen": c, "rejected": r} for c, r in shapes]
    # The conversation's own system turn wins over the system column; a blank system column is none.
    own = [{"from": "system", "value": "Be brief."}, *conversations]
    rows += [
        {"conversations": own, "chosen": "4.", "rejected": "5.", "system": "Be long."},
        {"conversations": conversations, "chosen": "4.", "rejected": "5.", "system": "  "},
    ]
    data = prepare_dataset(
        load_recipe("tiny_sharegpt_preferences"), data_files=jsonl(tmp_path / "p.jsonl", *rows)
    )
    pairs = list(data.train)
    assert len(pairs) == 5 and pairs[0] == pairs[1] == pairs[2]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "What is 2 + 2?"}]
    assert (
        pairs[3]["prompt"][0] == {"role": "system", "content": "Be brief."} and len(pairs[3]["prompt"]) == 2
    )
    assert pairs[4]["prompt"] == [{"role": "user", "content": "What is 2 + 2?"}]


def test_orca_pairs_blank_system_means_none():
    data = prepare_dataset(load_recipe("tiny_orca_pairs"))
    source = synthetic.orca_pair_rows(200, seed=12)
    for i, pair in zip(data.train_indices, data.train, strict=True):
        row = source[i]
        expected = [{"role": "user", "content": row["question"]}]
        if row["system"]:
            expected.insert(0, {"role": "system", "content": row["system"]})
        assert pair["prompt"] == expected and pair["rejected"][0]["content"] == row["rejected"]
    assert any(not r["system"] for r in source) and any(r["system"] for r in source)


def test_bad_sharegpt_preference_rows_are_dropped_by_reason(tmp_path):
    human = {"from": "human", "value": "What is 2 + 2?"}
    gpt = {"from": "gpt", "value": "2 + 2 = 4."}
    path = jsonl(
        tmp_path / "bad.jsonl",
        {"conversations": [human], "chosen": gpt, "rejected": {"from": "gpt", "value": "5."}},
        {"conversations": [human, gpt], "chosen": gpt, "rejected": {"from": "gpt", "value": "5."}},
        {"conversations": [human], "chosen": {"from": "human", "value": "4."}, "rejected": "5."},
        {"conversations": [human], "chosen": [gpt, gpt], "rejected": "5."},
    )
    data = prepare_dataset(load_recipe("tiny_sharegpt_preferences"), data_files=path)
    assert data.dropped == {"no_user_turn": 1, "no_assistant_turn": 1, "malformed": 1}
    assert data.examples == {"no_user_turn": [1], "no_assistant_turn": [2], "malformed": [3]}
    only_bad = jsonl(
        tmp_path / "ends_with_gpt.jsonl", {"conversations": [human, gpt], "chosen": gpt, "rejected": "5."}
    )
    message = refused_row("tiny_sharegpt_preferences", only_bad)
    assert "no_user_turn" in message and "`conversations` must end with a human/user turn" in message
    assert "its last turn is assistant" in message


# --- tools ---------------------------------------------------------------------------------------------


def test_tool_chats_become_messages_with_a_tools_json_string():
    data = prepare_dataset(load_recipe("tiny_tool_chats"))
    source = synthetic.tool_chat_rows(synthetic.FIXTURE_SIZES["tool_chats"], seed=14)
    assert data.n_kept == len(source) and data.dropped == {}
    assert set(data.train.column_names) == {"messages", "tools"}
    for i, row in zip(data.train_indices, data.train, strict=True):
        tools = source[i]["tools"]
        # Both layouts of the source (a list, or a JSON string of one) give the same schemas, as a string.
        assert json.loads(row["tools"]) == (json.loads(tools) if isinstance(tools, str) else tools)
        for turn, written in zip(row["messages"], source[i]["messages"], strict=True):
            for call, raw in zip(turn["tool_calls"] or [], written.get("tool_calls") or [], strict=True):
                args = raw["function"]["arguments"]
                assert isinstance(call["function"]["arguments"], str)
                if isinstance(args, str):  # a JSON string reaches the model byte for byte
                    assert call["function"]["arguments"] == args
                else:
                    assert json.loads(call["function"]["arguments"]) == args


def test_rendered_tool_calls_carry_no_spurious_null_keys(chat_tokenizer):
    """Arrow unifies nested dicts across rows: tool schemas or call arguments stored as dicts would come back
    with every other row's keys set to null. Stored as JSON strings, what renders is what the data wrote."""
    data = prepare_dataset(load_recipe("tiny_tool_chats"))
    source = synthetic.tool_chat_rows(synthetic.FIXTURE_SIZES["tool_chats"], seed=14)
    n_calls = 0
    for i, row in zip(data.train_indices, data.train, strict=True):
        text = chat_tokenizer.apply_chat_template(
            row["messages"], tools=json.loads(row["tools"]), tokenize=False
        )
        assert "null" not in text and "None" not in text, text
        for turn in source[i]["messages"]:
            for call in turn.get("tool_calls") or []:
                args = call["function"]["arguments"]
                args = args if isinstance(args, str) else json.dumps(args)
                assert f'{{"name": "{call["function"]["name"]}", "arguments": {args}}}' in text
                n_calls += 1
        tools = source[i]["tools"]
        for tool in json.loads(tools) if isinstance(tools, str) else tools:
            assert json.dumps(tool) in text
    assert n_calls > 100


def test_tool_chats_train_with_sft_and_the_tool_calls_are_trained(tmp_path, tiny_llama):
    from hftune.stages import sft

    argv = ["--model_name_or_path", tiny_llama, "--output_dir", str(tmp_path / "sft"), "--max_steps", "2"]
    argv += ["--data_recipe", "tiny_tool_chats", "--max_length", "1024", "--max_samples", "32"]
    result = sft.run(sft.parse(str(REPO / "configs/tiny/sft.yaml"), argv))
    tokenizer = result.trainer.processing_class
    trained_calls = 0
    for example in result.trainer.train_dataset:
        # TRL's labels: -100 except where the assistant mask (the template's generation markers) says train.
        ids, labels = example["input_ids"], example["labels"]
        trained = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
        untrained = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab == -100])
        if "<tool_response>" in untrained:
            assert '<tool_call>\n{"name": "' in trained and '"arguments": {' in trained
            assert "<tool_response>" not in trained and "<tools>" not in trained
            trained_calls += 1
    assert trained_calls > 0
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    assert manifest["data"]["recipe"] == "tiny_tool_chats"


def test_tool_chat_order_and_blank_turns(tmp_path):
    tools = [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}]
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"function": {"name": "calc", "arguments": {}}}],
    }
    user, answer = {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4."}
    result = {"role": "tool", "content": "4"}
    path = jsonl(
        tmp_path / "t.jsonl",
        {"messages": [user, call, result, result, answer], "tools": tools},  # two results: fine
        {"messages": [user, answer], "tools": json.dumps(tools)},  # tools offered, none called
        {"messages": [user, call, result, answer]},  # tool turns without schemas: tools "null"
        {"messages": [user, answer], "tools": []},  # no tools at all: a plain conversation
        {"messages": [user, result, answer], "tools": tools},  # a result nobody asked for
        {"messages": [user, call, answer], "tools": tools},  # a call never answered
        {"messages": [user, {"role": "assistant", "content": ""}, result, answer]},  # blank, and no call
        {"messages": [user, call, {**result, "content": " "}, answer]},  # a blank result
        {"messages": [user, answer], "tools": "{not json"},
    )
    data = prepare_dataset(load_recipe("tiny_tool_chats"), data_files=path)
    assert data.dropped == {"not_alternating": 2, "empty_turn": 2, "malformed": 1}
    assert data.examples["not_alternating"] == [4, 5] and data.examples["malformed"] == [8]
    rows = list(data.train)
    assert [r["tools"] for r in rows[:3]] == [json.dumps(tools), json.dumps(tools), "null"]
    assert rows[3]["tools"] is None  # a plain conversation in the same file carries no tools
    assert rows[0]["messages"][1]["content"] == "" and rows[0]["messages"][1]["tool_calls"][0][
        "function"
    ] == {
        "name": "calc",
        "arguments": "{}",
    }
    orphan = jsonl(tmp_path / "orphan.jsonl", {"messages": [user, result, answer], "tools": tools})
    message = refused_row("tiny_tool_chats", orphan)
    assert (
        "not_alternating" in message and "a tool turn must answer an assistant turn's tool calls" in message
    )


def test_chat_formats_carry_tools_and_prompt_keys_ignore_them():
    turns = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "c"}}]},
        {"role": "tool", "content": "4"},
        {"role": "assistant", "content": "4."},
    ]
    unit = {"messages": turns, "tools": "[]"}
    assert FORMATS["conversational"].fn(unit) == {"messages": turns, "tools": "[]"}
    assert FORMATS["prompt_completion"].fn(unit) == {
        "prompt": turns[:-1],
        "completion": turns[-1:],
        "tools": "[]",
    }
    assert FORMATS["conversational"].fn(turns) == {"messages": turns}
    assert prompt_key(unit) == prompt_key(turns) == prompt_key([turns[0]])


def test_plain_messages_rows_are_unchanged_by_tool_support():
    data = prepare_dataset(load_recipe("tiny_ultrachat"))
    assert data.train.column_names == ["messages"]
    assert set(data.train[0]["messages"][0]) == {"role", "content"}
    assert CONVERTERS["messages"].optional == frozenset({"tools"})


# --- unpaired preferences (KTO layout) -------------------------------------------------------------------


def test_unpaired_fixture_prepares_with_boolean_labels():
    data = prepare_dataset(load_recipe("tiny_unpaired"), eval_fraction=0.1)
    source = synthetic.unpaired_rows(synthetic.FIXTURE_SIZES["unpaired"], seed=13)
    assert data.n_kept == len(source) == 200 and data.dropped == {} and data.n_pairs is None
    assert data.train.features["label"].dtype == "bool"
    for i, row in zip(data.train_indices, data.train, strict=True):
        assert row == {
            "prompt": source[i]["prompt"],
            "completion": source[i]["completion"],
            "label": source[i]["label"],
        }
    labels = [row["label"] for row in data.train]
    assert 0.3 < sum(labels) / len(labels) < 0.7


def test_unpaired_csv_labels_are_true_or_false_text(tmp_path):
    path = tmp_path / "kto.csv"
    path.write_text(
        "prompt,completion,label\n"
        "What is 2 + 2?,2 + 2 = 4.,true\n"
        "What is 3 + 3?,3 + 3 = 7.,False\n"
        "What is 4 + 4?,4 + 4 = 8.,TRUE\n"
        "What is 5 + 5?,5 + 5 = 10.,maybe\n"
        "What is 6 + 6?,6 + 6 = 12.,1\n"
        "What is 7 + 7?,,true\n"
    )
    data = prepare_dataset(load_recipe("tiny_unpaired"), data_files=str(path))
    assert [r["label"] for r in data.train] == [True, False, True]
    assert data.train[0] == {
        "prompt": [{"role": "user", "content": "What is 2 + 2?"}],
        "completion": [{"role": "assistant", "content": "2 + 2 = 4."}],
        "label": True,
    }
    assert data.dropped == {"malformed": 2, "missing_field": 1}
    message = refused_row("tiny_unpaired", str(path))
    assert "row 3" in message and "'maybe'" in message and "true or false" in message


def test_unpaired_bad_rows(tmp_path):
    prompt = [{"role": "user", "content": "What is 2 + 2?"}]
    path = jsonl(
        tmp_path / "u.jsonl",
        {"prompt": prompt, "completion": [{"role": "assistant", "content": "4."}], "label": "maybe"},
        {"prompt": prompt, "completion": "4.", "label": 1},
        {"prompt": [*prompt, {"role": "assistant", "content": "4."}], "completion": "4.", "label": True},
        {"prompt": prompt, "completion": " ", "label": False},
        {"prompt": prompt, "completion": [{"role": "user", "content": "4."}], "label": True},
        {"prompt": "What is 2 + 2?", "completion": "4.", "label": True},
    )
    data = prepare_dataset(load_recipe("tiny_unpaired"), data_files=path)
    assert len(data.train) == 1
    assert data.dropped == {"malformed": 2, "no_user_turn": 1, "empty_turn": 1, "no_assistant_turn": 1}
    assert data.examples["malformed"] == [0, 1]


def test_sft_and_reward_refuse_unpaired_data(tmp_path, tiny_llama):
    from hftune.stages import reward, sft

    argv = ["--model_name_or_path", tiny_llama, "--data_recipe", "tiny_unpaired"]
    with pytest.raises(UserError, match="format `unpaired_preference` is not SFT data"):
        sft.prepare(
            sft.parse(str(REPO / "configs/tiny/sft.yaml"), [*argv, "--output_dir", str(tmp_path / "s")])
        )
    with pytest.raises(UserError, match="format `unpaired_preference` is not preference data"):
        reward.prepare(
            reward.parse(str(REPO / "configs/tiny/reward.yaml"), [*argv, "--output_dir", str(tmp_path / "r")])
        )


# --- preview -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["tiny_sharegpt_preferences", "tiny_orca_pairs"])
def test_preview_paired_schemas(recipe, chat_tokenizer):
    out = preview(recipe, chat_tokenizer, n=2, color=False)
    spans = bracketed(out)
    assert len(spans) == 4 and all(s.endswith("<|im_end|>") for s in spans)
    assert "[chosen: " in out and "[rejected: " in out
    assert "-> 200 pairs" in out


def test_preview_tool_chats_marks_the_calls(chat_tokenizer):
    out = preview("tiny_tool_chats", chat_tokenizer, n=2, color=False)
    spans = bracketed(out)
    assert any(s.startswith("<tool_call>\n{") for s in spans)
    assert "<tools>" in out and "<tool_response>" in out
    assert not any("<tool_response>" in s or "<tools>" in s for s in spans)


def test_preview_unpaired_shows_label_and_marks_the_completion(chat_tokenizer):
    out = preview("tiny_unpaired", chat_tokenizer, n=3, color=False)
    data = prepare_dataset(load_recipe("tiny_unpaired"))
    assert bracketed(out) == [f"{row['completion'][0]['content']}<|im_end|>" for row in list(data.train)[:3]]
    labels = re.findall(r"\[label: (true|false) \((?:un)?desirable\)\]", out)
    assert labels == [str(row["label"]).lower() for row in list(data.train)[:3]]
    assert "kept 200 of 200 rows" in out
