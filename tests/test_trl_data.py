"""Data from the wider ecosystem: TRL CLI configs as they are (`env:`, `dataset_name`), TRL's standard
formats detected, mixtures of recipes, and SFT rows over `max_length` truncated instead of dropped."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from bad_input import refused, run_cli, write

from hftune.data import load_recipe, prepare_dataset
from hftune.data.detect import dataset_recipe
from hftune.data.mixture import data_parts, prepare_parts
from hftune.errors import UserError
from hftune.stages import sft

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "data_recipes" / "fixtures"


def jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def hh(prompt: str, reply: str) -> str:
    return f"\n\nHuman: {prompt}\n\nAssistant: {reply}"


def chats(n: int) -> list[dict]:
    """Rows in TRL's conversational format, each prompt distinct."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ]
        }
        for i in range(n)
    ]


# A config in the style of TRL's examples/cli_configs/example_config.yaml (`trl sft --config ...`), with
# local paths in place of the Hub ids: TRL's keys only, the `env:` block, values spelled as TRL spells them.
TRL_CLI_CONFIG = """\
# This is an example configuration file of TRL CLI, you can use it for
# SFT like that: `trl sft --config config.yaml --output_dir test-sft`
env:
    CUDA_VISIBLE_DEVICES: 0
    HFTUNE_TEST_FROM_ENV_BLOCK: set by the config
model_name_or_path:
    {model}
dataset_name:
    {data}
report_to:
    none
learning_rate:
    0.005
lr_scheduler_type:
    cosine
max_steps:
    6
per_device_train_batch_size:
    4
logging_steps:
    2
"""


def test_a_trl_cli_config_trains_unchanged(tmp_path, tiny_llama, capsys, monkeypatch, caplog):
    for key in ("CUDA_VISIBLE_DEVICES", "HFTUNE_TEST_FROM_ENV_BLOCK"):
        monkeypatch.delenv(key, raising=False)  # restored after the test: the env block sets them
    data = jsonl(tmp_path / "chats.jsonl", chats(48))
    config = write(tmp_path / "config.yaml", TRL_CLI_CONFIG.format(model=tiny_llama, data=data))
    with caplog.at_level(logging.INFO, logger="hftune.data"):
        code, _, err = run_cli(["sft", "--config", config, "--output_dir", "test-sft"], tmp_path, capsys)
    assert code == 0, err
    assert os.environ["HFTUNE_TEST_FROM_ENV_BLOCK"] == "set by the config"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "detected TRL format conversational (messages)" in caplog.text
    out_dir = tmp_path / "test-sft"
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["data"]["format"] == "conversational" and manifest["data"]["dropped"] == {}
    assert manifest["data"]["n_train"] + manifest["data"]["n_eval"] == 48
    saved = (out_dir / "config.hftune.yaml").read_text()
    assert "dataset_name:" in saved and "HFTUNE_TEST_FROM_ENV_BLOCK" in saved
    history = json.loads((out_dir / "log_history.json").read_text())
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < losses[0]


def test_every_script_argument_is_a_config_key(tmp_path):
    from trl import ScriptArguments

    cfg = sft.parse(
        None,
        [
            "--model_name_or_path", "tiny:llama", "--dataset_name", "org/data", "--dataset_config", "en",
            "--dataset_train_split", "train_sft", "--dataset_test_split", "test_sft", "--ignore_bias_buffers",
        ],
    )  # fmt: skip
    script = cfg.script
    assert isinstance(script, ScriptArguments)
    assert (script.dataset_name, script.dataset_config, script.dataset_train_split) == (
        "org/data",
        "en",
        "train_sft",
    )
    assert script.dataset_test_split == "test_sft" and script.ignore_bias_buffers is True
    (part,) = data_parts(cfg.hftune, cfg.script)
    assert part.recipe.source.hub == "org/data" and part.recipe.source.config == "en"
    assert part.recipe.source.split == "train_sft"


