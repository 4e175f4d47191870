"""More schemas, no Python needed: ShareGPT preferences, orca-style system/question pairs, OpenAI-style tool
chats and unpaired (KTO) preferences each train or prepare from a built-in recipe with no transform, preview,
and drop their bad rows under a reason that says what is wrong."""

from __future__ import annotations

import json
import logging
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


# --- real schemas as their datasets write them (issue 31) -----------------------------------------------


def ultrafeedback_rows(n: int) -> list[dict]:
    """HuggingFaceH4/ultrafeedback_binarized's columns: a prompt text, chosen/rejected conversations, and the
    chosen conversation again as `messages` (for SFT), with scores and an id."""
    rows = []
    for i in range(n):
        user = {"role": "user", "content": f"What is {i} plus {i}?"}
        good, bad = f"{i} plus {i} is {2 * i}.", f"{i} plus {i} is {2 * i + 1}."
        rows.append(
            {
                "prompt": user["content"],
                "prompt_id": f"{i:08x}",
                "chosen": [user, {"role": "assistant", "content": good}],
                "rejected": [user, {"role": "assistant", "content": bad}],
                "messages": [user, {"role": "assistant", "content": good}],
                "score_chosen": 8.0,
                "score_rejected": 3.0,
            }
        )
    return rows


def stage_config(path: Path, model: str, data: str, out: Path, **keys) -> str:
    """A stage config in TRL's CLI style: the model, `dataset_name` and a one-step run."""
    values = {"model_name_or_path": model, "dataset_name": data, "output_dir": str(out), "max_steps": 1}
    values |= {"report_to": "none", "gradient_checkpointing": False, "lora_r": 4, "lora_alpha": 8, **keys}
    path.write_text("".join(f"{key}: {value}\n" for key, value in values.items()))
    return str(path)


@pytest.mark.parametrize(
    ("formats", "converter", "format_name"),
    [
        (("preference", "implicit_preference"), "pairwise", "preference"),
        (("conversational", "prompt_completion", "language_modeling"), "messages", "conversational"),
        (("prompt_only",), "messages", "prompt_only"),
        (None, "messages", "conversational"),
    ],
)
def test_ultrafeedback_is_read_in_the_layout_the_stage_trains_on(tmp_path, formats, converter, format_name):
    from hftune.data.detect import dataset_recipe

    data = prepare_dataset(
        dataset_recipe(jsonl(tmp_path / "uf.jsonl", *ultrafeedback_rows(3))), formats=formats
    )
    assert (data.converter, data.format) == (converter, format_name)
    if format_name == "preference":
        assert data.train[0]["chosen"] == [{"role": "assistant", "content": "0 plus 0 is 0."}]
        assert data.train[0]["prompt"] == [{"role": "user", "content": "What is 0 plus 0?"}]


def test_the_stages_name_the_formats_detection_reads_for_them():
    from hftune.stages import registry
    from hftune.stages.common import stage_formats

    assert stage_formats("reward") == stage_formats("dpo") == ("preference", "implicit_preference")
    assert stage_formats("kto")[-1] == "unpaired_preference"
    assert stage_formats("sft") == ("conversational", "prompt_completion", "language_modeling")
    assert stage_formats("ppo") == stage_formats("rloo") == stage_formats("grpo") == ("prompt_only",)
    assert stage_formats("eval") is None
    assert {"dpo", "kto", "orpo", "simpo", "rloo", "grpo"} <= set(registry.DATA_STAGES)


def test_ultrafeedback_via_dataset_name_trains_reward_and_dpo(chain, tmp_path):
    from hftune.stages import dpo, reward

    data = jsonl(tmp_path / "ultrafeedback.jsonl", *ultrafeedback_rows(8))
    config = stage_config(tmp_path / "rm.yaml", chain["sft"], data, tmp_path / "rm", eval_fraction=0.25)
    rm = reward.run(reward.parse(config, ["--per_device_train_batch_size", "2"]))
    assert json.loads((rm.output_dir / "manifest.json").read_text())["data"]["format"] == "preference"
    config = stage_config(tmp_path / "dpo.yaml", chain["sft"], data, tmp_path / "dpo")
    po = dpo.run(dpo.parse(config, ["--per_device_train_batch_size", "2"]))
    manifest = json.loads((po.output_dir / "manifest.json").read_text())
    assert manifest["stage"] == "dpo" and manifest["data"]["format"] == "preference"


def prompt_rows(n: int) -> list[dict]:
    """Prompt-only rows as TRL documents them for PPO / RLOO / GRPO: a text, or a list of turns."""
    rows: list[dict] = [{"prompt": f"What is {i} plus {i}?"} for i in range(n - 1)]
    return [
        *rows,
        {"prompt": [{"role": "system", "content": "Add."}, {"role": "user", "content": "1 plus 1?"}]},
    ]


