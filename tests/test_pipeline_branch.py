"""A pipeline that branches after SFT (sft -> reward -> ppo, and sft -> dpo) and one eval of every variant:
the plan hands the eval `{rlhf: [...], dpo: [...]}` (an RL-only pipeline hands exactly what it always did),
`seeds` works for the preference-optimisation stage, `--force`, the dry run and the ledger re-run one branch
without the other; the eval marks the reward-model scores of a variant whose lineage never trained against
that reward model (synthetic manifests, no model); one end-to-end pipeline (slow)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_seeds import pretend_finished

from hftune import pipeline
from hftune.config import ConfigError
from hftune.evaluation import reward_exposure
from hftune.evaluation.report import markdown as report_markdown
from hftune.evaluation.report import render_html, render_markdown, summary_table
from hftune.evaluation.report.sections import metrics_table

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny"


def stage_entries(tmp_path: Path, *, ppo: dict | None = None, dpo: dict | None = None, po: str = "dpo"):
    return [
        {"stage": "sft", "config": str(TINY / "sft_full.yaml"), "max_steps": 10},
        {"stage": "reward", "config": str(TINY / "reward.yaml"), "max_steps": 4},
        {"stage": "ppo", "config": str(TINY / "ppo.yaml"), "max_steps": 2, "heldout_every": 0, **(ppo or {})},
        {"stage": po, "config": str(TINY / "dpo.yaml"), "max_steps": 4, **(dpo or {})},
        {
            "stage": "eval",
            "config": str(REPO / "eval/suites/tiny.yaml"),
            "cache_dir": str(tmp_path / "eval-cache"),
        },
    ]


def write_pipeline(tmp_path: Path, stages: list[dict], name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": stages}))
    return path


def without(stages: list[dict], name: str) -> list[dict]:
    return [s for s in stages if s["stage"] != name]


# ------------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------------


def test_a_branched_plan_hands_the_eval_every_trained_variant_by_name(tmp_path):
    run = tmp_path / "run"
    _, plan, _ = pipeline.load_plan(str(write_pipeline(tmp_path, stage_entries(tmp_path))))
    assert [s.key for s in plan] == ["sft", "reward", "ppo", "dpo", "eval"]
    dpo = plan[3]
    assert dpo.values["model_name_or_path"] == str(run / "sft") and dpo.values["algorithm"] == "dpo"
    assert "reward_model_path" not in dpo.values  # offline: the reward model is not its input
    assert plan[2].values["reward_model_path"] == str(run / "reward")
    assert plan[-1].values["rlhf_models"] == {"rlhf": [str(run / "ppo")], "dpo": [str(run / "dpo")]}
    # What takes from what: the two branches share only SFT (and what is before it).
    sources = pipeline.upstream(plan)
    assert sources == [set(), {0}, {0, 1}, {0}, {0, 1, 2, 3}]


@pytest.mark.parametrize("po", ["kto", "orpo", "simpo"])
def test_the_po_variant_is_named_after_its_stage(tmp_path, po):
    _, plan, _ = pipeline.load_plan(str(write_pipeline(tmp_path, stage_entries(tmp_path, po=po))))
    assert plan[3].values["algorithm"] == po
    assert list(plan[-1].values["rlhf_models"]) == ["rlhf", po]


def test_a_po_stage_alone_is_the_evals_only_trained_variant(tmp_path):
    stages = without(without(stage_entries(tmp_path), "ppo"), "reward")
    _, plan, _ = pipeline.load_plan(str(write_pipeline(tmp_path, stages)))
    assert plan[-1].values["rlhf_models"] == {"dpo": [str(tmp_path / "run" / "dpo")]}


def test_several_rl_stages_are_variants_named_after_their_stages(tmp_path):
    """PPO (with seeds) beside RLOO and DPO: each RL stage is its own variant, its seed runs together; each
    takes the SFT model and the reward model, and none takes from another."""
    run = tmp_path / "run"
    stages = stage_entries(tmp_path, ppo={"seeds": [1, 2]})
    stages.insert(3, {"stage": "rloo", "config": str(TINY / "ppo.yaml"), "max_steps": 2})
    _, plan, _ = pipeline.load_plan(str(write_pipeline(tmp_path, stages)))
    assert [s.key for s in plan] == ["sft", "reward", "ppo-seed1", "ppo-seed2", "rloo", "dpo", "eval"]
    assert plan[4].values["algorithm"] == "rloo" and plan[4].values["reward_model_path"] == str(
        run / "reward"
    )
    assert plan[-1].values["rlhf_models"] == {
        "ppo": [str(run / "ppo-seed1"), str(run / "ppo-seed2")],
        "rloo": [str(run / "rloo")],
        "dpo": [str(run / "dpo")],
    }
    assert pipeline.upstream(plan)[4] == {0, 1}


def test_an_rl_only_pipeline_keeps_todays_handoff_and_force_rule(tmp_path):
    run = tmp_path / "run"
    stages = [
        {"stage": "pretrain", "config": str(TINY / "pretrain.yaml")},
        *without(stage_entries(tmp_path), "dpo"),
    ]
    _, plan, _ = pipeline.load_plan(str(write_pipeline(tmp_path, stages)))
    assert plan[-1].values["rlhf_models"] == str(run / "ppo")  # a path, as before branching existed
    # In a chain every stage takes from every earlier one: `--force X` re-runs X and all after it.
    for i, stage in enumerate(plan):
        assert pipeline._forced(plan, stage.name) == [j >= i for j in range(len(plan))], stage.name
    seeded = [{**s, "seeds": [1, 2]} if s["stage"] == "ppo" else s for s in stages]
    _, plan, _ = pipeline.load_plan(str(write_pipeline(tmp_path, seeded, "seeded.yaml")))
    assert plan[-1].values["rlhf_models"] == {"rlhf": [str(run / "ppo-seed1"), str(run / "ppo-seed2")]}


def test_force_reruns_one_branch_not_the_other(tmp_path):
    _, plan, _ = pipeline.load_plan(str(write_pipeline(tmp_path, stage_entries(tmp_path))))
    #                                          sft    reward  ppo    dpo    eval
    assert pipeline._forced(plan, "ppo") == [False, False, True, False, True]
    assert pipeline._forced(plan, "reward") == [False, True, True, False, True]
    assert pipeline._forced(plan, "dpo") == [False, False, False, True, True]
    assert pipeline._forced(plan, "sft") == [True] * 5
    # The order in the file does not matter: dpo listed before the reward model changes nothing.
    stages = stage_entries(tmp_path)
    stages.insert(1, stages.pop(3))
    _, plan, _ = pipeline.load_plan(str(write_pipeline(tmp_path, stages, "reordered.yaml")))
    assert [s.key for s in plan] == ["sft", "dpo", "reward", "ppo", "eval"]
    assert pipeline._forced(plan, "reward") == [False, False, True, True, True]
    assert list(plan[-1].values["rlhf_models"]) == ["dpo", "rlhf"]


def test_seeds_on_the_po_stage(tmp_path):
    run = tmp_path / "run"
    stages = stage_entries(tmp_path, dpo={"seeds": [1, 2]})
    _, plan, _ = pipeline.load_plan(str(write_pipeline(tmp_path, stages)))
    assert [s.key for s in plan] == ["sft", "reward", "ppo", "dpo-seed1", "dpo-seed2", "eval"]
    assert [s.values["seed"] for s in plan[3:5]] == [1, 2]
    assert [s.output_dir for s in plan[3:5]] == [run / "dpo-seed1", run / "dpo-seed2"]
    assert plan[-1].values["rlhf_models"] == {
        "rlhf": [str(run / "ppo")],
        "dpo": [str(run / "dpo-seed1"), str(run / "dpo-seed2")],
    }
    assert pipeline._forced(plan, "dpo-seed2") == [False, False, False, False, True, True]
    assert pipeline._forced(plan, "dpo") == [False, False, False, True, True, True]
    # Both branches with seeds.
    stages = stage_entries(tmp_path, ppo={"seeds": [1, 2]}, dpo={"seeds": [1, 2]})
    _, plan, _ = pipeline.load_plan(str(write_pipeline(tmp_path, stages, "both.yaml")))
    assert plan[-1].values["rlhf_models"] == {
        "rlhf": [str(run / "ppo-seed1"), str(run / "ppo-seed2")],
        "dpo": [str(run / "dpo-seed1"), str(run / "dpo-seed2")],
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.insert(4, {"stage": "dpo"}), "a second dpo stage (once per pipeline; use `seeds`"),
        (lambda s: s.insert(1, {"stage": "sft"}), "a second sft stage (one of each per pipeline)"),
        (lambda s: s.insert(3, s.pop(4)), "stage eval: must come after the dpo stage"),
        (lambda s: s[4].update(rlhf_models="x"), "`rlhf_models` is filled in by the pipeline from the rl"),
        (lambda s: s[1].update(seeds=[1, 2]), "`seeds` is for the RL stage"),
    ],
)
def test_branch_config_errors(tmp_path, change, message):
    stages = stage_entries(tmp_path)
    change(stages)
    with pytest.raises(ConfigError, match=re.escape(message)):
        pipeline.load_plan(str(write_pipeline(tmp_path, stages)))


def test_rlhf_models_typed_with_only_a_po_stage_is_refused(tmp_path):
    stages = without(stage_entries(tmp_path), "ppo")
    stages[-1]["rlhf_models"] = "x"
    with pytest.raises(ConfigError, match="`rlhf_models` is filled in by the pipeline from the po stage"):
        pipeline.load_plan(str(write_pipeline(tmp_path, stages)))


def test_dry_run_and_ledger_rerun_only_the_changed_branch(tmp_path, monkeypatch, capsys):
    """Every run finished and recorded: a changed PPO setting re-runs PPO and the eval, not DPO; a changed
    DPO setting DPO and the eval, not PPO. The printed plan shows both and the eval's handoff."""
    run = tmp_path / "run"
    config = write_pipeline(tmp_path, stage_entries(tmp_path))
    done = {run / name for name in ("sft", "reward", "ppo", "dpo", "eval")}  # as if each had finished
    ledger = pretend_finished(monkeypatch, done)
    plan = pipeline.run(str(config), dry_run=True)
    for stage in plan:  # nothing recorded yet: everything runs
        assert stage.action == "run"
        ledger[stage.key] = {"inputs": stage.fingerprint, "manifest_sha256": f"manifest of {stage.key}"}
    # The eval's parsed suite lists the variants in the plan's order (its reports follow it).
    assert list(plan[-1].cfg.hftune.rlhf_models) == ["rlhf", "dpo"]
    out = capsys.readouterr().out
    assert f"dpo     run     -> {run / 'dpo'}" in out
    assert f"rlhf_models=rlhf: [{run / 'ppo'}], dpo: [{run / 'dpo'}]" in out

    def actions(stages: list[dict], **kwargs) -> dict[str, str]:
        plan = pipeline.run(str(write_pipeline(tmp_path, stages, "changed.yaml")), dry_run=True, **kwargs)
        return {s.key: s.action for s in plan}

    same = stage_entries(tmp_path)
    assert set(actions(same).values()) == {"skip"}
    skip = dict.fromkeys(("sft", "reward", "ppo", "dpo", "eval"), "skip")
    assert actions(stage_entries(tmp_path, ppo={"learning_rate": 1.0e-3})) == {
        **skip,
        "ppo": "run",
        "eval": "run",
    }
    assert actions(stage_entries(tmp_path, dpo={"beta": 0.2})) == {**skip, "dpo": "run", "eval": "run"}
    assert actions(same, force="dpo") == {**skip, "dpo": "run", "eval": "run"}
    assert actions(same, force="ppo") == {**skip, "ppo": "run", "eval": "run"}
    assert actions(same, force="reward") == {**skip, "reward": "run", "ppo": "run", "eval": "run"}