@pytest.mark.parametrize(
    ("env", "mentions"),
    [
        ("env: [1, 2]", ["`env`", "mapping"]),
        ("env: {HF_TOKEN: abc}", ["`env.HF_TOKEN`", "secrets"]),
        ("env: {MY_VAR: {nested: 1}}", ["`env.MY_VAR`", "text or a number"]),
        ("env: {'9BAD': x}", ["9BAD", "environment variable name"]),
    ],
)
def test_a_bad_env_block_is_refused_and_sets_nothing(tmp_path, capsys, env, mentions):
    config = write(tmp_path / "c.yaml", f"model_name_or_path: tiny:llama\ndata_recipe: tiny_alpaca\n{env}\n")
    before = dict(os.environ)
    refused(["sft", "--config", config], tmp_path, capsys, mentions=["c.yaml", *mentions])
    assert dict(os.environ) == before


def test_streaming_is_refused_outside_pretraining(tmp_path, capsys):
    config = write(tmp_path / "c.yaml", "model_name_or_path: tiny:llama\ndata_recipe: tiny_alpaca\n")
    refused(
        ["sft", "--config", config, "--dataset_streaming", "true"],
        tmp_path,
        capsys,
        mentions=["`dataset_streaming`", "hftune pretrain"],
    )


# --- TRL's standard formats, detected --------------------------------------------------------------

LAYOUTS = [
    (
        "prompt-completion texts",
        [{"prompt": f"Double {i}.", "completion": f"{2 * i}"} for i in range(6)],
        "prompt_completion",
        "prompt-completion (prompt, completion)",
    ),
    (
        "prompt-completion turns",
        [
            {
                "prompt": [{"role": "user", "content": f"Double {i}."}],
                "completion": [{"role": "assistant", "content": f"{2 * i}"}],
            }
            for i in range(6)
        ],
        "prompt_completion",
        "prompt-completion (prompt, completion)",
    ),
    (
        "explicit-prompt preference",
        [{"prompt": f"Double {i}.", "chosen": f"{2 * i}", "rejected": f"{3 * i + 1}"} for i in range(6)],
        "preference",
        "preference with an explicit prompt",
    ),
    (
        "implicit-prompt preference",
        [
            {
                "chosen": [user(f"Double {i}."), bot(f"{2 * i}")],
                "rejected": [user(f"Double {i}."), bot(f"{3 * i + 1}")],
            }
            for i in range(6)
        ],
        "implicit_preference",
        "preference with an implicit prompt",
    ),
    (
        "hh-rlhf transcripts",
        [
            {"chosen": hh(f"Double {i}.", f"{2 * i}"), "rejected": hh(f"Double {i}.", f"{3 * i + 1}")}
            for i in range(6)
        ],
        "preference",
        "hh-rlhf transcripts",
    ),
    ("text", [{"text": f"Document {i}."} for i in range(6)], "language_modeling", "language modeling"),
]


@pytest.mark.parametrize(
    ("rows", "format_", "logged"), [case[1:] for case in LAYOUTS], ids=[c[0] for c in LAYOUTS]
)
def test_trl_layouts_are_detected_checked_and_logged(tmp_path, chat_tokenizer, caplog, rows, format_, logged):
    path = jsonl(tmp_path / "data.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="hftune.data"):
        data = prepare_dataset(dataset_recipe(str(path)), tokenizer=chat_tokenizer, max_length=128)
    assert data.format == format_
    assert f"detected TRL format {logged}" in caplog.text
    assert len(data.train) == 6 and not data.dropped


def test_detected_rows_are_checked_like_a_recipes(tmp_path):
    rows = [*chats(4), {"messages": [user("hi"), bot("  ")]}]
    data = prepare_dataset(dataset_recipe(str(jsonl(tmp_path / "d.jsonl", rows))))
    assert data.dropped == {"empty_turn": 1}


def test_a_stage_reads_a_layout_in_the_format_it_trains_on(tmp_path):
    # RL trains on prompts: a conversational dataset gives its prompts (the turns before the last reply).
    path = jsonl(tmp_path / "d.jsonl", chats(5))
    data = prepare_dataset(dataset_recipe(str(path)), formats=("prompt_only",))
    assert data.format == "prompt_only"
    assert data.train[0] == {"prompt": [{"role": "user", "content": "What is 0 plus 0?"}]}
    with pytest.raises(UserError, match=r"preference with an explicit prompt.*trains on conversational"):
        rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}]
        prepare_dataset(dataset_recipe(str(jsonl(tmp_path / "p.jsonl", rows))), formats=("conversational",))