@pytest.mark.parametrize("algorithm", ["ppo", "rloo", "grpo"])
def test_prompt_only_data_trains_rl_with_no_transform(chain, tmp_path, algorithm):
    from hftune.stages import ppo as rl

    data = jsonl(tmp_path / "prompts.jsonl", *prompt_rows(8))
    keys = dict(reward_model_path=chain["rm"], algorithm=algorithm, response_length=8, num_generations=2)
    keys |= dict(per_device_train_batch_size=4, heldout_every=100, max_kl=1000.0, eval_fraction=0.0)
    config = stage_config(tmp_path / "rl.yaml", chain["sft"], data, tmp_path / "rl", **keys)
    result = rl.run(rl.parse(config, []))
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    assert manifest["stage"] == algorithm
    assert manifest["data"]["format"] == "prompt_only" and manifest["data"]["dropped"] == {}


def test_prompt_only_rows_read_by_a_recipe_and_refused_by_sft(tmp_path):
    from hftune.data.detect import dataset_recipe

    jsonl(tmp_path / "questions.jsonl", *({"question": f"What is {i}?", "id": i} for i in range(3)))
    recipe = tmp_path / "questions.yaml"
    recipe.write_text(
        "source: {path: questions.jsonl}\nformat: prompt_only\nconverter: prompt_only\n"
        "mapping: {prompt: question}\n"
    )
    data = prepare_dataset(str(recipe))
    assert data.dropped == {} and data.train[1]["prompt"] == [{"role": "user", "content": "What is 1?"}]
    # A prompt is not a conversation to train on, and the recipe cannot say otherwise.
    recipe.write_text(
        "source: {path: questions.jsonl}\nconverter: prompt_only\nmapping: {prompt: question}\n"
    )
    with pytest.raises(UserError, match="fits: prompt_only"):
        load_recipe(str(recipe))
    prompts = dataset_recipe(jsonl(tmp_path / "p.jsonl", *prompt_rows(3)))
    with pytest.raises(UserError, match=r"is prompt-only .* data; this stage trains on conversational"):
        prepare_dataset(prompts, formats=("conversational", "prompt_completion", "language_modeling"))
    # A prompt must hand over to the model with a user turn.
    bad = jsonl(tmp_path / "bad.jsonl", {"prompt": [{"role": "user", "content": "a"}, bot("b")]})
    with pytest.raises(UserError, match="no_user_turn"):
        prepare_dataset(dataset_recipe(bad), formats=("prompt_only",))


def test_kto_rows_are_not_read_as_prompt_completion_for_sft(tmp_path):
    from hftune.data.detect import dataset_recipe

    rows = [{"prompt": "a?", "completion": "wrong", "label": False}]
    with pytest.raises(UserError, match="is unpaired preference"):
        prepare_dataset(
            dataset_recipe(jsonl(tmp_path / "kto.jsonl", *rows)),
            formats=("conversational", "prompt_completion", "language_modeling"),
        )


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def lf_alpaca_rows(n: int) -> list[dict]:
    """LLaMA-Factory's alpaca schema: instruction / input / output plus `system` and `history`."""
    return [
        {
            "instruction": f"And {i} more?",
            "input": "",
            "output": f"Then it is {10 + i}.",
            "system": "You add numbers.",
            "history": [["What is 5 plus 5?", "It is 10."], [f"Remember {i}.", f"Noted: {i}."]],
        }
        for i in range(n)
    ]


def test_llama_factory_alpaca_system_and_history_become_turns(tmp_path):
    data = prepare_dataset("alpaca", data_files=jsonl(tmp_path / "lf.jsonl", *lf_alpaca_rows(2)))
    assert data.train[1]["messages"] == [
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "What is 5 plus 5?"},
        bot("It is 10."),
        {"role": "user", "content": "Remember 1."},
        bot("Noted: 1."),
        {"role": "user", "content": "And 1 more?"},
        bot("Then it is 11."),
    ]
    bad = [{"instruction": "a", "input": "", "output": "b", "history": [["only the question"]]}]
    bad += [{"instruction": "a", "input": "", "output": "b", "history": "not a list"}]
    bad += [{"instruction": "a", "input": "", "output": "b", "history": [["", "blank question"]]}]
    with pytest.raises(UserError, match=r"malformed 2, empty_turn 1.*`history` item 0 is not a \[user"):
        prepare_dataset("alpaca", data_files=jsonl(tmp_path / "bad.jsonl", *bad))


def test_llama_factory_alpaca_with_history_trains_multi_turn_sft(tmp_path, tiny_llama):
    from hftune.stages import sft

    argv = ["--model_name_or_path", tiny_llama, "--output_dir", str(tmp_path / "sft"), "--max_steps", "1"]
    argv += ["--data_recipe", "alpaca", "--max_samples", "8", "--per_device_train_batch_size", "4"]
    config = REPO / "configs/tiny/sft.yaml"
    data = jsonl(tmp_path / "lf.jsonl", *lf_alpaca_rows(8))
    result = sft.run(sft.parse(str(config), [*argv, "--data_files", data]))
    tokenizer = result.trainer.processing_class
    for example in result.trainer.train_dataset:
        ids, labels = example["input_ids"], example["labels"]
        text = tokenizer.decode(ids)
        trained = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
        # The history and the system turn reach the model; only the assistant's turns are trained.
        assert "You add numbers." in text and "What is 5 plus 5?" in text and "Remember" in text
        assert trained.startswith("It is 10.") and "Noted: " in trained and "Then it is 1" in trained
        assert "What is" not in trained and "You add" not in trained and "Remember" not in trained


