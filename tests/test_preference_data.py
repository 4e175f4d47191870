"""Preference data for the reward model: pairwise / hh-rlhf / ranked converters, pair-level drop counts,
TRL's preference formats, the eval split by source row, and the synthetic fixtures' ground truth."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import synthetic
import yaml

from hftune.data import Recipe, Source, load_recipe, prepare_dataset
from hftune.errors import UserError

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "data_recipes" / "fixtures"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def recipe(converter: str, fmt: str = "preference", **keys) -> Recipe:
    return Recipe(
        name=converter, path=None, source=Source(path="unused.jsonl"), converter=converter, format=fmt, **keys
    )


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def by_source_row(prepared) -> dict[int, list[dict]]:
    rows: dict[int, list[dict]] = {}
    for i, row in zip(prepared.train_indices, prepared.train, strict=True):
        rows.setdefault(i, []).append(row)
    return rows


# --- ranked -> all pairs ----------------------------------------------------------------------------


def test_ranked_expands_every_prompt_into_all_correctly_ordered_pairs(caplog):
    source = read_jsonl(FIXTURES / "ranked.jsonl")
    with caplog.at_level("INFO", logger="hftune.data"):
        prepared = prepare_dataset(load_recipe("tiny_ranked"))
    tied = [i for i, r in enumerate(source) if len(set(r["ranks"])) < len(r["ranks"])]
    assert 0 < len(tied) < len(source) // 10
    assert prepared.dropped == {} and prepared.dropped_pairs == {"tie": len(tied)}
    assert prepared.n_pairs == len(prepared.train) == 6 * len(source) - len(tied)
    assert prepared.n_kept == len(source) == 200
    assert prepared.summary() == (
        f"kept 200 of 200 rows -> {prepared.n_pairs} pairs; dropped 0 rows; "
        f"dropped {len(tied)} pairs: tie {len(tied)}"
    )
    assert prepared.summary() in caplog.text and f"dropped {len(tied)} pairs as tie" in caplog.text

    for i, pairs in by_source_row(prepared).items():
        row = source[i]
        rank = dict(zip(row["completions"], row["ranks"], strict=True))
        assert len(pairs) == (5 if i in tied else 6)
        expected = [  # completion-index order, the better one chosen
            (a, b) if rank[a] < rank[b] else (b, a)
            for a, b in itertools.combinations(row["completions"], 2)
            if rank[a] != rank[b]
        ]
        got = [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs]
        assert got == expected
        assert all(p["prompt"] == [user(row["prompt"])] for p in pairs)
        correct = row["completions"][row["ranks"].index(1)]
        assert sum(c == correct for c, _ in got) == 3  # the best completion wins all three of its pairs


def test_ranked_scores_ties_and_bad_rows(tmp_path):
    rows = [
        {"prompt": "Q0", "completions": ["a", "b", "c", "d"], "scores": [0.5, 2.0, 2.0, -1]},
        {"prompt": "Q1", "completions": ["a", "b"], "scores": [1.0, 1.0]},  # every pair tied
        {"prompt": "Q2", "completions": ["a"], "scores": [1.0]},
        {"prompt": "Q3", "completions": ["a", "b"], "scores": [1.0]},
        {"prompt": "Q4", "completions": ["a", "b"], "scores": None},
        {"prompt": "Q5", "completions": ["a", " "], "scores": [1.0, 2.0]},
        {"prompt": "Q6", "completions": "a", "scores": [1.0]},
    ]
    prepared = prepare_dataset(recipe("ranked"), data_files=write_jsonl(tmp_path / "scored.jsonl", rows))
    got = [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in prepared.train]
    assert got == [("b", "a"), ("c", "a"), ("a", "d"), ("b", "d"), ("c", "d")]  # b-c tied
    assert prepared.dropped_pairs == {"tie": 1}
    assert prepared.dropped == {"tie": 1, "no_pairs": 1, "malformed": 2, "missing_field": 1, "empty_turn": 1}
    assert prepared.examples["malformed"] == [3, 6] and prepared.examples["tie"] == [1]

    both = [{"prompt": "Q", "completions": ["a", "b"], "ranks": [1, 2], "scores": [2.0, 1.0]}]
    with pytest.raises(UserError, match=r"row 0 \(0-based\) is bad: malformed: give exactly one of `ranks`"):
        prepare_dataset(recipe("ranked"), data_files=write_jsonl(tmp_path / "both.jsonl", both), strict=True)


def test_pair_level_drops_are_not_strict_mode_errors(tmp_path):
    rows = [{"prompt": "Q", "completions": ["a", "b", "c"], "ranks": [1, 2, 2]}]
    prepared = prepare_dataset(
        recipe("ranked"), data_files=write_jsonl(tmp_path / "t.jsonl", rows), strict=True
    )
    assert len(prepared.train) == 2 and prepared.dropped_pairs == {"tie": 1}


# --- hh-rlhf transcripts ----------------------------------------------------------------------------


def test_hh_transcripts_become_multi_turn_prompts():
    source = read_jsonl(FIXTURES / "hh_rlhf.jsonl")
    prepared = prepare_dataset(load_recipe("tiny_hh_rlhf"))
    assert prepared.dropped == {} and prepared.n_pairs == len(prepared.train) == 400
    n_turns = [len(row["prompt"]) for row in prepared.train]
    assert set(n_turns) == {1, 3, 5} and n_turns.count(1) < 300  # some multi-turn, most single
    for row, src in zip(prepared.train, source, strict=True):
        roles = [m["role"] for m in row["prompt"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        transcript = "".join(
            f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in row["prompt"]
        )
        assert src["chosen"] == f"{transcript}\n\nAssistant: {row['chosen'][0]['content']}"
        assert src["rejected"] == f"{transcript}\n\nAssistant: {row['rejected'][0]['content']}"


def test_hh_parsing_keeps_blank_lines_inside_a_turn_and_counts_bad_transcripts(tmp_path):
    head = "\n\nHuman: List two words.\n\nAssistant: Here:\n\napple\nbanana\n\nHuman: One more?\n\nAssistant:"
    rows = [
        {"chosen": f"{head} river", "rejected": f"{head} river river river"},
        {"chosen": "no speakers at all", "rejected": "\n\nHuman: Hi\n\nAssistant: Hello"},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hey\n\nAssistant: Yo"},
        {
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye",
            "rejected": "\n\nHuman: Hi\n\nAssistant: x",
        },
    ]
    prepared = prepare_dataset(recipe("hh_rlhf"), data_files=write_jsonl(tmp_path / "hh.jsonl", rows))
    assert prepared.train[0]["prompt"] == [
        user("List two words."),
        assistant("Here:\n\napple\nbanana"),
        user("One more?"),
    ]
    assert prepared.dropped == {"malformed": 1, "prompt_mismatch": 1, "no_assistant_turn": 1}


# --- pairwise ---------------------------------------------------------------------------------------


def test_pairwise_takes_conversations_or_texts_and_an_optional_margin(tmp_path):
    conversations = [
        {
            "chosen": [{"role": "system", "content": "Be exact."}, user("2+2?"), assistant("4.")],
            "rejected": [{"role": "system", "content": "Be exact."}, user("2+2?"), assistant("5.")],
        }
    ]
    prepared = prepare_dataset(
        recipe("pairwise"), data_files=write_jsonl(tmp_path / "conv.jsonl", conversations)
    )
    assert prepared.train.to_list() == [
        {
            "prompt": [{"role": "system", "content": "Be exact."}, user("2+2?")],
            "chosen": [assistant("4.")],
            "rejected": [assistant("5.")],
        }
    ]
    texts = [
        {"question": "2+2?", "good": "4.", "bad": "5.", "gap": 2},
        {"question": "3+3?", "good": "6.", "bad": "7.", "gap": None},
        {"question": None, "good": "6.", "bad": "7.", "gap": 1.5},
    ]
    mapping = {"prompt": "question", "chosen": "good", "rejected": "bad", "margin": "gap"}
    prepared = prepare_dataset(
        recipe("pairwise", mapping=mapping, system_prompt="Be brief."),
        data_files=write_jsonl(tmp_path / "text.jsonl", texts),
    )
    assert prepared.train.to_list() == [
        {
            "prompt": [{"role": "system", "content": "Be brief."}, user("2+2?")],
            "chosen": [assistant("4.")],
            "rejected": [assistant("5.")],
            "margin": 2.0,
        }
    ]
    assert prepared.dropped == {"missing_field": 2}  # a null margin and a null prompt
    mixed = [{"prompt": "2+2?", "chosen": [user("2+2?"), assistant("4.")], "rejected": "5."}]
    with pytest.raises(UserError, match=r"malformed: `rejected` is a str, not a list of turns"):
        prepare_dataset(
            recipe("pairwise", strict=True), data_files=write_jsonl(tmp_path / "mixed.jsonl", mixed)
        )


def test_missing_rejected_column_names_the_column_and_the_file(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "Hi", "chosen": "Hello."}])
    for name in ("tiny_preferences", "tiny_hh_rlhf"):
        with pytest.raises(UserError) as err:
            prepare_dataset(load_recipe(name), data_files=str(path))
        assert "column `rejected` not found" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(UserError, match=r"column `completions` not found in .*prefs\.jsonl"):
        prepare_dataset(load_recipe("tiny_ranked"), data_files=str(path))
    # A mapped margin must exist; an unmapped one may be absent.
    path = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "Hi", "chosen": "Hello.", "rejected": "Go."}])
    assert len(prepare_dataset(recipe("pairwise"), data_files=path).train) == 1
    with pytest.raises(UserError, match="column `gap` not found"):
        prepare_dataset(recipe("pairwise", mapping={"margin": "gap"}), data_files=path)


def test_bad_preferences_are_dropped_and_counted(chat_tokenizer):
    bad = str(FIXTURES / "bad_preferences.jsonl")
    prepared = prepare_dataset(load_recipe("tiny_preferences"), data_files=bad)
    expected = {k: v for k, v in synthetic.BAD_PREFERENCES_EXPECTED.items() if k != "too_long"}
    assert prepared.dropped == expected and prepared.dropped_pairs == {}
    n_bad = sum(synthetic.BAD_PREFERENCES_EXPECTED.values())
    assert prepared.n_source_rows == synthetic.BAD_PREFERENCES_GOOD + n_bad
    assert (
        len(prepared.train) == synthetic.BAD_PREFERENCES_GOOD + 1
    )  # the long row is fine without max_length

    prepared = prepare_dataset(
        load_recipe("tiny_preferences"), data_files=bad, tokenizer=chat_tokenizer, max_length=256
    )
    assert prepared.dropped == synthetic.BAD_PREFERENCES_EXPECTED
    assert len(prepared.train) == prepared.n_pairs == synthetic.BAD_PREFERENCES_GOOD
    with pytest.raises(UserError, match=r"row 2 \(0-based\) is bad: missing_field: `rejected`"):
        prepare_dataset(load_recipe("tiny_preferences"), data_files=bad, strict=True)


# --- length -----------------------------------------------------------------------------------------


def test_too_long_pairs_are_dropped_one_by_one_with_a_tokenizer(tmp_path, chat_tokenizer):
    long = " ".join(synthetic.WORDS * 4)
    rows = [
        {"prompt": "Q0", "completions": ["short a", long, "short b", "short c"], "ranks": [1, 4, 2, 3]},
        {"prompt": "Q1", "completions": [long, long + " x"], "ranks": [1, 2]},
        {"prompt": "Q2", "completions": ["yes", "no"], "ranks": [2, 1]},
    ]
    prepared = prepare_dataset(
        recipe("ranked"),
        data_files=write_jsonl(tmp_path / "long.jsonl", rows),
        tokenizer=chat_tokenizer,
        max_length=128,
    )
    assert prepared.dropped_pairs == {"too_long": 3} and prepared.dropped == {"too_long": 1}
    assert prepared.examples == {"too_long": [1]}
    assert [r["rejected"][0]["content"] for r in prepared.train] == ["short b", "short c", "short c", "yes"]
    assert prepared.summary() == (
        "kept 2 of 3 rows -> 4 pairs; dropped 1 rows: too_long 1; dropped 3 pairs: too_long 3"
    )
    # One length per pair before the cut: the longer of prompt+chosen and prompt+rejected.
    assert len(prepared.token_lengths) == 6 + 1 + 1
    lengths = [
        len(chat_tokenizer.apply_chat_template([user("Q0"), assistant(reply)], tokenize=True)["input_ids"])
        for reply in ("short a", long)
    ]
    assert prepared.token_lengths[0] == max(lengths) > 128  # pair 0-1: "short a" vs the long one


# --- formats and splits -----------------------------------------------------------------------------


def test_explicit_and_implicit_preference_rows(tmp_path):
    rows = [{"prompt": "2+2?", "chosen": "4.", "rejected": "5.", "margin": 1}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    explicit = prepare_dataset(recipe("pairwise"), data_files=path).train[0]
    implicit = prepare_dataset(recipe("pairwise", "implicit_preference"), data_files=path).train[0]
    assert explicit == {
        "prompt": [user("2+2?")],
        "chosen": [assistant("4.")],
        "rejected": [assistant("5.")],
        "margin": 1.0,
    }
    assert implicit == {
        "chosen": [user("2+2?"), assistant("4.")],
        "rejected": [user("2+2?"), assistant("5.")],
        "margin": 1.0,
    }


def test_prompt_only_format_ends_with_the_user_turn(tmp_path):
    path = tmp_path / "po.yaml"
    path.write_text(
        f"source: {{path: {FIXTURES / 'ultrachat.jsonl'}}}\nconverter: messages\nformat: prompt_only\n"
    )
    prepared = prepare_dataset(load_recipe(str(path)))
    for row, src in zip(prepared.train, synthetic.ultrachat_rows(400, seed=3), strict=True):
        assert set(row) == {"prompt"} and row["prompt"] == src["messages"][:-1]
        assert row["prompt"][-1]["role"] == "user"


@pytest.mark.parametrize("name", ["tiny_ranked", "tiny_preferences"])
def test_eval_split_takes_whole_source_rows(name):
    prepared = prepare_dataset(load_recipe(name), eval_fraction=0.2, seed=3)
    assert not set(prepared.train_indices) & set(prepared.eval_indices)
    # Rows are split by prompt: no eval prompt was seen in training, and about 20% of prompts are held out.
    train_prompts = {json.dumps(r["prompt"]) for r in prepared.train}
    eval_prompts = {json.dumps(r["prompt"]) for r in prepared.eval}
    assert not train_prompts & eval_prompts
    assert 0.12 < len(eval_prompts) / len(train_prompts | eval_prompts) < 0.28  # each prompt on its own
    assert len(prepared.train_indices) == len(prepared.train) and len(prepared.eval_indices) == len(
        prepared.eval
    )
    assert prepared.train_indices == sorted(prepared.train_indices)
    assert len(prepared.train) + len(prepared.eval) == prepared.n_pairs
    again = prepare_dataset(load_recipe(name), eval_fraction=0.2, seed=3)
    assert again.eval_indices == prepared.eval_indices and again.fingerprint == prepared.fingerprint
    assert f"(train {len(prepared.train)}, eval {len(prepared.eval)})" in prepared.summary()


# --- recipes ----------------------------------------------------------------------------------------


def test_preference_recipes_load_and_hub_ones_run_offline_on_fixtures():
    assert load_recipe("ultrafeedback").source == Source(
        hub="HuggingFaceH4/ultrafeedback_binarized", split="train_prefs"
    )
    assert load_recipe("hh_rlhf").source == Source(hub="Anthropic/hh-rlhf", split="train")
    for hub, tiny, file in (
        ("ultrafeedback", "tiny_preferences", "preferences.jsonl"),
        ("hh_rlhf", "tiny_hh_rlhf", "hh_rlhf.jsonl"),
    ):
        offline = prepare_dataset(load_recipe(hub), data_files=str(FIXTURES / file))
        assert offline.fingerprint == prepare_dataset(load_recipe(tiny)).fingerprint


def test_recipe_checks_cover_the_preference_kind(tmp_path):
    def write(name: str, **keys) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"source": {"path": "x.jsonl"}, **keys}))
        return str(path)

    with pytest.raises(
        UserError,
        match="`conversational` cannot be built by the `pairwise` converter; it fits: "
        "preference, implicit_preference",
    ):
        load_recipe(write("a", converter="pairwise", format="conversational"))
    with pytest.raises(
        UserError, match=r"`preference` cannot be built by the `alpaca` converter; it fits: .*prompt_only"
    ):
        load_recipe(write("b", converter="alpaca", format="preference"))
    with pytest.raises(
        UserError, match=r"`mapping\.rank`: not a field of the `ranked` converter \(did you mean `ranks`\?\)"
    ):
        load_recipe(write("c", converter="ranked", format="preference", mapping={"rank": "r"}))
    assert load_recipe(
        write("d", converter="hh_rlhf", format="preference", system_prompt="Be kind.")
    ).system_prompt
    with pytest.raises(UserError, match="cannot be built by the `ranked` converter"):
        prepare_dataset(recipe("ranked", "conversational"), data_files=FIXTURES / "ranked.jsonl")


# --- synthetic ground truth -------------------------------------------------------------------------


def test_preference_fixtures_prefer_the_correct_answer():
    rows = read_jsonl(FIXTURES / "preferences.jsonl")
    assert len(rows) == synthetic.FIXTURE_SIZES["preferences"] == 400
    assert len(read_jsonl(FIXTURES / "hh_rlhf.jsonl")) == synthetic.FIXTURE_SIZES["hh_rlhf"] == 400
    assert len(read_jsonl(FIXTURES / "ranked.jsonl")) == synthetic.FIXTURE_SIZES["ranked"] == 200
    fluent_but_wrong = 0
    for row in rows:
        assert set(row) == {"prompt", "prompt_id", "chosen", "rejected", "score_chosen", "score_rejected"}
        assert row["chosen"][0] == row["rejected"][0] == user(row["prompt"])
        assert row["score_chosen"] > row["score_rejected"]
        chosen, rejected = row["chosen"][1]["content"], row["rejected"][1]["content"]
        assert chosen != rejected and rejected.strip()
        if m := re.fullmatch(r"(-?\d+) ([-+*]) (\d+) = (-?\d+)\.", chosen):
            assert (
                int(m[4])
                == {"+": int(m[1]) + int(m[3]), "-": int(m[1]) - int(m[3]), "*": int(m[1]) * int(m[3])}[m[2]]
            )
        # A rejection that differs only in its numbers reads fluently; every other one is visibly broken.
        fluent_but_wrong += re.sub(r"-?\d+", "#", chosen) == re.sub(r"-?\d+", "#", rejected)
    assert 0 < fluent_but_wrong <= 0.1 * len(rows)
    # Every kind of corruption shows up, and one never returns the answer unchanged.
    rng = synthetic.random.Random(0)
    for how in synthetic.CORRUPTIONS:
        assert (
            synthetic.corrupt_answer("The capital of Peru is Lima.", rng, how)
            != "The capital of Peru is Lima."
        )


def test_pairwise_accepts_trls_explicit_prompt_format(tmp_path):
    row = {
        "prompt": [{"role": "user", "content": "What is 2 + 2?"}],
        "chosen": [{"role": "assistant", "content": "2 + 2 = 4."}],
        "rejected": [{"role": "assistant", "content": "4 4 4 4 4"}],
    }
    path = tmp_path / "trl.jsonl"
    path.write_text(json.dumps(row) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"source: {{path: {path}}}\nformat: preference\nconverter: pairwise\n")
    data = prepare_dataset(load_recipe(str(recipe)))
    assert data.train[0]["prompt"] == row["prompt"]
    assert data.train[0]["chosen"][0]["content"] == "2 + 2 = 4." and not data.dropped


def test_non_finite_scores_are_malformed_rows(tmp_path):
    rows = [{"prompt": "Q", "completions": ["a", "b", "c"], "scores": [1.0, float("nan"), 0.5]}]
    path = tmp_path / "ranked.jsonl"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in rows)
        + json.dumps({"prompt": "Q2", "completions": ["a", "b"], "scores": [1.0, 0.0]})
        + "\n"
    )
    data = prepare_dataset(load_recipe("tiny_ranked"), data_files=str(path))
    assert data.dropped == {"malformed": 1} and len(data.train) == 1