def test_unknown_layouts_say_what_trl_formats_look_like(tmp_path):
    with pytest.raises(UserError, match="none of TRL's standard formats"):
        prepare_dataset(dataset_recipe(str(jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}]))))
    with pytest.raises(UserError, match="texts with no prompt"):
        prepare_dataset(dataset_recipe(str(jsonl(tmp_path / "e.jsonl", [{"chosen": "b", "rejected": "c"}]))))


def test_dataset_name_can_be_a_folder_of_split_files(tmp_path):
    folder = tmp_path / "data"
    jsonl(folder / "train.jsonl", chats(6))
    jsonl(folder / "test.jsonl", chats(2))
    assert len(prepare_dataset(dataset_recipe(str(folder))).train) == 6
    assert len(prepare_dataset(dataset_recipe(str(folder), split="test")).train) == 2
    with pytest.raises(UserError, match="no data file for split `validation`"):
        prepare_dataset(dataset_recipe(str(folder), split="validation"))


def test_dataset_name_with_a_recipe_reads_that_data_with_the_recipe(tmp_path):
    rows = [{"instruction": f"Double {i}.", "input": "", "output": f"{2 * i}"} for i in range(5)]
    path = jsonl(tmp_path / "mine.jsonl", rows)
    cfg = sft.parse(
        None, ["--model_name_or_path", "tiny:llama", "--data_recipe", "alpaca", "--dataset_name", str(path)]
    )
    (part,) = data_parts(cfg.hftune, cfg.script)
    assert part.recipe.converter == "alpaca" and part.recipe.source.path == str(path)
    assert len(prepare_dataset(part.recipe).train) == 5


# --- mixtures -------------------------------------------------------------------------------------


def test_a_mixture_trains_on_both_recipes_and_reports_each(tmp_path, tiny_llama, capsys, caplog):
    config = write(
        tmp_path / "mix.yaml",
        f"""\
model_name_or_path: {tiny_llama}
data_recipe:
  - {{recipe: tiny_alpaca, max_samples: 40}}
  - {{recipe: tiny_dolly, max_samples: 30, weight: 2.0}}
eval_fraction: 0.1
max_steps: 2
per_device_train_batch_size: 4
output_dir: out
""",
    )
    with caplog.at_level(logging.INFO, logger="hftune.data"):
        code, _, err = run_cli(["sft", "--config", config], tmp_path, capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "out" / "manifest.json").read_text())["data"]
    parts = {part["recipe"]: part for part in data["sources"]}
    assert set(parts) == {"tiny_alpaca", "tiny_dolly"}
    alpaca, dolly = parts["tiny_alpaca"], parts["tiny_dolly"]
    assert alpaca["n_source_rows"] == 40 and dolly["n_source_rows"] == 30
    assert alpaca["n_train"] + alpaca["n_eval"] + sum(alpaca["dropped"].values()) == 40
    # weight 2: every training row of dolly twice
    assert dolly["n_train"] == 2 * (30 - dolly["n_eval"] - sum(dolly["dropped"].values()))
    assert data["n_train"] == alpaca["n_train"] + dolly["n_train"]
    assert data["recipe"] == "tiny_alpaca + tiny_dolly"
    assert (
        "mixture part tiny_alpaca (weight 1)" in caplog.text
        and "mixture part tiny_dolly (weight 2)" in caplog.text
    )


def extras(data_recipe, max_samples=None) -> SimpleNamespace:
    return SimpleNamespace(data_recipe=data_recipe, data_files=None, max_samples=max_samples)


def test_mixture_weights_and_held_out_rows():
    parts = data_parts(extras([{"recipe": "tiny_alpaca", "max_samples": 60, "weight": 0.5}]))
    whole = prepare_dataset(load_recipe("tiny_alpaca"), max_rows=60, eval_fraction=0.1)
    half = prepare_parts(parts, eval_fraction=0.1)
    assert len(half.train) == round(len(whole.train) / 2)
    assert set(half.train_keys) <= set(whole.train_keys)
    assert half.eval_keys == whole.eval_keys  # held-out rows are never weighted
    assert prepare_parts(parts, eval_fraction=0.1).train.to_list() == half.train.to_list()  # seeded