# ------------------------------------------------------------------------------------------------------
# The reward-model caveat, read from synthetic lineages
# ------------------------------------------------------------------------------------------------------


def artifact(root: Path, name: str, stage: str, *parents: tuple[str, Path | str]) -> str:
    """A finished stage folder: just the manifest the lineage reads (no weights)."""
    from hftune import artifacts

    folder = root / name
    folder.mkdir(parents=True)
    refs = [artifacts.parent_ref(str(path), role) for role, path in parents]
    manifest = {"stage": stage, "parents": refs, "config_sha256": name, "data": {}, "metrics": {}, "seed": 0}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(folder)


@pytest.fixture
def lineages(tmp_path) -> dict[str, str]:
    """base -> sft -> reward; ppo (against that reward model), dpo, a "dpo"-named folder that is really a PPO
    run, a PPO run against another reward model, and a folder with no manifest."""
    out = {"sft": artifact(tmp_path, "sft", "sft", ("base_model", "tiny:llama"))}
    out["reward"] = artifact(tmp_path, "reward", "reward", ("sft_model", out["sft"]))
    out["other_reward"] = artifact(tmp_path, "other-reward", "reward", ("sft_model", out["sft"]))
    rl = (("sft_model", out["sft"]), ("reward_model", out["reward"]))
    out["ppo"] = artifact(tmp_path, "ppo", "ppo", *rl)
    out["ppo2"] = artifact(tmp_path, "ppo2", "ppo", *rl)
    out["dpo"] = artifact(tmp_path, "dpo", "dpo", ("sft_model", out["sft"]))
    out["misnamed"] = artifact(tmp_path, "dpo-but-ppo", "ppo", *rl)
    out["elsewhere"] = artifact(
        tmp_path, "ppo-other", "ppo", ("sft_model", out["sft"]), ("reward_model", out["other_reward"])
    )
    # DPO on top of the PPO policy: its lineage did train against the reward model.
    out["dpo_on_ppo"] = artifact(tmp_path, "dpo-on-ppo", "dpo", ("sft_model", out["ppo"]))
    (tmp_path / "external").mkdir()
    out["external"] = str(tmp_path / "external")
    return out


