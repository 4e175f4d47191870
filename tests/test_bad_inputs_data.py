"""Bad data files and recipes: each is refused with exit 2 and one message that names the file and the row,
line or column, with no traceback and nothing written (harness: tests/bad_input.py). And the other half of
"never corrupt a user's data": text reaches the model exactly as the file wrote it (`007` is not 7.0).

Most cases run `hftune data preview` (the data path of every stage, without training); two run `hftune sft`
to show a data problem stops it before any weights load and before it writes anything.
"""

from __future__ import annotations

import json

import pytest
from bad_input import REPO, refused, write

from hftune.data import load_recipe, prepare_dataset

SFT = str(REPO / "configs/tiny/sft.yaml")
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
GOOD = {"instruction": "What is 2 + 2?", "output": "4"}


@pytest.fixture(scope="module")
def tokenizer_dir(chat_tokenizer, tmp_path_factory) -> str:
    """The tiny models' tokenizer saved as a folder: `--model` for preview without building a model."""
    folder = tmp_path_factory.mktemp("tokenizer")
    chat_tokenizer.save_pretrained(folder)
    return str(folder)


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def recipe(converter: str, fmt: str = "conversational", strict: bool = True, **extra: str) -> str:
    """A recipe YAML whose source is replaced by --data_files in these tests."""
    lines = [
        "source: {path: unused.jsonl}",
        f"format: {fmt}",
        f"converter: {converter}",
        f"strict: {str(strict).lower()}",
    ]
    return "\n".join(lines + [f"{k}: {v}" for k, v in extra.items()]) + "\n"


ALPACA = recipe("alpaca")
MESSAGES = recipe("messages")
TEXT = recipe("text", "language_modeling")
PAIRWISE = recipe("pairwise", "preference")


def turns(*pairs: tuple[str, str]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in pairs]}


