"""Active labelling: items scored by a reward model at sampling time and served where it is least sure
(`order: uncertainty`), a machine labeller (`hftune label auto`), and how far people agree with it
(`hftune label stats`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hftune.cli import main
from hftune.errors import UserError
from hftune.label import auto, serve
from hftune.label import config as label_config
from hftune.label import items as label_items
from hftune.label import stats as label_stats
from hftune.label.config import LabelSettings


def says_reference(prompt: str, response: str, reference: str | None) -> float:
    """A verifier for the synthetic items below: a reply passes when it is the reference; "boom" breaks it."""
    if response == "boom":
        raise ValueError("cannot read this reply")
    return float(response == reference)


VERIFIER = f"{__name__}:says_reference"


def scored(item_id: str, scores: list[float], verified: list[bool | None] | None = None) -> dict:
    item = {"id": item_id, "completions": [f"{item_id}-{i}" for i in range(len(scores))], "scores": scores}
    return item if verified is None else {**item, "verified": verified}


def test_uncertainty_serves_disagreements_first_then_the_smallest_margins():
    def items() -> list[dict]:
        return [
            scored("sure", [5.0, 1.0, 0.0], [True, False, False]),
            # All one text: nothing to rank, so no margin and served last.
            {**scored("one-text", [1.0, 1.0, 1.0], [None] * 3), "completions": ["same"] * 3},
            scored("unsure", [1.0, 0.9, 0.0], [None, None, None]),
            scored("top-two-tie", [2.0, 0.0, 2.0], [True, False, True]),
            # Two copies of the top text: the margin is to the best other text, not 0.
            {**scored("copies", [2.0, 2.0, 1.5], [None] * 3), "completions": ["x", "x", "y"]},
            # The reward model's favourite fails the verifier while another completion passes.
            scored("disagree", [3.0, 0.0, 0.0], [False, True, None]),
        ]

    recipe = label_items.serving_order(items(), "recipe")
    assert [i["id"] for i in recipe] == ["sure", "one-text", "unsure", "top-two-tie", "copies", "disagree"]
    assert [i["margin"] for i in recipe] == pytest.approx([4.0, None, 0.1, 0.0, 0.5, 3.0])
    assert [i["disagreement"] for i in recipe] == [False, False, False, False, False, True]
    uncertain = label_items.serving_order(items(), "uncertainty")
    assert [i["id"] for i in uncertain] == ["disagree", "top-two-tie", "unsure", "copies", "sure", "one-text"]
    assert label_items.margins(uncertain) == pytest.approx([3.0, 0.0, 0.1, 0.5, 4.0, None])
    assert label_items.mean_margin(uncertain[1:3]) == pytest.approx(0.05)
    assert label_items.mean_margin(uncertain[4:]) == pytest.approx(4.0)  # the item without one left out
    # Without a verifier, the margin alone orders.
    plain = [{k: v for k, v in i.items() if k != "verified"} for i in items()]
    assert [i["id"] for i in label_items.serving_order(plain, "uncertainty")] == [
        "top-two-tie", "unsure", "copies", "disagree", "sure", "one-text",
    ]  # fmt: skip


def args(tmp_path: Path, *more: str) -> list[str]:
    return ["--model_name_or_path", "m", "--data_recipe", "tiny_alpaca", "--output_dir", str(tmp_path), *more]


def test_uncertainty_without_a_reward_model_is_refused_naming_the_key(tmp_path, capsys):
    out = tmp_path / "labels"
    assert main(["label", *args(out, "--order", "uncertainty")]) == 2
    error = capsys.readouterr().err
    assert "`reward_model`: required by `order: uncertainty`" in error and not out.exists()
    with pytest.raises(UserError, match="`order`: one of recipe, uncertainty"):
        label_config.parse(None, args(out, "--order", "random"))
    with pytest.raises(UserError, match="`verifier`: needs a `reward_model`"):
        label_config.parse(None, args(out, "--verifier", VERIFIER))
    cfg = label_config.parse(None, args(out, "--order", "uncertainty", "--reward_model", "rm"))
    assert cfg.hftune.order == "uncertainty"


def test_a_changed_order_or_reward_model_does_not_resume_a_labelled_folder(tmp_path):
    recipe = LabelSettings(model_name_or_path="m", data_recipe="tiny_alpaca", output_dir=str(tmp_path))
    # The defaults add nothing: a folder sampled before these keys existed still resumes.
    assert label_items.ordering(recipe) == {}
    label_items.write(tmp_path, label_items.sampling(recipe), [scored("a", [1.0, 0.0])])
    (tmp_path / "labels.jsonl").write_text('{"status": "skipped", "labeller": "ann", "item": "a"}\n')
    assert serve.prepare(recipe)[1]["items"][0]["id"] == "a"
    uncertain = LabelSettings(**{**vars(recipe), "order": "uncertainty", "reward_model": "rm"})
    with pytest.raises(UserError, match="order, reward_model, reward_model_fingerprint changed"):
        serve.prepare(uncertain)
    # A key set then and unset now counts as changed too.
    assert label_items.changed({"seed": 0, "reward_model": "rm"}, {"seed": 0}) == ["reward_model"]


def label_folder(root: Path) -> Path:
    """A label folder of three items with sampling-time scores and references, and two people's rankings."""
    items = [
        {**scored("item0", [3.0, 2.0, 1.0]), "reference": "item0-0"},
        {**scored("item1", [1.0, 2.0, 2.0]), "reference": "item1-1"},
        {
            "id": "item2",
            "completions": ["item2-0", "boom", "x"],
            "scores": [0.0, 0.0, 1.0],
            "reference": "item2-0",
        },
    ]
    for item in items:
        item["prompt"] = [{"role": "user", "content": f"Which is {item['id']}?"}]
    root.mkdir()
    label_items.write(root, {"model": "some/model", "reward_model": "runs/rm"}, items)
    people = [("ann", "item0", [1, 2, 3]), ("ann", "item1", [1, 2, 3]), ("bob", "item1", [2, 1, 3])]
    rows = [
        {"status": "ranked", "labeller": who, "item": item, "ranks": ranks} for who, item, ranks in people
    ]
    rows.append({"status": "skipped", "labeller": "bob", "item": "item0", "ranks": None})
    (root / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_label_auto_with_a_verifier_ranks_passing_first_and_never_touches_the_labels(tmp_path, capsys):
    folder = label_folder(tmp_path / "labels")
    labels_before = (folder / "labels.jsonl").read_bytes()
    assert main(["label", "auto", str(folder), "--verifier", VERIFIER]) == 0
    assert "hftune label stats" in capsys.readouterr().out
    rows = auto.read(folder)
    assert [r["item"] for r in rows] == ["item0", "item1", "item2"]
    # Passing first, tied among themselves; a reply the verifier broke on counts as not passing.
    assert [r["ranks"] for r in rows] == [[1, 2, 2], [2, 1, 2], [1, 2, 2]]
    for r in rows:
        assert r["status"] == "ranked" and r["labeller"] == "verifier" and r["model"] == "some/model"
        assert r["machine"] == {"kind": "verifier", "function": VERIFIER}
    assert (folder / "labels.jsonl").read_bytes() == labels_before
    # A rerun replaces that machine's rows; another machine's rows are kept.
    other = {**rows[0], "machine": {"kind": "reward_model", "path": "elsewhere"}, "labeller": "reward model"}
    with open(folder / "auto.jsonl", "a") as f:
        f.write(json.dumps(other) + "\n")
    auto.run(folder, verifier=VERIFIER)
    assert sorted(auto.machine_name(r["machine"]) for r in auto.read(folder)) == [
        "reward model elsewhere", *[f"verifier {VERIFIER}"] * 3,
    ]  # fmt: skip


def test_label_auto_refuses_what_is_not_a_label_folder(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for bad in (
        ["label", "auto", str(tmp_path / "nowhere"), "--verifier", VERIFIER],
        ["label", "auto", str(mine), "--verifier", VERIFIER],
        ["label", "auto", str(mine / "notes.txt"), "--verifier", VERIFIER],
    ):
        assert main(bad) == 2
        assert "not a label folder" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and not (tmp_path / "nowhere").exists()
    folder = label_folder(tmp_path / "labels")
    for bad in (
        ["label", "auto", str(folder)],  # no machine
        ["label", "auto", str(folder), "--judge", "x"],
        ["label", "auto", "--verifier", VERIFIER],
        ["label", "auto", str(folder), "--verifier", "tests.nowhere:verify"],
    ):
        assert main(bad) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (folder / "auto.jsonl").exists()


def test_stats_report_people_against_the_machine_and_the_reward_model_pairs(tmp_path, capsys):
    folder = label_folder(tmp_path / "labels")
    auto.run(folder, verifier=VERIFIER)
    got = label_stats.compute(folder)
    tau = label_stats.kendall_tau_b
    # item0: ann only; item1: the mean over ann and bob; item2: no person ranked it.
    expected = [
        tau([1, 2, 2], [1, 2, 3]),
        (tau([2, 1, 2], [1, 2, 3]) + tau([2, 1, 2], [2, 1, 3])) / 2,
    ]
    (machine,) = got["machines"]
    assert machine == f"verifier {VERIFIER}"
    verifier = got["machines"][machine]
    assert verifier["items"] == 2
    a = verifier["agreement_kendall_tau"]
    assert a["mean"] == pytest.approx(sum(expected) / 2) and a["ci_low"] <= a["mean"] <= a["ci_high"]
    # People's 9 pairs against the sampling-time scores: ann's item0 ranking agrees on all 3, her item1
    # ranking on none (one pair scored equal), bob's item1 ranking on one (one scored equal).
    assert got["reward_model_pairs"] == {"reward_model": "runs/rm", "pairs": 9, "agreed": 4, "tied": 2}
    text = label_stats.render(got)
    assert (
        f"people vs verifier {VERIFIER} (Kendall's tau-b on 2 items both ranked): {a['mean']:.3f} "
        f"[{a['ci_low']:.3f}, {a['ci_high']:.3f}], 95% bootstrap CI" in text
    )
    assert "the reward model runs/rm already orders 4 of the 9 pairs people ranked apart the same way" in text
    assert main(["label", "stats", str(folder)]) == 0 and capsys.readouterr().out.strip() == text


# --- on a tiny model ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory, tiny_llama) -> str:
    """tiny:llama with a fresh, seeded score head, saved as a full reward model: untrained, but its scores
    differ from completion to completion, which is all ordering needs."""
    import torch
    from trl import ModelConfig

    from hftune.models.loading import load_reward_model
    from hftune.models.tokenizer import load_tokenizer

    out = tmp_path_factory.mktemp("rm") / "rm"
    torch.manual_seed(0)
    model = load_reward_model(tiny_llama, ModelConfig(dtype="float32"))
    tokenizer = load_tokenizer(tiny_llama)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def test_sampling_scores_with_the_reward_model_and_label_auto_ranks_by_it(
    tiny_llama, tiny_reward_model, tmp_path
):
    from hftune.models.scoring import load_scorer

    s = LabelSettings(
        model_name_or_path=tiny_llama,
        data_recipe="tiny_alpaca",
        max_prompts=6,
        num_completions=3,
        max_new_tokens=8,
        order="uncertainty",
        reward_model=tiny_reward_model,
        verifier=VERIFIER,
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "labels"),
    )
    out, data = serve.prepare(s)
    items = data["items"]
    scorer = load_scorer(tiny_reward_model)
    for item in items:
        expected = scorer.score([item["prompt"]] * 3, item["completions"]).tolist()
        assert item["scores"] == pytest.approx(expected, abs=1e-5)
    assert label_items.margins(items) == sorted(label_items.margins(items))  # least sure first
    assert [i["margin"] for i in items] == label_items.margins(items) and len(
        set(label_items.margins(items))
    ) > 1
    assert data["sampling"]["order"] == "uncertainty" and label_items.read(out)["items"] == items
    for item in items:  # the verifier ran on every completion, against the recipe's reference
        assert item["reference"] and item["verified"] == [t == item["reference"] for t in item["completions"]]
        assert item["disagreement"] == label_items.disagrees(item["scores"], item["verified"])

    assert main(["label", "auto", str(out), "--reward_model", tiny_reward_model]) == 0
    rows = auto.read(out)
    assert [r["item"] for r in rows] == [i["id"] for i in items]
    for row, item in zip(rows, items, strict=True):
        assert row["ranks"] == auto.ranks_by(item["scores"])
        best = row["ranks"].index(1)
        assert item["scores"][best] == max(item["scores"])
        assert row["machine"]["kind"] == "reward_model" and row["machine"]["path"] == tiny_reward_model
        assert row["labeller"] == "reward model"
    assert not (out / "labels.jsonl").exists()
