"""Prepared data is cached by content: the same rows, tokenizer and settings are read back (the same rows),
and a change to any of them, the data file's bytes included, prepares them again."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import pytest

from hftune.data import cache, load_recipe
from hftune.data.mixture import Part, prepare_parts

REPO = Path(__file__).resolve().parent.parent
SETTINGS = dict(max_length=128, strict=False, eval_fraction=0.1, seed=42, too_long="drop")


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HFTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "data"


def prepare(parts, tokenizer, calls: list, **settings):
    settings = {**SETTINGS, **settings}

    def compute():
        calls.append(1)
        return prepare_parts(parts, tokenizer=tokenizer, exclude=frozenset(), formats=None, **settings)

    key = cache.key(parts, tokenizer, {**settings, "exclude": frozenset(), "formats": None})
    return cache.cached(key, compute)


def test_a_rerun_reads_the_same_rows_back_and_any_change_prepares_again(
    isolated_cache, tmp_path, chat_tokenizer, caplog
):
    data_file = tmp_path / "chats.jsonl"
    shutil.copy(REPO / "data_recipes/fixtures/ultrachat.jsonl", data_file)
    parts = [Part(load_recipe("tiny_ultrachat"), str(data_file))]
    calls: list = []
    first = prepare(parts, chat_tokenizer, calls)
    with caplog.at_level(logging.INFO, logger="hftune"):
        again = prepare(parts, chat_tokenizer, calls)
    assert len(calls) == 1 and "read from" in caplog.text
    assert again.fingerprint == first.fingerprint and list(again.train) == list(first.train)
    assert again.train_keys == first.train_keys and again.dropped == first.dropped
    assert again.token_lengths == first.token_lengths and again.n_source_rows == first.n_source_rows
    prepare(parts, chat_tokenizer, calls, max_length=64)  # another setting
    assert len(calls) == 2
    text = data_file.read_text()
    data_file.write_text(text.replace("robrah", "robrahh", 1))  # the same file, other bytes (a reply)
    changed = prepare(parts, chat_tokenizer, calls)
    assert len(calls) == 3, calls
    assert changed.fingerprint != first.fingerprint
    chat_tokenizer.chat_template = chat_tokenizer.chat_template + " "  # another template
    try:
        prepare(parts, chat_tokenizer, calls)
    finally:
        chat_tokenizer.chat_template = chat_tokenizer.chat_template[:-1]
    assert len(calls) == 4


def test_runs_preparing_the_same_rows_at_once_prepare_them_once(isolated_cache, chat_tokenizer):
    """Two runs (seeds side by side, parallel tests) that miss the cache together: one prepares and saves,
    the other waits and reads it back; neither saves over the entry the other one reads."""
    parts = [Part(load_recipe("tiny_alpaca"))]
    calls: list = []
    start = threading.Barrier(2)
    results: list = []

    def run():
        start.wait()
        results.append(prepare(parts, chat_tokenizer, calls))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 2
    assert list(results[0].train) == list(results[1].train)
    assert len(list(isolated_cache.iterdir())) == 1  # one entry (the lock is kept outside the entries)


def test_a_cache_that_cannot_be_written_never_fails_the_run(tmp_path, monkeypatch, chat_tokenizer):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("HFTUNE_CACHE", str(blocker / "cache"))  # nothing can be made below a file
    calls: list = []
    data = prepare([Part(load_recipe("tiny_alpaca"))], chat_tokenizer, calls)
    assert len(calls) == 1 and len(data.train) > 0


def test_hub_data_is_not_cached():
    recipe = load_recipe("ultrachat")  # a Hub source: its content is unknown without reading it
    assert cache.key([Part(recipe)], None, SETTINGS) is None


def test_a_damaged_entry_is_prepared_again(isolated_cache, tmp_path, chat_tokenizer):
    parts = [Part(load_recipe("tiny_alpaca"))]
    calls: list = []
    prepare(parts, chat_tokenizer, calls)
    (entry,) = isolated_cache.iterdir()
    (entry / "prepared.json").write_text("{not json")
    data = prepare(parts, chat_tokenizer, calls)
    assert len(calls) == 2 and len(data.train) > 0


def test_a_stage_with_data_cache_false_prepares_afresh(isolated_cache, tmp_path, tiny_llama):
    from hftune.stages import sft

    # The model by path: `tiny:llama` would build the tiny model again in the isolated cache.
    argv = ["--output_dir", str(tmp_path / "out"), "--max_samples", "32", "--model_name_or_path", tiny_llama]
    sft.prepare(sft.parse(str(REPO / "configs/tiny/sft.yaml"), [*argv, "--data_cache", "false"]))
    assert not isolated_cache.exists()
    sft.prepare(sft.parse(str(REPO / "configs/tiny/sft.yaml"), argv))
    assert len(list(isolated_cache.iterdir())) == 1


def test_a_truncated_or_overwritten_entry_is_named_once_and_prepared_again(
    isolated_cache, chat_tokenizer, caplog
):
    parts = [Part(load_recipe("tiny_alpaca"))]
    calls: list = []
    rows = list(prepare(parts, chat_tokenizer, calls).train)  # now: the entry's files are memory-mapped
    (entry,) = isolated_cache.iterdir()
    (arrow,) = (entry / "train").glob("*.arrow")
    whole = arrow.read_bytes()
    # Token ids overwritten in place: the same size, the file still loads, the rows are wrong.
    middle = len(whole) // 2
    arrow.write_bytes(
        whole[:middle] + bytes(b ^ 0xFF for b in whole[middle : middle + 64]) + whole[middle + 64 :]
    )
    with caplog.at_level(logging.WARNING, logger="hftune"):
        again = prepare(parts, chat_tokenizer, calls)
    assert len(calls) == 2 and list(again.train) == rows
    damaged = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(damaged) == 1 and str(entry) in damaged[0] and "train/" in damaged[0], damaged
    (arrow,) = (entry / "train").glob("*.arrow")
    arrow.write_bytes(arrow.read_bytes()[: len(whole) // 3])  # a truncated file
    again = prepare(parts, chat_tokenizer, calls)
    assert len(calls) == 3 and list(again.train) == rows
    prepare(parts, chat_tokenizer, calls)  # the rebuilt entry is whole: read back
    assert len(calls) == 3


def test_a_transform_imports_its_helper_beside_it_and_a_changed_helper_prepares_again(
    isolated_cache, tmp_path, chat_tokenizer
):
    import sys

    (tmp_path / "helper_31.py").write_text("SUFFIX = '!'\n")
    (tmp_path / "hook_31.py").write_text(
        "from helper_31 import SUFFIX\n\n\n"
        "def shout(row):\n    return {**row, 'output': row['output'] + SUFFIX}\n"
    )
    shutil.copy(REPO / "data_recipes/fixtures/alpaca.jsonl", tmp_path / "alpaca.jsonl")
    (tmp_path / "t.yaml").write_text(
        "source: {path: alpaca.jsonl}\nformat: conversational\nconverter: alpaca\ntransform: hook_31:shout\n"
    )
    path_before = list(sys.path)
    calls: list = []
    data = prepare([Part(load_recipe(str(tmp_path / "t.yaml")))], chat_tokenizer, calls)
    assert data.train[0]["messages"][-1]["content"].endswith("!")
    # The folder was importable only while the transform loaded, and its helper is not left behind for
    # another recipe's `helper_31`.
    assert sys.path == path_before and "helper_31" not in sys.modules
    prepare([Part(load_recipe(str(tmp_path / "t.yaml")))], chat_tokenizer, calls)
    assert len(calls) == 1  # a local transform's rows are cached too
    (tmp_path / "helper_31.py").write_text("SUFFIX = '?'\n")  # only the helper changes
    (tmp_path / "t.yaml").write_text((tmp_path / "t.yaml").read_text() + "\n")  # parse the hook again
    data = prepare([Part(load_recipe(str(tmp_path / "t.yaml")))], chat_tokenizer, calls)
    assert len(calls) == 2 and data.train[0]["messages"][-1]["content"].endswith("?")


def test_a_byte_identical_file_under_another_name_or_folder_reads_the_same_entry(
    isolated_cache, tmp_path, chat_tokenizer, caplog
):
    """The key is the data's content: a copy of the file under another name, in another folder, read by a
    recipe of another name (and description) with the same settings, is a hit; the entry read back names
    the file this run read. One byte changed is a miss."""
    data_file = tmp_path / "chats.jsonl"
    shutil.copy(REPO / "data_recipes/fixtures/ultrachat.jsonl", data_file)
    calls: list = []
    first = prepare([Part(load_recipe("tiny_ultrachat"), str(data_file))], chat_tokenizer, calls)
    assert first.source == str(data_file)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy = elsewhere / "renamed.jsonl"
    shutil.copy(data_file, copy)
    recipe_text = (REPO / "data_recipes/tiny_ultrachat.yaml").read_text()
    (elsewhere / "my_chats.yaml").write_text(
        recipe_text.replace("fixtures/ultrachat.jsonl", "renamed.jsonl").replace(
            "description: Synthetic", "description: The same chats, renamed, of"
        )
    )
    renamed = load_recipe(str(elsewhere / "my_chats.yaml"))  # its own source: the copy beside it
    assert renamed.name != "tiny_ultrachat" and renamed.source.path == "renamed.jsonl"
    for part in (Part(load_recipe("tiny_ultrachat"), str(copy)), Part(renamed)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hftune"):
            again = prepare([part], chat_tokenizer, calls)
        assert len(calls) == 1 and "read from" in caplog.text, (part, calls)
        assert list(again.train) == list(first.train) and again.fingerprint == first.fingerprint
        assert again.train_keys == first.train_keys and again.eval_keys == first.eval_keys
        assert again.source == str(copy)  # this run's file, not the one the entry was saved from
    assert len(list(isolated_cache.iterdir())) == 1

    copy.write_bytes(copy.read_bytes().replace(b"robrah", b"robrah ", 1))  # one reply, one byte more
    changed = prepare([Part(renamed)], chat_tokenizer, calls)
    assert len(calls) == 2 and changed.fingerprint != first.fingerprint


def test_a_moved_folder_is_the_same_data_but_the_names_of_its_files_are_content(
    isolated_cache, tmp_path, chat_tokenizer
):
    """A folder source (`dataset_name: folder`) picks its files by name (the split's), so the names inside
    it are keyed; where the folder lies is not."""
    from hftune.data.detect import dataset_recipe

    first, moved = tmp_path / "chats", tmp_path / "moved" / "other"
    first.mkdir()
    shutil.copy(REPO / "data_recipes/fixtures/ultrachat.jsonl", first / "train.jsonl")
    shutil.copytree(first, moved)
    calls: list = []
    rows = list(prepare([Part(dataset_recipe(str(first)))], chat_tokenizer, calls).train)
    again = prepare([Part(dataset_recipe(str(moved)))], chat_tokenizer, calls)
    assert len(calls) == 1 and list(again.train) == rows and again.source == str(moved)
    (moved / "train.jsonl").rename(moved / "train-00000.jsonl")  # the same bytes, another name inside
    assert cache.key([Part(dataset_recipe(str(moved)))], chat_tokenizer, SETTINGS) != cache.key(
        [Part(dataset_recipe(str(first)))], chat_tokenizer, SETTINGS
    )


def test_a_mixture_part_s_name_is_keyed_and_each_part_is_named_as_this_run_reads_it(
    isolated_cache, tmp_path, chat_tokenizer
):
    """Weighting seeds each part's sample with its recipe's name, so in a mixture the name decides rows (a
    miss); a part's data moved elsewhere is a hit that names the files read now."""
    alpaca, dolly = tmp_path / "a.jsonl", tmp_path / "d.jsonl"
    shutil.copy(REPO / "data_recipes/fixtures/alpaca.jsonl", alpaca)
    shutil.copy(REPO / "data_recipes/fixtures/dolly.jsonl", dolly)
    calls: list = []
    mixture = [
        Part(load_recipe("tiny_alpaca"), str(alpaca), weight=0.5),
        Part(load_recipe("tiny_dolly"), str(dolly)),
    ]
    first = prepare(mixture, chat_tokenizer, calls)
    moved = tmp_path / "moved.jsonl"
    shutil.copy(alpaca, moved)
    again = prepare([Part(mixture[0].recipe, str(moved), weight=0.5), mixture[1]], chat_tokenizer, calls)
    assert len(calls) == 1 and list(again.train) == list(first.train)
    assert [part["source"] for part in again.sources] == [str(moved), str(dolly)]
    assert again.source == f"{moved} + {dolly}"
    (tmp_path / "other_name.yaml").write_text((REPO / "data_recipes/tiny_alpaca.yaml").read_text())
    other = load_recipe(str(tmp_path / "other_name.yaml"))
    prepare([Part(other, str(alpaca), weight=0.5), mixture[1]], chat_tokenizer, calls)
    assert len(calls) == 2