def test_exposure_is_read_from_the_lineage_not_the_name(lineages):
    rm = lineages["reward"]
    assert reward_exposure.exposure(lineages["ppo"], rm) == (True, None)
    assert reward_exposure.exposure(lineages["misnamed"], rm) == (True, None)
    assert reward_exposure.exposure(lineages["dpo_on_ppo"], rm) == (True, None)
    flag, note = reward_exposure.exposure(lineages["dpo"], rm)
    assert flag is False and "no stage of its lineage (dpo <- sft <- base)" in note
    flag, note = reward_exposure.exposure(lineages["elsewhere"], rm)
    assert flag is False and "another reward model" in note and lineages["other_reward"] in note
    flag, note = reward_exposure.exposure(lineages["external"], rm)
    assert flag is None and "no manifest.json" in note


def test_a_copied_reward_model_is_the_same_one_and_a_retrained_one_is_not(lineages, tmp_path):
    import shutil

    copy = tmp_path / "copied-reward"
    shutil.copytree(lineages["reward"], copy)
    assert reward_exposure.exposure(lineages["ppo"], str(copy))[0] is True  # same manifest, another folder
    manifest = json.loads(Path(lineages["reward"], "manifest.json").read_text())
    Path(lineages["reward"], "manifest.json").write_text(json.dumps({**manifest, "seed": 1}))
    flag, note = reward_exposure.exposure(lineages["ppo"], lineages["reward"])
    assert flag is False and "another reward model" in note  # retrained in place since PPO used it


