"""Data recipes: loading, converters, drop-by-reason accounting, strictness, splits and fingerprints."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import datasets
import pytest
import synthetic

import hftune
from hftune import data
from hftune.data import FORMATS, Recipe, Source, load_recipe, prepare_dataset
from hftune.data import recipe as recipe_module
from hftune.errors import UserError

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "data_recipes" / "fixtures"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_recipe(path: Path, **keys) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return path


# --- synthetic fixtures -----------------------------------------------------------------------------


def test_write_fixtures_reproduces_committed_files_byte_for_byte(tmp_path):
    written = synthetic.write_fixtures(tmp_path)
    committed = {p.name for p in FIXTURES.iterdir() if p.is_file()}
    assert set(written) == committed
    for name, path in written.items():
        assert path.read_bytes() == (FIXTURES / name).read_bytes(), (
            f"{name}: run python tests/synthetic.py data_recipes/fixtures"
        )


def test_fixture_sizes_and_row_counts():
    for name in ("alpaca.jsonl", "dolly.jsonl", "ultrachat.jsonl"):
        path = FIXTURES / name
        assert len(path.read_text().splitlines()) == 400
        assert path.stat().st_size < 200_000
    assert len((FIXTURES / "corpus.txt").read_text().splitlines()) == 3000
    assert synthetic.corpus_lines(50, seed=3) == synthetic.corpus_lines(50, seed=3)
    assert synthetic.alpaca_rows(20, seed=1) != synthetic.alpaca_rows(20, seed=2)


def test_synthetic_answers_are_correct():
    for row in synthetic.alpaca_rows(300, seed=7):
        prompt = f"{row['instruction']} {row['input']}"
        if m := re.fullmatch(r"(\d+) ([-+*]) (\d+) = (-?\d+)\.", row["output"]):
            a, op, b, result = int(m[1]), m[2], int(m[3]), int(m[4])
            assert result == {"+": a + b, "-": a - b, "*": a * b}[op]
            assert f"{a} {op} {b}" in prompt
        elif m := re.fullmatch(r"The reverse of '(\w+)' is '(\w+)'\.", row["output"]):
            assert m[2] == m[1][::-1] and m[1] in prompt
        elif m := re.fullmatch(r"The letter '(\w)' appears (\d+) times? in '(\w+)'\.", row["output"]):
            assert m[3].count(m[1]) == int(m[2])
        elif m := re.fullmatch(r"(\d+) is larger than (\d+)\.", row["output"]):
            assert int(m[1]) > int(m[2])
        elif m := re.fullmatch(r"The capital of ([\w ]+) is ([\w ]+)\.", row["output"]):
            assert (m[1], m[2]) in synthetic.CAPITALS
    chats = synthetic.ultrachat_rows(100, seed=3)
    assert any(r["messages"][0]["role"] == "system" for r in chats)
    assert {len([m for m in r["messages"] if m["role"] == "user"]) for r in chats} == {2, 3}


# --- recipes ----------------------------------------------------------------------------------------


def test_builtin_recipes_are_listed_and_load():
    names = data.list_recipes()
    for name in ("alpaca", "dolly", "ultrachat", "tiny_alpaca", "tiny_dolly", "tiny_ultrachat"):
        assert name in names
        assert load_recipe(name).name == name
    assert load_recipe("ultrachat").source == Source(hub="HuggingFaceH4/ultrachat_200k", split="train_sft")
    assert load_recipe("dolly").mapping["context"] == "context"


def test_builtin_recipes_and_eval_suites_are_found_through_builtin_dir():
    recipes, evals = data.builtin_dir("data_recipes"), data.builtin_dir("eval")
    assert (recipes / "tiny_alpaca.yaml").is_file() and (recipes / "fixtures" / "alpaca.jsonl").is_file()
    assert data.list_recipes() == sorted(p.stem for p in recipes.glob("*.yaml"))
    assert load_recipe("tiny_alpaca").path == (recipes / "tiny_alpaca.yaml").resolve()
    assert (evals / "suites" / "tiny.yaml").is_file() and (evals / "metrics" / "bleu" / "bleu.py").is_file()
    if Path(hftune.__file__).resolve().is_relative_to(REPO):
        # In a checkout hftune/resources/ links to the repo's own folders, so edits there are seen at once.
        assert recipes.resolve() == REPO / "data_recipes" and evals.resolve() == REPO / "eval"


WHEEL_FILES = (
    "hftune/resources/data_recipes/tiny_alpaca.yaml",
    "hftune/resources/data_recipes/fixtures/alpaca.jsonl",
    "hftune/resources/eval/suites/tiny.yaml",
    "hftune/resources/eval/metrics/bleu/bleu.py",
    "hftune/models/tiny_corpus.txt",
)


@pytest.mark.integration  # launches a process
@pytest.mark.slow
def test_the_wheel_ships_the_builtin_files(tmp_path):
    # Built from a copy, so the build leaves nothing (build/, egg-info) in the checkout.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("hftune", "data_recipes", "eval"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run([*build, str(src)], check=True, capture_output=True)
    (wheel,) = wheels.glob("hftune-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert not [f for f in WHEEL_FILES if f not in shipped]


def test_a_recipe_file_is_parsed_once_until_its_text_changes(tmp_path, monkeypatch):
    parsed = []
    load_yaml = recipe_module.load_yaml
    monkeypatch.setattr(recipe_module, "load_yaml", lambda text: parsed.append(text) or load_yaml(text))
    path = write_recipe(tmp_path / "r.yaml", source={"path": "a.jsonl"}, converter="alpaca")
    first = load_recipe(str(path))
    assert load_recipe(str(path)) is first and load_recipe(path) is first and len(parsed) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.strict = True  # shared by every caller, so nobody may change it
    # The same size, and maybe the same mtime: the text decides.
    write_recipe(path, source={"path": "b.jsonl"}, converter="alpaca")
    assert load_recipe(str(path)).source.path == "b.jsonl" and len(parsed) == 2
    write_recipe(path, source={"path": "b.jsonl"}, converter="alpaca", system_prompt="Be brief.")
    assert load_recipe(str(path)).system_prompt == "Be brief." and first.system_prompt is None
    assert len(parsed) == 3


def test_unknown_recipe_keys_are_all_reported_with_suggestions(tmp_path):
    path = write_recipe(
        tmp_path / "typo.yaml",
        source={"hub": "tatsu-lab/alpaca", "splitt": "train"},
        formatt="conversational",
        converter="alpaca",
        mapping={"outptu": "answer"},
        strict="yes",
    )
    with pytest.raises(UserError) as err:
        load_recipe(str(path))
    message = str(err.value)
    assert "4 problems" in message and str(path) in message
    assert "`formatt`: unknown key (did you mean `format`?)" in message
    assert "`source.splitt`: unknown key (did you mean `split`?)" in message
    assert "`mapping.outptu`" in message and "did you mean `output`?" in message
    assert "`strict`" in message


def test_unknown_converter_and_format_mismatch(tmp_path):
    with pytest.raises(UserError, match=r"unknown converter `alpacca` \(did you mean `alpaca`\?\)"):
        load_recipe(str(write_recipe(tmp_path / "a.yaml", source={"path": "x.jsonl"}, converter="alpacca")))
    with pytest.raises(UserError, match="`language_modeling` cannot be built by the `alpaca` converter"):
        load_recipe(
            str(
                write_recipe(
                    tmp_path / "b.yaml",
                    source={"path": "x.jsonl"},
                    converter="alpaca",
                    format="language_modeling",
                )
            )
        )
    with pytest.raises(UserError, match="exactly one of `hub`"):
        load_recipe(
            str(
                write_recipe(
                    tmp_path / "c.yaml", source={"hub": "a/b", "path": "x.jsonl"}, converter="alpaca"
                )
            )
        )


def test_missing_recipe_lists_builtins(tmp_path):
    with pytest.raises(UserError, match=r"unknown recipe `alpacca` \(did you mean `alpaca`\?\).*tiny_alpaca"):
        load_recipe("alpacca")
    with pytest.raises(UserError, match=r"not found; built-in recipes: .*ultrachat"):
        load_recipe(str(tmp_path / "nope.yaml"))


# --- converting and checking rows -------------------------------------------------------------------


def assert_valid_conversation(messages: list[dict]) -> None:
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    assert "system" not in body
    assert body == ["user", "assistant"] * (len(body) // 2), roles
    assert body[-1] == "assistant"
    assert all(m["content"].strip() for m in messages)


@pytest.mark.parametrize("name", ["tiny_alpaca", "tiny_dolly", "tiny_ultrachat"])
def test_tiny_recipes_yield_valid_conversations(name):
    prepared = prepare_dataset(load_recipe(name))
    assert prepared.dropped == {} and prepared.n_source_rows == len(prepared.train) == 400
    assert prepared.summary() == "kept 400 of 400 rows; dropped 0"
    for row in prepared.train:
        assert set(row) == {"messages"}
        assert_valid_conversation(row["messages"])
    if name == "tiny_ultrachat":
        assert any(r["messages"][0]["role"] == "system" for r in prepared.train)
        assert max(len(r["messages"]) for r in prepared.train) >= 6


def test_alpaca_input_and_dolly_context_join_the_user_turn():
    alpaca = prepare_dataset(load_recipe("tiny_alpaca"))
    source = synthetic.alpaca_rows(400, seed=1)
    i = next(i for i, r in enumerate(source) if r["input"])
    assert alpaca.train[i]["messages"][0]["content"] == f"{source[i]['instruction']}\n\n{source[i]['input']}"
    dolly = prepare_dataset(load_recipe("tiny_dolly"))
    source = synthetic.dolly_rows(400, seed=2)
    i = next(i for i, r in enumerate(source) if r["context"])
    assert dolly.train[i]["messages"][0]["content"] == f"{source[i]['instruction']}\n\n{source[i]['context']}"
    assert dolly.train[i]["messages"][1]["content"] == source[i]["response"]


def test_bad_rows_are_dropped_and_counted_by_reason(caplog):
    with caplog.at_level("INFO", logger="hftune.data"):
        prepared = prepare_dataset(load_recipe("tiny_alpaca"), data_files=str(FIXTURES / "bad_rows.jsonl"))
    expected = {k: v for k, v in synthetic.BAD_ROWS_EXPECTED.items() if k != "too_long"}
    assert prepared.dropped == expected == {"missing_field": 3, "empty_turn": 3}
    assert prepared.n_source_rows == synthetic.BAD_ROWS_GOOD + 8
    assert len(prepared.train) == synthetic.BAD_ROWS_GOOD + 2
    assert prepared.examples == {"missing_field": [3, 8, 13], "empty_turn": [18, 23, 28]}
    assert prepared.summary() == "kept 42 of 48 rows; dropped 6: empty_turn 3, missing_field 3"
    assert prepared.summary() in caplog.text and "missing_field" in caplog.text


def test_too_long_rows_are_dropped_with_a_tokenizer(chat_tokenizer):
    prepared = prepare_dataset(
        load_recipe("tiny_alpaca"),
        tokenizer=chat_tokenizer,
        max_length=256,
        data_files=str(FIXTURES / "bad_rows.jsonl"),
    )
    assert prepared.dropped == synthetic.BAD_ROWS_EXPECTED
    assert prepared.examples["too_long"] == [33, 38]
    assert len(prepared.train) == synthetic.BAD_ROWS_GOOD
    # Lengths are kept for every row that passed the content checks, too-long ones included.
    assert len(prepared.token_lengths) == synthetic.BAD_ROWS_GOOD + 2
    first = prepared.train[0]["messages"]
    assert prepared.token_lengths[0] == len(
        chat_tokenizer.apply_chat_template(first, tokenize=True)["input_ids"]
    )


def test_sharegpt_converter_and_chat_drop_reasons():
    recipe = Recipe(name="sharegpt", path=None, source=Source(path="unused.jsonl"), converter="sharegpt")
    prepared = prepare_dataset(recipe, data_files=FIXTURES / "bad_chats.jsonl")
    assert prepared.dropped == synthetic.BAD_CHATS_EXPECTED
    assert prepared.examples["unknown_role"] == [11] and prepared.examples["no_assistant_turn"] == [14]
    assert len(prepared.train) == synthetic.BAD_CHATS_GOOD
    for row in prepared.train:
        assert_valid_conversation(row["messages"])


def test_strict_raises_naming_file_row_and_reason(tmp_path):
    bad = str(FIXTURES / "bad_rows.jsonl")
    with pytest.raises(
        UserError, match=r"bad_rows\.jsonl: row 3 \(0-based\) is bad: missing_field: `output`"
    ):
        prepare_dataset(load_recipe("tiny_alpaca"), data_files=bad, strict=True)
    path = write_recipe(tmp_path / "strict.yaml", source={"path": bad}, converter="alpaca", strict=True)
    with pytest.raises(UserError, match="6 bad rows in all: empty_turn 3, missing_field 3"):
        prepare_dataset(load_recipe(str(path)))
    assert len(prepare_dataset(load_recipe(str(path)), strict=False).train) == 42  # the argument wins


def test_missing_column_names_column_file_and_existing_columns(tmp_path):
    path = write_jsonl(tmp_path / "no_output.jsonl", [{"instruction": "Hi", "input": ""}] * 3)
    with pytest.raises(UserError) as err:
        prepare_dataset(load_recipe("tiny_alpaca"), data_files=str(path))
    message = str(err.value)
    assert "column `output` not found" in message and str(path) in message
    assert "columns in" in message and "instruction, input" in message
    # An explicitly mapped optional column must exist too; an unmapped one may be absent.
    write_jsonl(path, [{"instruction": "Hi", "output": "Hello."}])
    assert len(prepare_dataset(load_recipe("tiny_alpaca"), data_files=str(path)).train) == 1
    recipe = Recipe(
        name="x", path=None, source=Source(path="x.jsonl"), converter="alpaca", mapping={"input": "ctx"}
    )
    with pytest.raises(UserError, match="column `ctx` not found"):
        prepare_dataset(recipe, data_files=str(path))


def test_missing_data_file_and_all_rows_dropped(tmp_path):
    with pytest.raises(UserError, match=r"nope\.jsonl not found"):
        prepare_dataset(load_recipe("tiny_alpaca"), data_files=str(tmp_path / "nope.jsonl"))
    path = write_jsonl(tmp_path / "empty.jsonl", [{"instruction": "Hi", "input": "", "output": ""}] * 2)
    with pytest.raises(UserError, match="all 2 rows were dropped \\(empty_turn 2\\)"):
        prepare_dataset(load_recipe("tiny_alpaca"), data_files=str(path))


def test_system_prompt_is_a_default_and_mapping_renames_columns(tmp_path):
    rows = [
        {"q": "What is 1 + 1?", "a": "1 + 1 = 2."},
    ]
    write_jsonl(tmp_path / "qa.jsonl", rows)
    path = write_recipe(
        tmp_path / "qa.yaml",
        source={"path": "qa.jsonl"},
        converter="alpaca",
        mapping={"instruction": "q", "output": "a"},
        system_prompt="Be brief.",
    )
    prepared = prepare_dataset(load_recipe(str(path)))  # path is relative to the recipe file
    assert prepared.train[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "1 + 1 = 2."},
    ]
    chats = [
        {
            "messages": [
                {"role": "system", "content": "Own."},
                *synthetic.ultrachat_rows(1)[0]["messages"][-2:],
            ]
        }
    ]
    write_jsonl(tmp_path / "chat.jsonl", chats)
    path = write_recipe(
        tmp_path / "chat.yaml", source={"path": "chat.jsonl"}, converter="messages", system_prompt="Be brief."
    )
    assert prepare_dataset(load_recipe(str(path))).train[0]["messages"] == chats[0]["messages"]


def test_transform_hook_edits_and_filters_rows(tmp_path):
    (tmp_path / "my_hooks.py").write_text(
        "def only_capitals(row):\n"
        "    if 'capital' not in row['instruction']:\n"
        "        return None\n"
        "    return {**row, 'output': row['output'].upper()}\n"
    )
    path = write_recipe(
        tmp_path / "caps.yaml",
        source={"path": str(FIXTURES / "alpaca.jsonl")},
        converter="alpaca",
        transform="my_hooks:only_capitals",
        strict=True,
    )
    prepared = prepare_dataset(load_recipe(str(path)))  # filtering on purpose is not a strict-mode error
    n_capitals = sum("capital" in r["instruction"] for r in synthetic.alpaca_rows(400, seed=1))
    assert len(prepared.train) == n_capitals and prepared.dropped == {"filtered": 400 - n_capitals}
    assert all(r["messages"][1]["content"].isupper() for r in prepared.train)
    path = write_recipe(
        tmp_path / "typo.yaml",
        source={"path": "x.jsonl"},
        converter="alpaca",
        transform="my_hooks:only_capital",
    )
    with pytest.raises(UserError, match=r"no function `only_capital` \(did you mean `only_capitals`\?\)"):
        load_recipe(str(path))


def test_prompt_completion_and_language_modeling_formats(tmp_path):
    path = write_recipe(
        tmp_path / "pc.yaml",
        source={"path": str(FIXTURES / "ultrachat.jsonl")},
        converter="messages",
        format="prompt_completion",
    )
    prepared = prepare_dataset(load_recipe(str(path)))
    source = synthetic.ultrachat_rows(400, seed=3)
    for row, src in zip(prepared.train, source, strict=True):
        assert row["prompt"] + row["completion"] == src["messages"]
        assert row["prompt"][-1]["role"] == "user" and [m["role"] for m in row["completion"]] == ["assistant"]

    write_jsonl(
        tmp_path / "text.jsonl", [{"body": line} for line in synthetic.corpus_lines(30)] + [{"body": " "}]
    )
    path = write_recipe(
        tmp_path / "lm.yaml",
        source={"path": "text.jsonl"},
        converter="text",
        format="language_modeling",
        mapping={"text": "body"},
    )
    prepared = prepare_dataset(load_recipe(str(path)))
    assert prepared.train[0] == {"text": synthetic.corpus_lines(1)[0]} and prepared.dropped == {
        "empty_text": 1
    }


def test_a_new_format_is_one_registered_function():
    @data.trl_format("prompt_only_test", accepts="chat")
    def prompt_only(conversation):
        return {"prompt": conversation[:-1]}

    try:
        recipe = Recipe(
            name="x",
            path=None,
            source=Source(path=str(FIXTURES / "alpaca.jsonl")),
            converter="alpaca",
            format="prompt_only_test",
        )
        row = prepare_dataset(recipe, max_rows=5).train[0]
        assert row == {"prompt": [{"role": "user", "content": "Reverse the word 'cotton'."}]}
    finally:
        FORMATS.pop("prompt_only_test")


# --- loading ----------------------------------------------------------------------------------------


def test_csv_parquet_and_jsonl_give_the_same_rows(tmp_path):
    rows = synthetic.alpaca_rows(30, seed=1)
    ds = datasets.Dataset.from_list(rows)
    ds.to_csv(tmp_path / "a.csv", index=False)
    ds.to_parquet(tmp_path / "a.parquet")
    recipe = load_recipe("tiny_alpaca")
    prints = {
        prepare_dataset(recipe, data_files=str(tmp_path / f"a.{ext}")).fingerprint
        for ext in ("csv", "parquet")
    }
    assert prints == {prepare_dataset(recipe, max_rows=30).fingerprint}
    (tmp_path / "a.xml").write_text("x")
    with pytest.raises(UserError, match=r"unsupported type `\.xml`"):
        prepare_dataset(recipe, data_files=str(tmp_path / "a.xml"))


def test_hub_source_goes_through_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, *, split=None, revision=None, **kwargs):
        calls.append((path, name, split, revision))
        if path == "HuggingFaceH4/ultrachat_200k":
            return datasets.Dataset.from_list(synthetic.ultrachat_rows(5))
        return datasets.Dataset.from_list(synthetic.alpaca_rows(5))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert len(prepare_dataset(load_recipe("alpaca")).train) == 5
    assert len(prepare_dataset(load_recipe("ultrachat")).train) == 5
    assert calls == [
        ("tatsu-lab/alpaca", None, "train", None),
        ("HuggingFaceH4/ultrachat_200k", None, "train_sft", None),
    ]

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'tatsu-lab/alpaca' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match=r"(?s)hub dataset tatsu-lab/alpaca.*data_files"):
        prepare_dataset(load_recipe("alpaca"))


def test_data_files_runs_a_hub_recipe_offline():
    prepared = prepare_dataset(load_recipe("dolly"), data_files=str(FIXTURES / "dolly.jsonl"))
    assert prepared.fingerprint == prepare_dataset(load_recipe("tiny_dolly")).fingerprint


# --- splits and fingerprints ------------------------------------------------------------------------


def test_eval_split_is_seeded_and_disjoint():
    recipe = load_recipe("tiny_alpaca")
    a = prepare_dataset(recipe, eval_fraction=0.1, seed=1)
    b = prepare_dataset(recipe, eval_fraction=0.1, seed=1)
    c = prepare_dataset(recipe, eval_fraction=0.1, seed=2)
    # Each row is held out on its own (its prompt's hash against the fraction): about 10%, not exactly.
    assert 25 <= len(a.eval) <= 60 and len(a.train) + len(a.eval) == 400
    assert a.eval_indices == b.eval_indices and a.eval.to_list() == b.eval.to_list()
    assert a.eval_indices != c.eval_indices
    assert not set(a.eval_indices) & set(a.train_indices)
    assert sorted(a.eval_indices + a.train_indices) == list(range(400))
    assert a.train_indices == sorted(a.train_indices)  # train keeps source order
    assert a.summary() == f"kept 400 of 400 rows (train {len(a.train)}, eval {len(a.eval)}); dropped 0"
    assert len(prepare_dataset(recipe, eval_fraction=0.0001, max_rows=10).eval) == 1  # never an empty eval
    assert prepare_dataset(recipe).eval is None
    with pytest.raises(UserError, match="eval_fraction"):
        prepare_dataset(recipe, eval_fraction=1.0)


def test_fingerprint_is_stable_and_tracks_the_data(tmp_path):
    recipe = load_recipe("tiny_alpaca")
    base = prepare_dataset(recipe).fingerprint
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert prepare_dataset(recipe).fingerprint == base
    rows = synthetic.alpaca_rows(400, seed=1)
    assert (
        prepare_dataset(recipe, data_files=str(write_jsonl(tmp_path / "same.jsonl", rows))).fingerprint
        == base
    )
    rows[7]["output"] += " Indeed."
    changed = write_jsonl(tmp_path / "changed.jsonl", rows)
    assert prepare_dataset(recipe, data_files=str(changed)).fingerprint != base
    swapped = write_jsonl(tmp_path / "swapped.jsonl", [rows[1], rows[0], *rows[2:]])
    assert (
        prepare_dataset(recipe, data_files=str(swapped)).fingerprint
        != prepare_dataset(recipe, data_files=str(changed)).fingerprint
    )
    assert prepare_dataset(recipe, eval_fraction=0.1).fingerprint != base  # what is trained on changed


# --- text hygiene: replies that read the same, text that is not Unicode, documents of a .txt file ----------


def test_pairs_whose_replies_differ_only_invisibly_are_identical_and_kept_text_is_untouched(tmp_path):
    pairs = [
        {"prompt": "2 + 2?", "chosen": "4", "rejected": "4\u200b"},  # a zero-width space
        {"prompt": "Name it.", "chosen": "a  b\n", "rejected": "a b"},  # whitespace runs
        {"prompt": "Spell fi.", "chosen": "\ufb01", "rejected": "fi"},  # NFKC: the ligature is "fi"
        {"prompt": "Greet.", "chosen": "Hello\u200b there ", "rejected": "Go away."},  # kept as written
        {"prompt": "Case?", "chosen": "Yes", "rejected": "yes"},  # case is a difference a labeller may mean
    ]
    recipe = Recipe(
        name="pairs", path=None, source=Source(path="x.jsonl"), format="preference", converter="pairwise"
    )
    prepared = prepare_dataset(recipe, data_files=write_jsonl(tmp_path / "pairs.jsonl", pairs))
    assert prepared.dropped == {"identical": 3}
    assert [row["chosen"][-1]["content"] for row in prepared.train] == ["Hello\u200b there ", "Yes"]


def test_a_lone_surrogate_drops_its_row_counted_and_strict_names_it(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"instruction": "hi", "output": "ok"}\n'
        '{"instruction": "x \\ud800", "output": "ok"}\n'
        '{"instruction": "yo", "output": "\\udfff!"}\n'
    )
    prepared = prepare_dataset(load_recipe("tiny_alpaca"), data_files=path)
    assert prepared.dropped == {"bad_unicode": 2} and prepared.examples == {"bad_unicode": [1, 2]}
    assert prepared.train[0]["messages"][1]["content"] == "ok"
    with pytest.raises(UserError, match=r"row 1 \(0-based\) is bad: bad_unicode: .*not valid Unicode"):
        prepare_dataset(load_recipe("tiny_alpaca"), data_files=path, strict=True)


TXT_CORPORA = pytest.mark.parametrize(
    "text, documents",
    [
        # Blank lines (spaces and tabs count as blank) separate documents; a document keeps its line breaks.
        (
            "Title\nfirst line\nsecond line\n\nNext doc\r\n \t\n\n\nLast one\n",
            ["Title\nfirst line\nsecond line", "Next doc", "Last one"],
        ),
        ("\n\ndoc one\n\ndoc two\n\n\n", ["doc one", "doc two"]),
        # No blank line between documents: one document per line (tiny_corpus's layout), as before; a blank
        # line after the last one separates nothing (it is a blank row, dropped as empty_text).
        ("one\ntwo\nthree\n\n", ["one", "two", "three", ""]),
        ("  indented\nkept as written  \n", ["  indented", "kept as written  "]),
    ],
    ids=["paragraphs", "blank lines around", "lines", "lines as written"],
)


@TXT_CORPORA
def test_a_txt_corpus_is_read_as_documents_separated_by_blank_lines(text, documents, tmp_path):
    from hftune.data.files import read_file

    (tmp_path / "corpus.txt").write_bytes(text.encode())
    assert [row["text"] for row in read_file(tmp_path / "corpus.txt", "text").rows] == documents


@TXT_CORPORA
def test_a_streamed_txt_corpus_has_the_same_documents(text, documents, tmp_path):
    # `dataset_streaming: true` reads the file lazily; its documents are the ones a prepared run trains on.
    from hftune.data.streaming import _lines

    (tmp_path / "corpus.txt").write_bytes(text.encode())
    assert [row["text"] for row in _lines(tmp_path / "corpus.txt")] == documents


def test_a_txt_corpus_is_held_out_by_paragraph(tmp_path):
    paragraphs = [f"Document {i}.\nIts second line.\nIts third line." for i in range(40)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(paragraphs) + "\n")
    prepared = prepare_dataset(
        load_recipe("tiny_corpus"), data_files=tmp_path / "corpus.txt", eval_fraction=0.2
    )
    held_out = [row["text"] for row in prepared.eval]
    assert prepared.n_source_rows == 40 and held_out and set(held_out) <= set(paragraphs)
    assert sorted([*held_out, *(row["text"] for row in prepared.train)]) == sorted(paragraphs)