def test_openai_weight_0_turns_are_not_trained(tmp_path):
    from hftune.data.detect import dataset_recipe

    turns = [
        {"role": "user", "content": "hi"},
        {**bot("bad"), "weight": 0},
        {"role": "user", "content": "again"},
    ]
    rows = [{"messages": [*turns, {**bot("good"), "weight": 1}]}, {"messages": [turns[0], bot("fine")]}]
    data = prepare_dataset(dataset_recipe(jsonl(tmp_path / "openai.jsonl", *rows)))
    assert data.dropped == {"turn_weight_0": 1} and data.train_indices == [1]
    with pytest.raises(UserError, match="turn 1: the assistant turn has `weight: 0`"):
        prepare_dataset(dataset_recipe(jsonl(tmp_path / "w0.jsonl", rows[0])))
    odd = [{"messages": [turns[0], {**bot("x"), "weight": 0.5}]}]
    with pytest.raises(UserError, match="OpenAI's per-turn weight is 0 or 1"):
        prepare_dataset(dataset_recipe(jsonl(tmp_path / "odd.jsonl", *odd)))


def test_a_sharegpt_pair_given_to_pairwise_names_sharegpt_preference(tmp_path):
    sharegpt = {"conversations": [{"from": "human", "value": "q"}], "rejected": {"from": "gpt", "value": "b"}}
    rows = [{**sharegpt, "chosen": {"from": "gpt", "value": "a"}}, {**sharegpt, "chosen": [{"from": "gpt"}]}]
    recipe = tmp_path / "pairs.yaml"
    recipe.write_text("source: {path: pairs.jsonl}\nformat: preference\nconverter: pairwise\n")
    jsonl(tmp_path / "pairs.jsonl", *rows)
    with pytest.raises(UserError, match=r"malformed 2.*read it with `converter: sharegpt_preference`"):
        prepare_dataset(str(recipe))


def test_unread_columns_are_logged_and_previewed(tmp_path, caplog, tiny_llama):
    from hftune.data.sources import unread_columns
    from hftune.stages.preview import preview_recipe

    data = jsonl(tmp_path / "uf.jsonl", *ultrafeedback_rows(3))
    with caplog.at_level(logging.INFO, logger="hftune.data"):
        prepare_dataset("alpaca", data_files=jsonl(tmp_path / "lf.jsonl", {**lf_alpaca_rows(1)[0], "id": 7}))
    assert "columns ignored (the `alpaca` converter does not read them): id" in caplog.text
    assert unread_columns(load_recipe("alpaca"), ["instruction", "output", "history"]) == []
    out = preview_recipe(data, tiny_llama, n=1)
    assert "columns ignored in " in out and "prompt, prompt_id, chosen, rejected, score_chosen" in out


@pytest.mark.parametrize(
    ("stage", "rows", "mentions"),
    [
        ("sft", prompt_rows(3), ["prompt-only (prompt) data", "conversational, prompt_completion"]),
        (
            "reward",
            [{"prompt": "a?", "completion": "b", "label": True}],
            ["unpaired preference", "preference"],
        ),
        (
            "sft",
            [{"messages": [{"role": "user", "content": "a"}, {**bot("b"), "weight": 0}]}],
            ["all 1 rows were dropped", "turn_weight_0", "`weight: 0`"],
        ),
    ],
)
def test_data_a_stage_cannot_train_on_is_refused(tmp_path, capsys, tiny_llama, stage, rows, mentions):
    from bad_input import refused

    data = jsonl(tmp_path / "data.jsonl", *rows)
    config = stage_config(tmp_path / "stage.yaml", tiny_llama, data, tmp_path / "out")
    refused([stage, "--config", config], tmp_path, capsys, mentions=[data, *mentions])


@pytest.mark.parametrize(("stage", "shown"), [("dpo", "-> preference rows"), ("kto", "-> preference rows")])
def test_preview_a_preference_stages_config(tmp_path, capsys, tiny_llama, stage, shown):
    from bad_input import run_cli

    data = jsonl(tmp_path / "uf.jsonl", *ultrafeedback_rows(4))
    config = stage_config(tmp_path / "po.yaml", tiny_llama, data, tmp_path / "out")
    code, out, err = run_cli(["data", "preview", "--config", config, "--stage", stage], tmp_path, capsys)
    assert code == 0, err
    assert shown in out and "[chosen: " in out and "columns ignored in " in out