def test_annotate_flags_each_trained_variant(lineages):
    variants = {v: {"kind": "rlhf"} for v in ("rlhf", "dpo", "mixed", "hub")}
    variants["sft"] = {"kind": "sft"}
    runs = {
        "rlhf": [lineages["ppo"], lineages["ppo2"]],
        "dpo": [lineages["dpo"]],
        "mixed": [lineages["ppo"], lineages["dpo"]],
        "hub": [lineages["external"]],
        "not evaluated": [lineages["dpo"]],
    }
    reward_exposure.annotate(variants, runs, lineages["reward"])
    assert (
        variants["rlhf"]["trained_against_reward_model"] is True
        and "reward_model_note" not in variants["rlhf"]
    )
    assert variants["dpo"]["trained_against_reward_model"] is False
    assert "never" not in variants["dpo"]["reward_model_note"]  # the why, not the footnote's wording
    assert variants["mixed"]["trained_against_reward_model"] is None
    assert variants["mixed"]["reward_model_note"].startswith("its seed runs differ")
    assert variants["hub"]["trained_against_reward_model"] is None
    assert "trained_against_reward_model" not in variants["sft"]
    assert "not evaluated" not in variants


N = 8


def results_with(flags: dict[str, bool | None], *, seeds: bool = False) -> tuple[dict, list[dict]]:
    """A results.json / samples.jsonl pair in the harness's schema: sft (the baseline), rlhf and dpo."""
    rng = np.random.default_rng(0)

    def cell(mean: float) -> dict:
        return {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "n": N}

    names = ["sft", "rlhf", "dpo"]
    variants = {}
    for i, name in enumerate(names):
        metrics = {
            "reward": cell(0.1 * i),
            "verifier": cell(0.2),
            "kl_to_sft": cell(0.5 * i),
            "length": cell(9.0),
        }
        entry = {"kind": name if name == "sft" else "rlhf", "model": f"runs/{name}", "metrics": metrics}
        entry["vs_baseline"] = {} if name == "sft" else {m: cell(0.05 * i) for m in ("reward", "verifier")}
        if name in flags:
            entry["trained_against_reward_model"] = flags[name]
            if flags[name] is not True:
                entry["reward_model_note"] = (
                    "no stage of its lineage (dpo <- sft) was trained against a reward model"
                )
        variants[name] = entry
    if seeds:
        block = {"n": 2, "mean": 0.1, "ci_low": -0.5, "ci_high": 0.7, "per_seed": [0.0, 0.2]}
        variants["dpo"]["vs_baseline"]["reward"]["seeds"] = block
        variants["dpo"]["vs_baseline"]["reward"]["survives_seeds"] = False
        variants["dpo"]["seed_runs"] = [
            {"run": f"dpo@dpo-seed{s}", "model": f"runs/dpo-seed{s}"} for s in (1, 2)
        ]
    win = {a: {b: cell(0.5) for b in names} for a in names}
    info = {
        m: {"decoding": "greedy", "higher_is_better": h, "description": m}
        for m, h in (("reward", True), ("verifier", True), ("kl_to_sft", False), ("length", None))
    }
    results = {
        "suite": {"name": "branch", "confidence": 0.95},
        "n_prompts": N,
        "baseline": "sft",
        "decoding": {"greedy": {"max_new_tokens": 8}},
        "metric_info": info,
        "variants": variants,
        "win_rates": win,
        "judge": None,
    }
    replies = ["sft", "rlhf", "dpo@dpo-seed1", "dpo@dpo-seed2"] if seeds else names
    samples = [
        {
            "prompt_index": i,
            "prompt": f"What is {i} + 1?",
            "reference": str(i + 1),
            "variants": {
                v: {"response": str(i + 1), "reward": float(rng.normal()), "length": 2, "ended": True}
                for v in replies
            },
        }
        for i in range(N)
    ]
    return results, samples