# name -> (files to write under the run's folder, recipe, data file, extra args, what the message must name).
# A recipe that is a file name was written among the files; anything else is a built-in recipe.
CASES = {
    # --- the file itself: encoding, emptiness, where it is, what kind it is ---------------------------------
    "latin-1 jsonl": (
        {"data.jsonl": (jsonl(GOOD) + '{"instruction": "café", "output": "x"}\n').encode("latin-1")},
        "tiny_alpaca",
        "data.jsonl",
        [],
        ["data.jsonl", "not UTF-8", "line 2"],
    ),
    "latin-1 csv": (
        {"data.csv": "instruction,output\nhi,ok\ncafé,x\n".encode("latin-1")},
        "tiny_alpaca",
        "data.csv",
        [],
        ["data.csv", "not UTF-8", "line 3"],
    ),
    "latin-1 txt": (
        {"corpus.txt": "hello\ncafé\n".encode("latin-1")},
        "tiny_corpus",
        "corpus.txt",
        [],
        ["corpus.txt", "not UTF-8", "line 2"],
    ),
    "utf-16 jsonl": (
        {"data.jsonl": jsonl(GOOD).encode("utf-16")},
        "tiny_alpaca",
        "data.jsonl",
        [],
        ["data.jsonl", "not UTF-8", "line 1"],
    ),
    "binary file named .jsonl": (
        {"data.jsonl": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8"},
        "tiny_alpaca",
        "data.jsonl",
        [],
        ["data.jsonl", "not UTF-8"],
    ),
    "empty jsonl": ({"data.jsonl": ""}, "tiny_alpaca", "data.jsonl", [], ["data.jsonl", "is empty"]),
    "blank-lines-only jsonl": (
        {"data.jsonl": "\n  \n\n"},
        "tiny_alpaca",
        "data.jsonl",
        [],
        ["data.jsonl", "is empty"],
    ),
    "empty json": ({"data.json": ""}, "tiny_alpaca", "data.json", [], ["data.json", "is empty"]),
    "empty json array": ({"data.json": "[]\n"}, "tiny_alpaca", "data.json", [], ["data.json", "has no rows"]),
    "empty csv": ({"data.csv": ""}, "tiny_alpaca", "data.csv", [], ["data.csv", "is empty"]),
    "header-only csv": (
        {"data.csv": "instruction,output\n"},
        "tiny_alpaca",
        "data.csv",
        [],
        ["data.csv", "has no rows"],
    ),
    "empty txt": ({"corpus.txt": ""}, "tiny_corpus", "corpus.txt", [], ["corpus.txt", "is empty"]),
    "missing file": ({}, "tiny_alpaca", "nope.jsonl", [], ["nope.jsonl", "not found"]),
    "a folder named like a data file": (
        {"data.jsonl/part-0.jsonl": jsonl(GOOD)},
        "tiny_alpaca",
        "data.jsonl",
        [],
        ["data.jsonl", "is a folder"],
    ),
    "unsupported extension": (
        {"data.xml": "<rows/>"},
        "tiny_alpaca",
        "data.xml",
        [],
        ["data.xml", "unsupported type `.xml`"],
    ),
    "corrupt parquet": (
        {"data.parquet": b"PAR1 this is not parquet"},
        "tiny_alpaca",
        "data.parquet",
        [],
        ["data.parquet", "parquet"],
    ),
    "empty parquet": ({"data.parquet": b""}, "tiny_alpaca", "data.parquet", [], ["data.parquet", "parquet"]),
    # --- JSON / JSON Lines structure ---------------------------------------------------------------------
    "jsonl line that is not JSON": (
        {"data.jsonl": jsonl(GOOD, GOOD) + '{"instruction": oops}\n'},
        "tiny_alpaca",
        "data.jsonl",
        [],
        ["data.jsonl", "line 3", "not valid JSON"],
    ),
    "jsonl cut off mid-line": (
        {"data.jsonl": jsonl(GOOD) + '{"instruction": "What is'},
        "tiny_alpaca",
        "data.jsonl",
        [],
        ["data.jsonl", "line 2", "not valid JSON"],
    ),
    "jsonl line that is not an object": (
        {"data.jsonl": jsonl(GOOD) + '"What is 2 + 2?"\n'},
        "tiny_alpaca",
        "data.jsonl",
        [],
        ["data.jsonl", "line 2", "a string, not an object"],
    ),
    "json array with a trailing comma": (
        {"data.json": "[\n" + json.dumps(GOOD) + ",\n]\n"},
        "tiny_alpaca",
        "data.json",
        [],
        ["data.json", "line 3", "not valid JSON"],
    ),
    "json array item that is not an object": (
        {"data.json": json.dumps([GOOD, 4])},
        "tiny_alpaca",
        "data.json",
        [],
        ["data.json", "array item 1", "a number, not an object"],
    ),
    # --- CSV structure -----------------------------------------------------------------------------------
    "csv row with an extra cell": (
        {"data.csv": "instruction,input,output\nhi,,ok\nWhat is 1,000 + 1?,,1001\n"},
        "tiny_alpaca",
        "data.csv",
        [],
        ["data.csv", "row 1", "line 3", "4 cells", "the header has 3"],
    ),
    "csv row with a missing cell": (
        {"data.csv": "instruction,input,output\nhi,,ok\nWhat is 2 + 2?,4\n"},
        "tiny_alpaca",
        "data.csv",
        [],
        ["data.csv", "row 1", "line 3", "2 cells"],
    ),
    "csv quote never closed": (
        {"data.csv": 'instruction,output\nhi,ok\nsay "hi",fine\nbye,"see you\nlater,x\n'},
        "tiny_alpaca",
        "data.csv",
        [],
        ["data.csv", "line 4", "not valid CSV"],  # line 3's inner quotes are text as written
    ),
    "csv column named twice": (
        {"data.csv": "instruction,output,output\nhi,ok,fine\n"},
        "tiny_alpaca",
        "data.csv",
        [],
        ["data.csv", "`output`", "more than once"],
    ),
    "column missing from every row": (
        {"data.jsonl": jsonl({"instruction": "hi", "answer": "ok"})},
        "tiny_alpaca",
        "data.jsonl",
        [],
        ["data.jsonl", "column `output` not found", "answer"],
    ),
    # --- the recipe file ---------------------------------------------------------------------------------
    "binary recipe": (
        {"bin.yaml": b"\xff\xfe\x00s\x00o\x00u\x00r\x00c\x00e\x00", "data.jsonl": jsonl(GOOD)},
        "bin.yaml",
        "data.jsonl",
        [],
        ["bin.yaml", "not a UTF-8 text file"],
    ),
    "zero-width system prompt in a recipe": (
        {"zw.yaml": recipe("alpaca", system_prompt=json.dumps(ZERO_WIDTH)), "data.jsonl": jsonl(GOOD)},
        "zw.yaml",
        "data.jsonl",
        [],
        ["zw.yaml", "`system_prompt`", "non-empty"],
    ),
    # --- rows: blank (zero-width) text -------------------------------------------------------------------
    "only zero-width replies": (
        {
            "data.jsonl": jsonl(
                {"instruction": "hi", "output": ZERO_WIDTH}, {"instruction": "a", "output": " \u200b"}
            )
        },
        "tiny_alpaca",
        "data.jsonl",
        [],
        ["data.jsonl", "all 2 rows were dropped (empty_turn 2)", "row 0"],
    ),
    "zero-width reply, strict": (
        {"strict.yaml": ALPACA, "data.jsonl": jsonl(GOOD, {"instruction": "hi", "output": "\u200b \ufeff"})},
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 1", "empty_turn"],
    ),
    "zero-width instruction, strict": (
        {"strict.yaml": ALPACA, "data.csv": "instruction,output\n\u200c\u200d,ok\n"},
        "strict.yaml",
        "data.csv",
        [],
        ["data.csv", "row 0", "empty_turn", "instruction is blank"],
    ),
    "zero-width turn in messages, strict": (
        {"strict.yaml": MESSAGES, "data.jsonl": jsonl(turns(("user", "hi"), ("assistant", "\u2060\n")))},
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 0", "empty_turn", "turn 1"],
    ),
    "zero-width line of text, strict": (
        {"strict.yaml": TEXT, "corpus.txt": f"hello there\n{ZERO_WIDTH}\n"},
        "strict.yaml",
        "corpus.txt",
        [],
        ["corpus.txt", "row 1", "empty_text"],
    ),
    "zero-width chosen reply, strict": (
        {
            "strict.yaml": PAIRWISE,
            "data.jsonl": jsonl({"prompt": "hi", "chosen": "\ufeff", "rejected": "no"}),
        },
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 0", "empty_turn", "chosen reply is blank"],
    ),
    "a lone surrogate in a reply, strict": (
        # JSON can spell a lone surrogate as an escape; no UTF-8 encoder (tokenizer, hash, Arrow) takes it.
        {
            "strict.yaml": ALPACA,
            "data.jsonl": jsonl(GOOD) + '{"instruction": "hi", "output": "ok \\ud800"}\n',
        },
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 1", "bad_unicode", "not valid Unicode"],
    ),
    "only lone surrogates": (
        {"data.jsonl": '{"instruction": "\\udc00", "output": "ok"}\n'},
        "tiny_alpaca",
        "data.jsonl",
        [],
        ["data.jsonl", "all 1 rows were dropped (bad_unicode 1)", "row 0"],
    ),
    # --- rows: wrong shapes and values -------------------------------------------------------------------
    "row over max_length, strict": (
        {"strict.yaml": ALPACA, "data.jsonl": jsonl(GOOD, {"instruction": "word " * 50, "output": "ok"})},
        "strict.yaml",
        "data.jsonl",
        ["--max_length", "32"],
        ["data.jsonl", "row 1", "too_long", "max_length 32"],
    ),
    "messages not a list, strict": (
        {"strict.yaml": MESSAGES, "data.jsonl": jsonl({"messages": "user: hi\nassistant: hello"})},
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 0", "malformed", "not a list of turns"],
    ),
    "a turn that is not a mapping, strict": (
        {"strict.yaml": MESSAGES, "data.jsonl": jsonl({"messages": ["hi", "hello"]})},
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 0", "turn 0 is a str"],
    ),
    "a role that is not system/user/assistant, strict": (
        {"strict.yaml": MESSAGES, "data.jsonl": jsonl(turns(("user", "hi"), ("bot", "hello")))},
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 0", "unknown_role", "`bot`"],
    ),
    "roles not alternating, strict": (
        {
            "strict.yaml": MESSAGES,
            "data.jsonl": jsonl(turns(("user", "hi"), ("user", "hey"), ("assistant", "yo"))),
        },
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 0", "not_alternating"],
    ),
    "no assistant turn, strict": (
        {"strict.yaml": MESSAGES, "data.jsonl": jsonl(turns(("system", "be brief"), ("user", "hi")))},
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 0", "no_assistant_turn"],
    ),
    "JSON true where text belongs, strict": (
        {"strict.yaml": ALPACA, "data.jsonl": jsonl(GOOD, {"instruction": "Is 2 even?", "output": True})},
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 1", "malformed", "`output` is a boolean (true/false), not text"],
    ),
    "a column that changes type between rows, strict": (
        {"strict.yaml": ALPACA, "data.jsonl": jsonl(GOOD, {"instruction": "hi", "output": {"text": "ok"}})},
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 1", "malformed", "`output` is a dict"],
    ),
    "null where text belongs, strict": (
        {"strict.yaml": ALPACA, "data.csv": "instruction,input,output\nhi,,ok\nWhat is 3 + 3?,,\n"},
        "strict.yaml",
        "data.csv",
        [],
        ["data.csv", "row 1", "missing_field", "`output`"],
    ),
    "margin that is not a number, strict": (
        {
            "strict.yaml": PAIRWISE,
            "data.jsonl": jsonl({"prompt": "hi", "chosen": "hello", "rejected": "go", "margin": "big"}),
        },
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 0", "`margin` is a str, not a number"],
    ),
    "ranks that do not match the completions, strict": (
        {
            "strict.yaml": recipe("ranked", "preference"),
            "data.jsonl": jsonl({"prompt": "hi", "completions": ["a", "b", "c"], "ranks": [1, 2]}),
        },
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 0", "2 `ranks` for 3 completions"],
    ),
    "sharegpt preference conversation ending with gpt, strict": (
        {
            "strict.yaml": recipe("sharegpt_preference", "preference"),
            "data.jsonl": jsonl(
                {
                    "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
                    "chosen": {"from": "gpt", "value": "hello"},
                    "rejected": {"from": "gpt", "value": "go"},
                }
            ),
        },
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 0", "no_user_turn", "`conversations` must end with a human/user turn"],
    ),
    "orca pair without a question, strict": (
        {
            "strict.yaml": recipe("system_question", "preference"),
            "data.jsonl": jsonl({"system": "", "chosen": "4", "rejected": "5"}),
        },
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "question"],
    ),
    "tool result with no tool call, strict": (
        {
            "strict.yaml": MESSAGES,
            "data.jsonl": jsonl(
                {
                    "messages": [
                        {"role": "user", "content": "2 + 2?"},
                        {"role": "tool", "content": "4"},
                        {"role": "assistant", "content": "4."},
                    ],
                    "tools": "[]",
                }
            ),
        },
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 0", "not_alternating", "a tool turn must answer an assistant turn's tool calls"],
    ),
    "tool call arguments that are not JSON, strict": (
        {
            "strict.yaml": MESSAGES,
            "data.jsonl": jsonl(
                {
                    "messages": [
                        {"role": "user", "content": "2 + 2?"},
                        {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [{"function": {"name": "calc", "arguments": "{2 + 2"}}],
                        },
                    ]
                }
            ),
        },
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 0", "malformed", "`arguments` is a string but not JSON"],
    ),
    "unpaired label that is not true or false, strict": (
        {
            "strict.yaml": recipe("unpaired", "unpaired_preference"),
            "data.csv": "prompt,completion,label\nWhat is 2 + 2?,4,maybe\n",
        },
        "strict.yaml",
        "data.csv",
        [],
        ["data.csv", "row 0", "malformed", "`label` is 'maybe'; it must be true or false"],
    ),
    "hh-rlhf text that is not a transcript, strict": (
        {
            "strict.yaml": recipe("hh_rlhf", "preference"),
            "data.jsonl": jsonl({"chosen": "Sure, 4.", "rejected": "No."}),
        },
        "strict.yaml",
        "data.jsonl",
        [],
        ["data.jsonl", "row 0", "not a `\\n\\nHuman: ...\\n\\nAssistant: ...` transcript"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_data_is_refused_naming_file_and_row(case, tmp_path, capsys, tokenizer_dir):
    files, recipe_name, data_file, extra, mentions = CASES[case]
    for name, content in files.items():
        write(tmp_path / name, content)
    argv = ["data", "preview", recipe_name, "--model", tokenizer_dir, "--data_files", data_file, *extra]
    refused(argv, tmp_path, capsys, mentions=mentions)


def test_a_transform_that_returns_no_dict_is_refused_naming_the_row(tmp_path, capsys, tokenizer_dir):
    write(tmp_path / "hook.py", "def split(row):\n    return [row]\n")
    write(tmp_path / "t.yaml", recipe("alpaca", transform="hook:split"))
    write(tmp_path / "data.jsonl", jsonl(GOOD))
    argv = ["data", "preview", "t.yaml", "--model", tokenizer_dir, "--data_files", "data.jsonl"]
    # Importing the hook may leave its bytecode cache: that is Python's, not a half-written artifact.
    refused(argv, tmp_path, capsys, mentions=["hook:split", "row 0", "list"], allow_new=("__pycache__",))


@pytest.mark.parametrize(
    "content, mentions",
    [
        (jsonl(GOOD) + "{oops\n", ["data.jsonl", "line 2", "not valid JSON"]),
        ('{"instruction": "café", "output": "x"}\n'.encode("latin-1"), ["data.jsonl", "not UTF-8", "line 1"]),
    ],
    ids=["bad JSON line", "latin-1"],
)
def test_sft_stops_on_bad_data_before_loading_weights(content, mentions, tmp_path, capsys, tokenizer_dir):
    # The "model" is a tokenizer folder without weights: reaching the weights would fail differently.
    write(tmp_path / "data.jsonl", content)
    argv = ["sft", "--config", SFT, "--model_name_or_path", tokenizer_dir, "--data_files", "data.jsonl"]
    refused([*argv, "--output_dir", "out"], tmp_path, capsys, mentions=mentions)


# --- text reaches the model exactly as written --------------------------------------------------------------

ANSWERS = ["007", "02139", "3.10", "1e5", "true", "NA", "null", "-0", "1,000"]


def trained_text(tokenizer, messages: list[dict]) -> str:
    """The tokens SFT trains on for one conversation, decoded: TRL's own tokenization with the assistant mask
    (what `assistant_only_loss`, hftune's default, turns into labels)."""
    from trl.data_utils import _tokenize

    encoded = _tokenize(tokenizer, messages, return_assistant_tokens_mask=True)
    ids = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    return tokenizer.decode(ids)


@pytest.mark.parametrize("answer", ANSWERS)
def test_csv_answers_train_exactly_as_written(answer, tmp_path, chat_tokenizer):
    # Each file holds one kind of answer, so a reader that infers types sees a whole numeric (or boolean,
    # or NA) column; the instruction `0012` would be a number too.
    cell = f'"{answer}"' if "," in answer else answer
    write(tmp_path / "a.csv", f"instruction,input,output\n0012,,{cell}\n0012,,{cell}\n")
    data = prepare_dataset(
        load_recipe("tiny_alpaca"), tokenizer=chat_tokenizer, data_files=tmp_path / "a.csv"
    )
    assert data.dropped == {} and len(data.train) == 2
    for row in data.train:
        assert row["messages"][0] == {"role": "user", "content": "0012"}
        assert trained_text(chat_tokenizer, row["messages"]) == f"{answer}<|im_end|>"


def test_jsonl_strings_and_numbers_train_exactly_as_written(tmp_path, chat_tokenizer):
    strings = ["007", "02139", "3.10", "1e5", "true"]
    numbers = ["42", "3.50", "1e5", "-0", "1E-7", "12345678901234567890"]  # JSON numbers, written unquoted
    lines = [json.dumps({"instruction": "Say it.", "output": s}) for s in strings]
    lines += ['{"instruction": "Say it.", "output": ' + n + "}" for n in numbers]
    write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")
    data = prepare_dataset(
        load_recipe("tiny_alpaca"), tokenizer=chat_tokenizer, data_files=tmp_path / "a.jsonl"
    )
    got = [trained_text(chat_tokenizer, row["messages"]) for row in data.train]
    assert got == [f"{answer}<|im_end|>" for answer in strings + numbers]


def test_json_numbers_stay_numbers_where_numbers_belong(tmp_path):
    rows = [
        '{"prompt": "hi", "chosen": 10, "rejected": "no", "margin": 1}',
        '{"prompt": "yo", "chosen": "yes", "rejected": 2.50, "margin": 2.5}',
    ]
    write(tmp_path / "p.jsonl", "\n".join(rows) + "\n")
    recipe_path = write(tmp_path / "p.yaml", recipe("pairwise", "preference", strict=True))
    data = prepare_dataset(load_recipe(str(recipe_path)), data_files=tmp_path / "p.jsonl")
    assert data.train["margin"] == [1.0, 2.5] and all(type(m) is float for m in data.train["margin"])
    assert [r["chosen"][0]["content"] for r in data.train] == ["10", "yes"]
    assert [r["rejected"][0]["content"] for r in data.train] == ["no", "2.50"]


def test_an_empty_csv_cell_is_still_missing_and_blank_is_still_blank(tmp_path):
    write(tmp_path / "a.csv", "instruction,input,output\nhi,,ok\nWhat is 2 + 2?,,\nhey,,\u200b\n")
    data = prepare_dataset(load_recipe("tiny_alpaca"), data_files=tmp_path / "a.csv")
    assert data.dropped == {"missing_field": 1, "empty_turn": 1}
    assert data.train[0]["messages"][0]["content"] == "hi"  # an empty input adds no context


def test_every_json_layout_and_csv_dialect_reads_the_same_text(tmp_path):
    rows = [
        {"instruction": 'Quote "this", then\na new line', "input": None, "output": " two  spaces "},
        {"instruction": "¿Qué?", "input": "ctx", "output": "0.50"},
    ]
    want = prepare_dataset(load_recipe("tiny_alpaca"), data_files=write(tmp_path / "a.jsonl", jsonl(*rows)))
    layouts = {
        "array.json": json.dumps(rows, indent=2),
        "lines.json": jsonl(*rows),
        "pretty.json": "\n".join(json.dumps(r, indent=2) for r in rows),
        "bom.jsonl": "\ufeff" + jsonl(*rows),
        "crlf.csv": "\ufeffinstruction,input,output\r\n"
        '"Quote ""this"", then\r\na new line",," two  spaces "\r\n'
        "¿Qué?,ctx,0.50\r\n",
    }
    for name, text in layouts.items():
        path = tmp_path / name
        path.write_bytes(text.encode())
        got = prepare_dataset(load_recipe("tiny_alpaca"), data_files=path)
        if name == "crlf.csv":  # a quoted line break is part of the cell, as written: \r\n
            assert got.train[0]["messages"][0]["content"] == 'Quote "this", then\r\na new line'
            assert got.train[0]["messages"][1]["content"] == " two  spaces "
            assert got.train[1]["messages"] == want.train[1]["messages"]
        else:
            assert got.fingerprint == want.fingerprint, name


# --- mixtures: a config whose `data_recipe` is a list ------------------------------------------------------


def mixture_config(root, parts: list) -> str:
    """The tiny SFT config with `data_recipe` a mixture of `parts`, written under `root`."""
    import yaml

    config = yaml.safe_load((REPO / "configs/tiny/sft.yaml").read_text())
    write(root / "mix.yaml", yaml.safe_dump({**config, "data_recipe": parts, "output_dir": "out"}))
    return "mix.yaml"


@pytest.mark.parametrize(
    "parts, mentions",
    [
        # 1e7 repeats of each row grew the process past 4 GB before anything said a word.
        (["tiny_alpaca", {"recipe": "tiny_dolly", "weight": 1e7}], ["data_recipe[1]", "weight", "1000"]),
        (
            ["tiny_alpaca", {"recipe": "tiny_dolly"}, {"recipe": "tiny_alpaca", "max_samples": 10}],
            ["data_recipe[2]", "data_recipe[0]", "tiny_alpaca", "weight"],
        ),
        (
            [
                {"recipe": "tiny_alpaca", "data_files": "a.jsonl"},
                {"recipe": "tiny_alpaca", "data_files": "./a.jsonl"},
            ],
            ["data_recipe[1]", "a.jsonl", "weight"],
        ),
    ],
    ids=["weight 1e7", "the same recipe twice", "the same recipe and data file twice"],
)
def test_a_mixture_that_would_train_on_far_too_many_or_doubled_rows_is_refused(
    parts, mentions, tmp_path, capsys, tokenizer_dir
):
    write(tmp_path / "a.jsonl", jsonl(GOOD, {"instruction": "What is 3 + 3?", "output": "6"}))
    argv = ["sft", "--config", mixture_config(tmp_path, parts), "--model_name_or_path", tokenizer_dir]
    refused(argv, tmp_path, capsys, mentions=mentions)


def test_a_mixture_weight_up_to_the_bound_and_distinct_parts_are_accepted(tmp_path):
    from types import SimpleNamespace

    from hftune.data.mixture import MAX_WEIGHT, data_parts

    write(tmp_path / "a.jsonl", jsonl(GOOD))
    value = [
        {"recipe": "tiny_alpaca", "weight": MAX_WEIGHT},
        {"recipe": "tiny_alpaca", "data_files": str(tmp_path / "a.jsonl")},  # the same recipe, other data
    ]
    parts = data_parts(SimpleNamespace(data_recipe=value, data_files=None, max_samples=None))
    assert [p.weight for p in parts] == [MAX_WEIGHT, 1.0]
