"""`hftune label`'s flow through a labelling session, on the server's side: undo (a retraction appended,
never a rewrite), the second pass over skipped items, the end page, the one-current-answer rule, labeller
names, guidelines and hints, and the training file derived from the current answers (aggregated as the
`aggregate` key says) that recipe.yaml points the reward stage at."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from bad_input import refused
from test_label import items_data, page_client

from hftune.errors import UserError
from hftune.label import app as label_app
from hftune.label import config as label_config
from hftune.label import serve as label_serve
from hftune.label.store import LabelStore, read_rows, write_training

REPO = Path(__file__).resolve().parent.parent


def hint_for(prompt: str) -> str | None:
    """A `hint: test_label_flow:hint_for` function: a line for some prompts, none for others."""
    return f"check the arithmetic in: {prompt}" if "1" in prompt else None


def session(tmp_path: Path, completions: list[list[str]], aggregate: str = "all", **kwargs):
    """A label server over `completions` writing into tmp_path, and a client writing as its page does."""
    store = LabelStore(tmp_path, aggregate)
    labelling = label_app.Labelling(items_data(completions), store, **kwargs)
    return store, labelling, page_client(label_app.create_app(labelling))


def submit_ranks(client, labeller: str, by_text: dict[str, int]):
    """Rank the item the server serves `labeller` now, by the completions' texts (1 = best)."""
    item = client.get("/api/next", params={"labeller": labeller}).json()["item"]
    ranks = [by_text[c["text"]] for c in item["completions"]]
    return client.post(
        "/api/submit", json={"labeller": labeller, "item": item["id"], "action": "rank", "ranks": ranks}
    )


def act(client, labeller: str, action: str, **extra):
    item = client.get("/api/next", params={"labeller": labeller}).json()["item"]
    return client.post(
        "/api/submit", json={"labeller": labeller, "item": item["id"], "action": action, **extra}
    )


def training(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]


ABC = {"a": 1, "b": 2, "c": 3}
CBA = {"a": 3, "b": 2, "c": 1}


def test_undo_appends_a_retraction_and_the_training_file_follows_the_current_answers(tmp_path):
    store, _, client = session(tmp_path, [["a", "b", "c"], ["x", "y", "z"]])
    assert (tmp_path / "train.jsonl").read_text() == ""  # written at start, before any answer
    assert submit_ranks(client, "ann", ABC).json()["can_undo"] is True
    assert [(r["item"], r["ranks"]) for r in training(tmp_path)] == [("item0", [1, 2, 3])]

    undone = client.post("/api/undo", json={"labeller": "ann"})
    page = undone.json()
    assert undone.status_code == 200 and page["undone"] == "item0" and page["item"]["id"] == "item0"
    assert page["done"] == 0 and page["can_undo"] is False and page["counts"]["ranked"] == 0
    rows = read_rows(tmp_path / "labels.jsonl")
    assert [r["status"] for r in rows] == ["ranked", "retracted"]  # the file keeps both
    assert rows[1]["retracts"] == {"line": 1, "time": rows[0]["time"], "status": "ranked"}
    assert training(tmp_path) == []
    assert '"0 rankings' not in (tmp_path / "recipe.yaml").read_text()
    assert "0 rankings by 0 labeller(s) -> 0 rows, 0 pairs" in (tmp_path / "recipe.yaml").read_text()

    assert submit_ranks(client, "ann", CBA).json()["saved"] is True  # ranked again, the other way round
    assert [(r["item"], r["ranks"]) for r in training(tmp_path)] == [("item0", [3, 2, 1])]
    assert len(read_rows(tmp_path / "labels.jsonl")) == 3
    # Nothing to undo: 400; an undo is a write, so only this run's page may send it.
    assert client.post("/api/undo", json={"labeller": "bob"}).status_code == 400
    from starlette.testclient import TestClient

    assert TestClient(client.app).post("/api/undo", json={"labeller": "ann"}).status_code == 403
    store.close()
    # A restart computes the same current answers from the file, and writes the same training file.
    before = (tmp_path / "train.jsonl").read_bytes()
    (tmp_path / "train.jsonl").unlink()
    reopened = LabelStore(tmp_path)
    assert reopened.done("ann") == {"item0"} and (tmp_path / "train.jsonl").read_bytes() == before
    reopened.close()