def test_reports_mark_the_reward_of_a_variant_that_never_saw_the_reward_model():
    results, samples = results_with({"rlhf": True, "dpo": False})
    md = render_markdown(results, samples).splitlines()
    # Only the reward-model cells: dpo's verifier, KL and length are plain.
    metrics_row = next(line for line in md if line.startswith("| dpo | 0.200 ["))
    assert metrics_row.count("†") == 2  # its reward and its win rate against the baseline
    diffs_row = next(line for line in md if line.startswith("| dpo | +0.100 ["))
    assert diffs_row.count("†") == 1  # the reward difference, not the verifier's
    assert any(line.startswith("| dpo † | ") for line in md)  # the win-rate matrix's row
    tables = [line for line in md if line.startswith(("| sft | ", "| rlhf | ")) and "[" in line]
    assert len(tables) == 5 and not any("†" in line for line in tables)
    footnote = "† Reward-model scores (reward, win rates, expected reward): dpo never trained against this"
    assert sum(line.startswith(footnote) for line in md) == 1  # under the metrics, in full
    reminder = "† dpo: not trained against this reward model (see Metrics)."
    assert md.count(reminder) == 2  # under the paired differences and the win rates
    assert "rlhf was trained to raise exactly this score" in "\n".join(md)

    page = render_html(results, samples)
    assert page.count('<sup class="fn">†</sup>') >= 4  # metrics, differences, matrix row + column, browser
    assert page.count('<p class="footnote">† Reward-model scores') == 1
    assert page.count('<p class="footnote">† dpo: not trained') == 3  # differences, win rates, browser

    summary = summary_table(results).splitlines()
    dpo_line = next(line for line in summary if line.startswith("dpo"))
    assert "†" in dpo_line and not any("†" in line for line in summary if line.startswith(("sft", "rlhf")))
    footnote = summary.index("") + [line.startswith("†") for line in summary[summary.index("") :]].index(True)
    assert summary[footnote].startswith("† Reward-model scores") and summary[footnote - 1] == ""

    # The model card's table (publish/card.py renders exactly this) carries the footnote too.
    card = "\n".join(report_markdown.table(metrics_table(results).transposed("metric")))
    assert "† Reward-model scores" in card