@pytest.mark.parametrize(
    ("value", "mentions"),
    [
        ("[]", ["`data_recipe`", "non-empty list"]),
        ("[{recipe: tiny_alpaca, wieght: 2}]", ["`data_recipe[0]`.wieght", "weight"]),
        ("[{recipe: tiny_alpaca, weight: -1}]", ["`data_recipe[0]`.weight", "positive"]),
        ("[tiny_alpaca, {max_samples: 3}]", ["`data_recipe[1]`.recipe", "required"]),
        ("[tiny_alpaca, {recipe: tiny_alpaca, max_samples: 0}]", ["`data_recipe[1]`.max_samples"]),
    ],
)
def test_a_bad_mixture_is_refused(tmp_path, capsys, value, mentions):
    config = write(tmp_path / "c.yaml", f"model_name_or_path: tiny:llama\ndata_recipe: {value}\n")
    refused(["sft", "--config", config], tmp_path, capsys, mentions=["c.yaml", *mentions])


def test_a_mixture_of_formats_is_refused():
    extras = type(
        "E", (), {"data_recipe": ["tiny_alpaca", "tiny_preferences"], "data_files": None, "max_samples": 20}
    )()
    with pytest.raises(UserError, match="different TRL formats"):
        prepare_parts(data_parts(extras))


# --- too_long: truncate ---------------------------------------------------------------------------


def test_truncate_cuts_the_reply_never_the_prompt(tmp_path, chat_tokenizer):
    long_reply = " ".join(f"word{i}" for i in range(300))
    rows = [
        {"messages": [user("Say many words."), bot(long_reply)]},
        {"messages": [user(" ".join(["prompt"] * 300)), bot("ok")]},
        *chats(3),
    ]
    recipe = dataset_recipe(str(jsonl(tmp_path / "d.jsonl", rows)))
    dropped = prepare_dataset(recipe, tokenizer=chat_tokenizer, max_length=64)
    assert dropped.dropped == {"too_long": 2} and dropped.truncated == []
    cut = prepare_dataset(recipe, tokenizer=chat_tokenizer, max_length=64, too_long="truncate")
    assert cut.dropped == {"too_long": 1}  # the row whose prompt alone is too long
    assert cut.truncated == [0]
    (row,) = [
        r
        for r in cut.train.to_list() + (cut.eval.to_list() if cut.eval else [])
        if r["messages"][0]["content"] == "Say many words."
    ]
    reply = row["messages"][-1]["content"]
    assert long_reply.startswith(reply) and 0 < len(reply) < len(long_reply)
    ids = chat_tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"]
    assert len(ids) <= 64
    assert (
        ids[-2:]
        == chat_tokenizer.apply_chat_template(rows[2]["messages"], tokenize=True, return_dict=True)[
            "input_ids"
        ][-2:]
    )
    assert "truncated 1 to max_length" in cut.summary()


def test_sft_truncate_option_reaches_the_manifest(tmp_path, tiny_llama):
    long_reply = " ".join(f"word{i}" for i in range(200))
    rows = [*chats(16), {"messages": [user("Talk."), bot(long_reply)]}]
    path = jsonl(tmp_path / "d.jsonl", rows)
    argv = ["--model_name_or_path", tiny_llama, "--dataset_name", str(path), "--max_length", "48"]
    argv += ["--too_long", "truncate", "--max_steps", "1", "--output_dir", str(tmp_path / "out")]
    argv += ["--eval_fraction", "0"]
    result = sft.run(sft.parse(None, argv))
    assert result.manifest["data"]["truncated"] == 1 and result.manifest["data"]["dropped"] == {}


def test_ignore_bias_buffers_hides_boolean_buffers_from_ddp():
    import torch

    from hftune.stages import common

    model = torch.nn.Module()
    model.register_buffer("mask", torch.ones(2, dtype=torch.bool))
    model.register_buffer("scale", torch.ones(2))
    argv = ["--model_name_or_path", "tiny:llama", "--data_recipe", "tiny_alpaca"]
    common.ignore_bias_buffers(model, sft.parse(None, argv))
    assert not hasattr(model, "_ddp_params_and_buffers_to_ignore")
    common.ignore_bias_buffers(model, sft.parse(None, [*argv, "--ignore_bias_buffers"]))
    assert model._ddp_params_and_buffers_to_ignore == ["mask"]