def test_skipped_items_come_back_once_then_the_end_page_counts_and_names_the_next_commands(tmp_path):
    store, labelling, client = session(tmp_path, [["a", "b", "c"]] * 3)
    page = act(client, "ann", "skip").json()
    assert (page["pass"], page["item"]["id"], page["done"], page["counts"]) == (
        "first",
        "item1",
        0,  # a first-pass skip is no final answer
        {"ranked": 0, "skipped": 1, "flagged": 0},
    )
    # The skipped item is not answered again while the first pass is on (another tab): refused.
    early = client.post(
        "/api/submit", json={"labeller": "ann", "item": "item0", "action": "flag", "flag": "broken"}
    )
    assert early.status_code == 409 and "come back" in early.json()["error"]
    submit_ranks(client, "ann", ABC)
    page = act(client, "ann", "flag", flag="unsafe").json()
    assert (page["pass"], page["item"]["id"], page["item"]["number"], page["done"]) == (
        "skipped",
        "item0",
        1,
        2,
    )

    page = submit_ranks(client, "ann", CBA).json()  # the second-pass answer supersedes the skip
    assert page["item"] is None and page["done"] == 3 and page["pass"] == "skipped"
    out = str(tmp_path)
    assert page["end"] == {
        "ranked": 2,
        "skipped": 0,
        "flagged": 1,
        "pairs": 6,
        "next": [
            f"hftune label stats {out}",
            f"hftune reward --model_name_or_path some/model --data_recipe {out}/recipe.yaml "
            f"--output_dir {out}-reward",
        ],
    }
    assert [r["status"] for r in read_rows(tmp_path / "labels.jsonl")] == [
        "skipped",
        "ranked",
        "flagged",
        "ranked",
    ]
    assert sorted(r["item"] for r in training(tmp_path)) == ["item0", "item1"]

    # Undo the second-pass answer: the skip stands again and the item is served once more; skipping it
    # again is then its final answer.
    page = client.post("/api/undo", json={"labeller": "ann"}).json()
    assert (page["undone"], page["item"]["id"], page["pass"], page["can_undo"]) == (
        "item0",
        "item0",
        "skipped",
        True,
    )
    page = act(client, "ann", "skip").json()
    assert page["item"] is None and page["end"]["skipped"] == 1 and page["end"]["pairs"] == 3
    assert [r["item"] for r in training(tmp_path)] == ["item1"]

    # One current answer: the same answer resent is saved without a row; another one needs an undo first.
    rows = len(read_rows(tmp_path / "labels.jsonl"))
    again = client.post(
        "/api/submit", json={"labeller": "ann", "item": "item2", "action": "flag", "flag": "unsafe"}
    )
    assert again.json()["saved"] is True and len(read_rows(tmp_path / "labels.jsonl")) == rows
    other = client.post("/api/submit", json={"labeller": "ann", "item": "item2", "action": "skip"})
    assert other.status_code == 409 and other.json()["saved"] is False and "undo" in other.json()["error"]
    assert len(read_rows(tmp_path / "labels.jsonl")) == rows
    # The next commands run as shown: the reward command parses into the config it names.
    from hftune.stages import reward

    args = shlex.split(labelling.next[1])
    assert args[:2] == ["hftune", "reward"]
    cfg = reward.parse(None, args[2:])
    assert cfg.hftune.data_recipe == f"{out}/recipe.yaml" and cfg.model.model_name_or_path == "some/model"
    store.close()