def test_without_a_caveat_the_reports_are_unchanged():
    plain = results_with({})
    flagged = results_with({"rlhf": True, "dpo": True})
    assert render_markdown(*plain) == render_markdown(*flagged)
    assert render_html(*plain) == render_html(*flagged)
    assert summary_table(plain[0]) == summary_table(flagged[0])
    assert "†" not in render_markdown(*plain)


def test_an_unrecorded_lineage_is_marked_as_unknown_and_verdict_lines_carry_the_mark():
    from hftune.evaluation.harness import verdict_lines

    results, samples = results_with({"rlhf": True, "dpo": None}, seeds=True)
    assert "whether dpo trained against it is not recorded" in render_markdown(results, samples)
    assert verdict_lines(results)[1] == (
        "dpo vs sft (2 seeds): does not hold: verifier +0.100 [+0.000, +0.200]: not clearly different over "
        "prompts · reward † +0.100 [+0.000, +0.200]; per seed +0.000, +0.200; across seeds +0.100 "
        "[-0.500, +0.700]: does not survive the seeds"
    )
    assert "†" not in verdict_lines(results)[0]  # rlhf trained against the reward model
    # The browser's columns for the seed runs of dpo carry the mark.
    page = render_html(results, samples)
    assert 'dpo@dpo-seed1<sup class="fn">†</sup>' in page and 'rlhf<sup class="fn">' not in page


# ------------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow(12)
def test_a_branched_pipeline_evaluates_ppo_and_dpo_side_by_side(tmp_path, tiny_llama):
    stages = stage_entries(
        tmp_path,
        # Two steps of an SFT model trained for 10 never stop by themselves: no length alarm.
        ppo={"max_mean_length": None},
        dpo={"max_steps": 6},
    )
    stages[-1].update(
        variants=["sft", "rlhf"],
        max_prompts=6,
        num_samples=1,
        best_of_n=1,
        bootstrap_samples=200,
        max_new_tokens=8,
    )
    config = write_pipeline(tmp_path, stages)
    plan = pipeline.run(str(config))
    run = tmp_path / "run"
    assert [s.key for s in plan] == ["sft", "reward", "ppo", "dpo", "eval"]
    dpo_manifest = json.loads((run / "dpo" / "manifest.json").read_text())
    assert [p["name_or_path"] for p in dpo_manifest["parents"]] == [str(run / "sft")]

    results = json.loads((run / "eval" / "results.json").read_text())
    assert list(results["variants"]) == ["sft", "rlhf", "dpo"]
    rlhf, dpo = results["variants"]["rlhf"], results["variants"]["dpo"]
    assert rlhf["model"] == str(run / "ppo") and dpo["model"] == str(run / "dpo")
    assert rlhf["trained_against_reward_model"] is True
    assert dpo["trained_against_reward_model"] is False and "dpo <- sft" in dpo["reward_model_note"]
    for metric in ("reward", "kl_to_sft", "verifier"):
        assert dpo["metrics"][metric]["n"] == 6, metric
    assert "dpo" in results["win_rates"]["rlhf"] and "reward" in dpo["vs_baseline"]
    report = (run / "eval" / "report.md").read_text()
    assert "† Reward-model scores" in report and "dpo never trained against this reward model" in report

    # Nothing changed: every stage is skipped, both branches included.
    again = pipeline.run(str(config))
    assert {s.action for s in again} == {"skip"}


def test_a_first_stage_killed_before_any_ledger_is_resumed_not_refused(tmp_path):
    """Killed during its first stage, a pipeline's folder holds only that stage's work folder and lock (the
    ledger is written when a stage finishes): the same command goes on; anything else is still refused."""
    config = write_pipeline(tmp_path, stage_entries(tmp_path))
    root, plan, _ = pipeline.load_plan(str(config))
    (root / "sft.work").mkdir(parents=True)
    (root / "sft.work" / pipeline.STARTED).write_text("{}")
    (root / ".sft.lock").write_text("")
    (root / ".sft.tmp-123").mkdir()  # killed while saving
    pipeline.check_outputs(root, plan, overwrite=False)
    (root / "notes.txt").write_text("mine")
    with pytest.raises(pipeline.UserError, match="is not an hftune pipeline's"):
        pipeline.check_outputs(root, plan, overwrite=False)