def test_an_output_never_replaces_the_folder_dataset_name_reads(tmp_path, capsys):
    jsonl(tmp_path / "data" / "train.jsonl", chats(4))
    jsonl(tmp_path / "mine" / "part.jsonl", chats(4))
    config = write(tmp_path / "c.yaml", "model_name_or_path: tiny:llama\n")
    refused(
        ["sft", "--config", config, "--dataset_name", "data", "--output_dir", "data", "--overwrite"],
        tmp_path,
        capsys,
        mentions=["output_dir data", "an input of this run"],
    )
    mixture = "[{recipe: tiny_alpaca, data_files: mine/part.jsonl}]"
    refused(
        ["sft", "--config", config, "--data_recipe", mixture, "--output_dir", "mine", "--overwrite"],
        tmp_path,
        capsys,
        mentions=["mine/part.jsonl", "an input of this run"],
    )


# --- hftune data preview on all of the above --------------------------------------------------------


def test_preview_detects_a_data_file_in_a_trl_format(tmp_path, tiny_llama, capsys):
    data = jsonl(tmp_path / "chats.jsonl", chats(5))
    code, out, err = run_cli(["data", "preview", data, "--model", tiny_llama, "--n", "1"], tmp_path, capsys)
    assert code == 0, err
    assert "-> conversational rows via the messages converter" in out
    assert "⟦0 plus 0 is 0.<|im_end|>⟧" in out
    assert "kept 5 of 5 rows" in out


def test_preview_of_a_config_shows_its_mixture_and_truncation(tmp_path, tiny_llama, capsys):
    long_reply = " ".join(f"word{i}" for i in range(200))
    data = jsonl(tmp_path / "chats.jsonl", [*chats(6), {"messages": [user("Talk."), bot(long_reply)]}])
    config = write(
        tmp_path / "sft.yaml",
        f"model_name_or_path: {tiny_llama}\nmax_length: 48\ntoo_long: truncate\neval_fraction: 0\n"
        f"data_recipe:\n  - {{recipe: tiny_alpaca, max_samples: 10, weight: 2}}\n"
        f"  - {{recipe: {write(tmp_path / 'mine.yaml', MINE.format(data=data))}}}\n",
    )
    code, out, err = run_cli(["data", "preview", "--config", config, "--n", "1"], tmp_path, capsys)
    assert code == 0, err
    assert "recipe tiny_alpaca + mine" in out
    assert "part tiny_alpaca (weight 2): 20 training rows, 0 held out, of 10 source rows" in out
    assert "part mine (weight 1): 7 training rows, 0 held out, of 7 source rows" in out
    assert "1 rows exceed max_length 48 (their final reply is truncated to fit)" in out
    assert "kept 17 of 17 rows -> 27 training rows by weight" in out and "truncated 1 to max_length" in out


MINE = "source: {{path: {data}}}\nformat: conversational\nconverter: messages\n"


def test_preview_of_a_pretraining_config_counts_blocks_not_drops(tmp_path, tiny_llama, capsys):
    long = " ".join(f"token{i}" for i in range(300))
    corpus = write(tmp_path / "corpus.txt", f"{long}\n{long} again\n")
    config = write(
        tmp_path / "pretrain.yaml",
        f"model_name_or_path: {tiny_llama}\ndata_recipe: tiny_corpus\ndata_files: {corpus}\nmax_length: 32\n"
        "eval_fraction: 0\n",
    )
    code, out, err = run_cli(["data", "preview", "--config", config, "--stage", "pretrain"], tmp_path, capsys)
    assert code == 0, err
    from hftune.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama)
    total = sum(len(tokenizer(doc)["input_ids"]) + 1 for doc in (long, f"{long} again"))
    full, rest = divmod(total, 32)
    assert f"train: 2 documents, {total:,} tokens (each document + EOS) -> {full} blocks of 32" in out
    assert (f"and one of {rest}" in out) == bool(rest)
    assert "0 dropped for length" in out and "kept 2 of 2 rows" in out