def test_names_are_normalised_one_labeller_keeps_its_first_spelling_and_the_names_are_listed(tmp_path):
    store, _, client = session(tmp_path, [["a", "b"]] * 3)
    assert client.get("/api/labellers").json() == {"labellers": []}
    assert submit_ranks(client, "  Bob ", {"a": 1, "b": 2}).json()["labeller"] == "Bob"
    page = client.get("/api/next", params={"labeller": "bob"}).json()
    assert page["labeller"] == "Bob" and page["done"] == 1 and page["item"]["id"] == "item1"
    act(client, "BOB", "skip")
    submit_ranks(client, "Zoe\u0308", {"a": 2, "b": 1})  # decomposed ë: the same as the composed one
    assert client.get("/api/next", params={"labeller": "zoë"}).json()["done"] == 1
    submit_ranks(client, "Mary \u00a0  Ann", {"a": 1, "b": 2})
    assert client.get("/api/labellers").json() == {"labellers": ["Bob", "Mary Ann", "Zoë"]}
    assert [r["labeller"] for r in read_rows(tmp_path / "labels.jsonl")] == ["Bob", "Bob", "Zoë", "Mary Ann"]
    for bad in ("", "   ", "a\nb", "a\tb", "x" * 65):  # control characters are refused, not collapsed
        assert client.get("/api/next", params={"labeller": bad}).status_code == 400
    store.close()

    # A file written before names were normalised: "Ann" and "ann" are one labeller, shown as first spelt.
    old = tmp_path / "old"
    old.mkdir()
    rows = [
        {
            "status": "ranked",
            "labeller": name,
            "item": item,
            "ranks": [1, 2],
            "prompt": "Q?",
            "completions": ["a", "b"],
        }
        for name, item in (("Ann", "item0"), ("ann", "item1"))
    ]
    (old / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    reopened = LabelStore(old)
    assert reopened.labellers() == ["Ann"] and reopened.done("ANN") == {"item0", "item1"}
    assert write_training(old)["labellers"] == 1
    reopened.close()


def test_guidelines_hints_and_truncated_completions_reach_the_page(tmp_path):
    guide = tmp_path / "guide.md"
    guide.write_text("# Prefer\n\n<b>correct</b> answers over long ones.\n")
    text = label_serve.guidelines(str(guide))
    assert text == guide.read_text()
    assert label_serve.guidelines("Prefer short answers.") == "Prefer short answers."
    data = items_data([["a", "b", "c"], ["x", "y", "z"]])
    data["items"][0]["ended"] = [True, False, True]  # "b" hit max_new_tokens
    function = label_serve.hints(label_serve.hint_function("test_label_flow:hint_for"), data["items"])
    assert function == {"item1": "check the arithmetic in: Question 1?"}  # no line for item0
    fixed = label_serve.hints(label_serve.hint_function("Is it safe: yes or no?"), data["items"])
    assert fixed == {"item0": "Is it safe: yes or no?", "item1": "Is it safe: yes or no?"}
    store = LabelStore(tmp_path)
    client = page_client(
        label_app.create_app(label_app.Labelling(data, store, guidelines=text, hints=function))
    )
    page = client.get("/api/next", params={"labeller": "ann"}).json()
    assert page["guidelines"] == text and page["item"]["hint"] is None
    assert {c["text"]: c["truncated"] for c in page["item"]["completions"]} == {
        "a": False,
        "b": True,
        "c": False,
    }
    page = submit_ranks(client, "ann", ABC).json()
    assert page["item"]["hint"] == "check the arithmetic in: Question 1?"
    assert not any(c["truncated"] for c in page["item"]["completions"])
    store.close()
    with pytest.raises(UserError, match="`hint`: failed on item item0: ZeroDivisionError"):
        label_serve.hints(lambda prompt: str(1 / 0), data["items"])


@pytest.mark.parametrize(
    ("flag", "value", "mentions"),
    [
        ("--guidelines", "missing.md", ["`guidelines`", "missing.md"]),
        ("--hint", "no_such_hint_module:line", ["`hint`", "no_such_hint_module"]),
        ("--hint", "json:no_such_function", ["`hint`", "no_such_function"]),
        ("--aggregate", "loudest", ["`aggregate`", "loudest"]),
        ("--aggregate", "judge:bob", ["`aggregate`", "labeller:NAME"]),
    ],
)
def test_a_bad_guidelines_hint_or_aggregate_is_one_line_naming_the_key_and_nothing_is_written(
    tmp_path, capsys, flag, value, mentions
):
    argv = [
        "label",
        "--model_name_or_path",
        "m",
        "--data_recipe",
        "tiny_alpaca",
        "--output_dir",
        "out",
        flag,
        value,
    ]
    err = refused(argv, tmp_path, capsys, mentions=mentions)
    assert flag != "--guidelines" or len(err.strip().splitlines()) == 1


def test_aggregation_all_majority_and_one_labeller(tmp_path):
    store, _, client = session(tmp_path, [["a", "b", "c"], ["a", "b", "c"]], aggregate="majority")
    submit_ranks(client, "ann", {"a": 1, "b": 2, "c": 3})
    submit_ranks(client, "bob", {"a": 1, "b": 3, "c": 2})  # item0: they agree on a, not on b vs c
    submit_ranks(client, "ann", {"a": 1, "b": 2, "c": 2})  # item1: ann ties b and c
    submit_ranks(client, "bob", {"a": 2, "b": 1, "c": 3})
    # Majority: per item and pair, the preference of those who told the two apart; a 1-1 vote is dropped.
    majority = [(r["item"], r["completions"], r["ranks"], r["votes"]) for r in training(tmp_path)]
    assert majority == [
        ("item0", ["a", "b"], [1, 2], [2, 0]),
        ("item0", ["a", "c"], [1, 2], [2, 0]),
        ("item1", ["a", "c"], [1, 2], [2, 0]),
        ("item1", ["b", "c"], [1, 2], [1, 0]),  # only bob told b and c apart
    ]
    recipe = (tmp_path / "recipe.yaml").read_text()
    assert "aggregate majority: 4 rankings by 2 labeller(s) -> 4 rows, 4 pairs" in recipe
    assert "source: {path: train.jsonl}" in recipe and "converter: ranked" in recipe
    assert write_training(tmp_path, "all") == {
        "aggregate": "all",
        "rankings": 4,
        "labellers": 2,
        "rows": 4,
        "pairs": 3 + 3 + 2 + 3,  # ann's tie gives one pair fewer
    }
    assert {(r["labeller"], r["item"]) for r in training(tmp_path)} == {
        ("ann", "item0"),
        ("bob", "item0"),
        ("ann", "item1"),
        ("bob", "item1"),
    }
    assert write_training(tmp_path, "labeller:ANN")["pairs"] == 5
    assert [(r["labeller"], r["ranks"]) for r in training(tmp_path)] == [
        ("ann", [1, 2, 3]),
        ("ann", [1, 2, 2]),
    ]
    store.close()
    cfg = label_config.parse(
        None, ["--model_name_or_path", "m", "--data_recipe", "x", "--aggregate", "labeller:ann"]
    )
    assert cfg.hftune.aggregate == "labeller:ann"


def test_an_old_recipe_on_labels_jsonl_still_reads_and_the_new_one_reads_the_derived_rows(tmp_path):
    from hftune.data import prepare_dataset

    store, _, client = session(tmp_path, [["a", "b", "c"]] * 3)
    submit_ranks(client, "ann", ABC)
    submit_ranks(client, "ann", CBA)
    client.post("/api/undo", json={"labeller": "ann"})
    act(client, "ann", "skip")
    store.close()
    (tmp_path / "old.yaml").write_text(
        "source: {path: labels.jsonl}\nformat: preference\nconverter: ranked\n"
        "transform: hftune.label.store:ranked_only\n"
    )
    old = prepare_dataset(str(tmp_path / "old.yaml"), eval_fraction=0)
    assert old.n_source_rows == 4 and len(old.train) == 6  # it cannot know the second ranking was undone
    new = prepare_dataset(str(tmp_path / "recipe.yaml"), eval_fraction=0)
    assert new.n_source_rows == 1 and len(new.train) == 3


@pytest.mark.slow(20)
def test_a_reward_model_trains_on_the_derived_recipe_with_the_next_command(tmp_path, tiny_llama):
    from hftune.stages import reward

    out = tmp_path / "labels"
    out.mkdir()
    data = items_data([["Paris.", "Lyon, I think.", "No idea."], ["4", "5", "four-ish"]])
    data["sampling"]["model"] = tiny_llama
    (out / "items.json").write_text(json.dumps(data))
    store = LabelStore(out)
    labelling = label_app.Labelling(data, store)
    client = page_client(label_app.create_app(labelling))
    submit_ranks(client, "ann", {"Paris.": 1, "Lyon, I think.": 2, "No idea.": 3})
    submit_ranks(client, "ann", {"4": 3, "5": 2, "four-ish": 1})
    client.post("/api/undo", json={"labeller": "ann"})  # a change of mind on item1 ...
    submit_ranks(client, "ann", {"4": 1, "5": 3, "four-ish": 2})  # ... ranked again
    submit_ranks(client, "bob", {"Paris.": 1, "Lyon, I think.": 3, "No idea.": 2})
    store.close()
    assert (
        "aggregate all: 3 rankings by 2 labeller(s) -> 3 rows, 9 pairs" in (out / "recipe.yaml").read_text()
    )
    args = shlex.split(labelling.next[1])[2:]
    extra = ["--eval_fraction", "0", "--max_steps", "2", "--per_device_train_batch_size", "3"]
    reward.run(reward.parse(str(REPO / "configs/tiny/reward.yaml"), args + extra))
    manifest = json.loads((tmp_path / "labels-reward" / "manifest.json").read_text())
    assert manifest["data"]["recipe"] == "recipe" and "train.jsonl" in str(manifest["data"]["source"])
    assert manifest["data"]["n_source_rows"] == 3 and manifest["data"]["n_train"] == 9
    # The reward stage's data counts say how the rankings were aggregated, in the recipe's words.
    assert "aggregate all: 3 rankings by 2 labeller(s)" in manifest["data"]["description"]
