"""Seed variance made visible: a pipeline RL stage with `seeds: [1, 2]` plans one run per seed, each in its
own folder and ledger entry, and hands all of them to the eval as one variant; the eval folds the runs into
that variant and claims "better than the baseline" only when the claim survives the seeds (synthetic
per-prompt numbers, no model); one end-to-end pipeline (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hftune import pipeline
from hftune.config import ConfigError
from hftune.evaluation import seeds, stats
from hftune.evaluation.measures import aggregate
from hftune.evaluation.suite import Suite, rlhf_variants, seed_runs
from hftune.models.generation import Decoding

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny"


def write_pipeline(tmp_path: Path, *, ppo: dict | None = None, stages=None, **eval_keys) -> Path:
    stages = stages or [
        {"stage": "sft", "config": str(TINY / "sft_full.yaml"), "max_steps": 10},
        {"stage": "reward", "config": str(TINY / "reward.yaml"), "max_steps": 4},
        {
            "stage": "ppo",
            "config": str(TINY / "ppo.yaml"),
            "max_steps": 2,
            "heldout_every": 0,
            **({"seeds": [1, 2]} if ppo is None else ppo),
        },
        {
            "stage": "eval",
            "config": str(REPO / "eval/suites/tiny.yaml"),
            "cache_dir": str(tmp_path / "eval-cache"),
            **eval_keys,
        },
    ]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": stages}))
    return path


# ------------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------------


def pretend_finished(monkeypatch, done: set[Path]) -> dict:
    """Make the pipeline see the folders in `done` as finished artifacts (each with a manifest hash named
    for it) and read its ledger from the returned dict, which a test fills as runs "finish"."""
    # Modules that take these functions by name bind them when first imported: imported now, they keep the
    # real ones (a first import under the patch would keep the stand-ins for the rest of the session).
    import hftune.evaluation.contamination
    import hftune.models.loading  # noqa: F401

    monkeypatch.setattr(pipeline.artifacts, "is_complete", lambda p: Path(p) in done)
    monkeypatch.setattr(
        pipeline.artifacts,
        "manifest_sha256",
        lambda p: f"manifest of {Path(p).name}" if Path(p) in done else None,
    )
    ledger: dict = {}
    monkeypatch.setattr(pipeline, "_read_ledger", lambda root: ledger)
    return ledger


def test_seeds_plan_one_run_per_seed_and_hand_all_to_the_eval_as_one_variant(tmp_path, capsys):
    run = tmp_path / "run"
    plan = pipeline.run(str(write_pipeline(tmp_path)), dry_run=True)
    assert [s.key for s in plan] == ["sft", "reward", "ppo-seed1", "ppo-seed2", "eval"]
    rl = [s for s in plan if s.name == "ppo"]
    assert [s.seed for s in rl] == [1, 2]
    assert [s.values["seed"] for s in rl] == [1, 2] and [s.cfg.training.seed for s in rl] == [1, 2]
    assert [s.output_dir for s in rl] == [run / "ppo-seed1", run / "ppo-seed2"]
    assert [s.cfg.training.output_dir for s in rl] == [str(run / "ppo-seed1"), str(run / "ppo-seed2")]
    assert all(s.values["model_name_or_path"] == str(run / "sft") for s in rl)
    # The seed runs differ only by their seed: different config hashes, so different ledger inputs.
    assert rl[0].fingerprint["config_sha256"] != rl[1].fingerprint["config_sha256"]
    assert {s.action for s in plan} == {"run"}

    evaluation = plan[-1]
    folders = [str(run / "ppo-seed1"), str(run / "ppo-seed2")]
    assert evaluation.values["rlhf_models"] == {"rlhf": folders}
    suite = evaluation.cfg.hftune
    assert suite.rlhf_models == {"rlhf": folders}
    assert seed_runs(suite) == {"rlhf": {"rlhf@ppo-seed1": folders[0], "rlhf@ppo-seed2": folders[1]}}
    assert rlhf_variants(suite) == {"rlhf@ppo-seed1": folders[0], "rlhf@ppo-seed2": folders[1]}
    assert set(evaluation.fingerprint["parents"]["rlhf_models"]) == {
        "rlhf"
    }  # one hash per run (None: not yet)
    assert evaluation.fingerprint["parents"]["rlhf_models"]["rlhf"] == [None, None]

    out = capsys.readouterr().out
    assert f"ppo-seed1 run     -> {run / 'ppo-seed1'} [seed 1]" in out
    assert f"ppo-seed2 run     -> {run / 'ppo-seed2'} [seed 2]" in out
    assert f"rlhf_models=rlhf: [{folders[0]}, {folders[1]}]" in out


def test_without_seeds_the_rl_stage_keeps_its_folder_and_ledger_name(tmp_path):
    plan = pipeline.run(str(write_pipeline(tmp_path, ppo={})), dry_run=True)
    assert [s.key for s in plan] == ["sft", "reward", "ppo", "eval"]
    assert plan[2].output_dir == tmp_path / "run" / "ppo" and plan[2].seed is None
    assert plan[-1].values["rlhf_models"] == str(tmp_path / "run" / "ppo")


def test_seed_runs_skip_and_force_on_their_own(tmp_path, monkeypatch):
    """The ledger keeps one entry per seed run: a finished run is skipped while its sibling (a seed added
    later) runs, and `--force ppo-seed2` re-runs that run (and the eval after it), not its sibling."""
    config = str(write_pipeline(tmp_path))
    run = tmp_path / "run"
    done = {run / "sft", run / "reward", run / "ppo-seed1"}  # as if these had finished
    ledger = pretend_finished(monkeypatch, done)
    plan = pipeline.run(config, dry_run=True)  # nothing recorded yet: everything runs
    assert {s.action for s in plan} == {"run"}
    for stage in plan:
        if stage.output_dir in done:  # as `_record` writes it, under the run's own key
            ledger[stage.key] = {"inputs": stage.fingerprint, "manifest_sha256": f"manifest of {stage.key}"}

    def actions(**kwargs) -> dict[str, str]:
        return {s.key: s.action for s in pipeline.run(config, dry_run=True, **kwargs)}

    expected = {"sft": "skip", "reward": "skip", "ppo-seed1": "skip", "ppo-seed2": "run", "eval": "run"}
    assert actions() == expected
    assert actions(force="ppo-seed2") == expected
    assert actions(force="ppo") == {**expected, "ppo-seed1": "run"}
    assert pipeline._forced(plan, "ppo-seed1") == [False, False, True, False, True]
    with pytest.raises(pipeline.UserError, match="ppo-seed1"):
        pipeline.run(config, dry_run=True, force="ppo-seed3")


def test_record_writes_one_ledger_entry_per_seed_run(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    plan = pipeline.load_plan(str(write_pipeline(tmp_path)))[1]
    for stage in plan[2:4]:
        stage.fingerprint = {"seed": stage.seed}
        pipeline._record(root, stage, 1.0)
    ledger = json.loads((root / pipeline.LEDGER).read_text())
    assert ledger["ppo-seed1"]["inputs"] == {"seed": 1} and ledger["ppo-seed2"]["inputs"] == {"seed": 2}
    assert "ppo" not in ledger


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"stage": "ppo", "seeds": 3}, "`seeds`: expected a list of whole numbers"),
        ({"stage": "ppo", "seeds": []}, "`seeds`: expected a list of whole numbers"),
        ({"stage": "ppo", "seeds": [1, 1]}, "`seeds`: 1 is listed twice"),
        ({"stage": "ppo", "seeds": [1, "two"]}, "`seeds`: expected whole numbers, got 'two'"),
        ({"stage": "ppo", "seeds": [1, 2.5]}, "`seeds`: expected whole numbers, got 2.5"),
        ({"stage": "ppo", "seeds": [True, 2]}, "`seeds`: expected whole numbers, got True"),
        ({"stage": "ppo", "seeds": [1, -2]}, "`seeds`: must be an integer from 0"),
        ({"stage": "ppo", "seeds": [1, 2], "seed": 3}, "`seed` and `seeds` both given"),
        ({"stage": "reward", "seeds": [1, 2]}, "`seeds` is for the RL stage"),
    ],
)
def test_bad_seeds_are_config_errors_naming_the_key(tmp_path, capsys, entry, message):
    ppo = {k: v for k, v in entry.items() if k != "stage"} if entry["stage"] == "ppo" else {}
    config = write_pipeline(tmp_path, ppo=ppo)
    if entry["stage"] == "reward":
        stages = yaml.safe_load(config.read_text())
        stages["stages"][1]["seeds"] = entry["seeds"]
        config.write_text(yaml.safe_dump(stages))
    with pytest.raises(ConfigError) as err:
        pipeline.load_plan(str(config))
    assert message in str(err.value) and err.value.exit_code == 2
    # From the command line: exit 2 with the message.
    from hftune import cli

    assert cli.main(["pipeline", "--config", str(config), "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_suite_rlhf_models_mapping_of_lists(tmp_path):
    from hftune.evaluation import suite as suite_module

    args = ["--sft_model", "m", "--reward_model", "r", "--output_dir", str(tmp_path / "e")]
    with pytest.raises(ConfigError, match=r"`rlhf_models.rlhf`: a folder is listed twice"):
        suite_module.parse("tiny", [*args, "--rlhf_models", "{rlhf: [a, a]}"])
    with pytest.raises(ConfigError, match=r"`rlhf_models.rlhf`: expected a folder, or a list of folders"):
        suite_module.parse("tiny", [*args, "--rlhf_models", "{rlhf: [a, 3]}"])
    cfg = suite_module.parse("tiny", [*args, "--rlhf_models", "{rlhf: [x/ppo-seed1, y/ppo-seed1]}"])
    # Folder names that do not tell the runs apart: runs numbered instead.
    assert list(rlhf_variants(cfg.hftune)) == ["rlhf@run1", "rlhf@run2"]
    cfg = suite_module.parse("tiny", [*args, "--rlhf_models", "{ppo: [a/s1, a/s2], grpo: b}"])
    assert rlhf_variants(cfg.hftune) == {"ppo@s1": "a/s1", "ppo@s2": "a/s2", "grpo": "b"}
    cfg = suite_module.parse("tiny", [*args, "--rlhf_models", "runs/ppo"])
    assert rlhf_variants(cfg.hftune) == {"rlhf": "runs/ppo"} and seed_runs(cfg.hftune) == {}


# ------------------------------------------------------------------------------------------------------
# Aggregation across seeds (synthetic per-prompt numbers)
# ------------------------------------------------------------------------------------------------------

N = 60


def synthetic(seed_shifts: list[float], *, noise: float = 0.05, seed: int = 0) -> dict[str, dict]:
    """Per-prompt rewards of an SFT baseline and one seed run per shift (each run = SFT + shift + noise)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 1.0, N)  # prompt difficulty, shared by every variant: the pairing cancels it
    per_prompt = {"sft": {"reward": base.copy(), "length": rng.integers(5, 20, N).astype(float)}}
    for i, shift in enumerate(seed_shifts):
        per_prompt[f"rlhf@ppo-seed{i + 1}"] = {
            "reward": base + shift + rng.normal(0.0, noise, N),
            "length": rng.integers(5, 20, N).astype(float),
        }
    return per_prompt


def run_aggregate(per_prompt: dict, n_runs: int, **suite_keys) -> dict:
    suite = Suite(
        rlhf_models={"rlhf": [f"runs/ppo-seed{i + 1}" for i in range(n_runs)]},
        variants=["sft", "rlhf"],
        metrics=["reward", "win_rate", "length"],
        **suite_keys,
    )
    boot = stats.Bootstrap(N, 1000, suite.confidence, seed=0)
    paths = {"sft": "runs/sft", **rlhf_variants(suite)}
    return aggregate(suite, per_prompt, boot, paths, Decoding(16), Decoding(16, 1.0, 1, 0))


def test_seeds_that_disagree_claim_nothing_though_each_prompt_level_ci_excludes_zero():
    # Seed 1 gains +1.0 reward, seed 2 loses 0.4: the folded per-prompt mean (+0.3) has a tight prompt-level
    # CI far from 0 (the noise is small and paired), but the two seeds disagree: the claim does not survive.
    results = run_aggregate(synthetic([1.0, -0.4]), 2)
    assert list(results["variants"]) == ["sft", "rlhf"]  # the runs are one variant
    rlhf = results["variants"]["rlhf"]
    diff = rlhf["vs_baseline"]["reward"]
    assert diff["ci_low"] > 0.2 and diff["n"] == N  # prompt level: "better", confidently
    block = diff["seeds"]
    assert block["n"] == 2 and block["method"] == "t"
    assert block["per_seed"] == pytest.approx([1.0, -0.4], abs=0.03)
    assert block["mean"] == pytest.approx(diff["mean"], abs=1e-9)
    assert block["ci_low"] < 0 < block["ci_high"]
    assert diff["survives_seeds"] is False
    win = results["win_rates"]["rlhf"]["sft"]
    assert win["mean"] == pytest.approx(0.5)  # per prompt: one seed wins, the other loses
    assert win["seeds"]["per_seed"] == pytest.approx([1.0, 0.0])
    assert (win["seeds"]["ci_low"], win["seeds"]["ci_high"]) == (0.0, 1.0)  # a rate's interval, cut to [0, 1]
    assert win["survives_seeds"] is False
    assert results["win_rates"]["sft"]["rlhf"]["seeds"]["per_seed"] == pytest.approx([0.0, 1.0])
    assert "survives_seeds" not in results["win_rates"]["sft"]["rlhf"]  # the baseline's own row


def test_seeds_that_agree_claim_the_improvement():
    results = run_aggregate(synthetic([0.50, 0.52, 0.49]), 3)
    rlhf = results["variants"]["rlhf"]
    assert rlhf["model"] == ["runs/ppo-seed1", "runs/ppo-seed2", "runs/ppo-seed3"]
    assert [r["run"] for r in rlhf["seed_runs"]] == ["rlhf@ppo-seed1", "rlhf@ppo-seed2", "rlhf@ppo-seed3"]
    reward = rlhf["metrics"]["reward"]
    assert reward["seeds"]["n"] == 3 and len(reward["seeds"]["per_seed"]) == 3
    assert reward["seeds"]["ci_low"] <= reward["seeds"]["mean"] <= reward["seeds"]["ci_high"]
    diff = rlhf["vs_baseline"]["reward"]
    assert diff["seeds"]["ci_low"] > 0.4 and diff["survives_seeds"] is True
    win = results["win_rates"]["rlhf"]["sft"]
    assert win["seeds"]["per_seed"] == pytest.approx([1.0, 1.0, 1.0])
    assert win["survives_seeds"] is True
    # Length does not move (each run's lengths are independent draws): no claim either way.
    assert rlhf["vs_baseline"]["length"]["survives_seeds"] is False
    assert results["seed_info"]["confidence"] == 0.95
    # The baseline, a single run, gets no seed statistics of its own.
    assert "seeds" not in results["variants"]["sft"]["metrics"]["reward"]


def test_folded_per_prompt_value_is_the_mean_over_seeds_and_keeps_the_pairing():
    per_prompt = synthetic([1.0, -0.4])
    folded, stacks = seeds.fold(per_prompt, {"rlhf": ["rlhf@ppo-seed1", "rlhf@ppo-seed2"]})
    assert list(folded) == ["sft", "rlhf"]
    expected = (per_prompt["rlhf@ppo-seed1"]["reward"] + per_prompt["rlhf@ppo-seed2"]["reward"]) / 2
    np.testing.assert_allclose(folded["rlhf"]["reward"], expected)
    assert stacks["rlhf"]["reward"].shape == (2, N) and stacks["sft"]["reward"].shape == (1, N)
    # A prompt one run could not measure (NaN) takes the other run's value; none: NaN.
    per_prompt["rlhf@ppo-seed1"]["reward"][:2] = np.nan
    per_prompt["rlhf@ppo-seed2"]["reward"][1] = np.nan
    folded, _ = seeds.fold(per_prompt, {"rlhf": ["rlhf@ppo-seed1", "rlhf@ppo-seed2"]})
    assert folded["rlhf"]["reward"][0] == per_prompt["rlhf@ppo-seed2"]["reward"][0]
    assert np.isnan(folded["rlhf"]["reward"][1])


def test_single_run_variants_are_unchanged():
    per_prompt = {k: v for k, v in synthetic([0.5]).items()}
    per_prompt["rlhf"] = per_prompt.pop("rlhf@ppo-seed1")
    suite = Suite(rlhf_models=["runs/ppo"], variants=["sft", "rlhf"], metrics=["reward", "win_rate"])
    boot = stats.Bootstrap(N, 200, 0.95)
    results = aggregate(suite, per_prompt, boot, {"rlhf": "runs/ppo"}, Decoding(8), Decoding(8, 1.0))
    assert results["variants"]["rlhf"]["model"] == "runs/ppo"
    assert "seeds" not in results["variants"]["rlhf"]["vs_baseline"]["reward"]
    assert "survives_seeds" not in results["win_rates"]["rlhf"]["sft"]
    assert "seed_info" not in results and "seed_runs" not in results["variants"]["rlhf"]


def test_two_seeded_variants_get_welch_and_no_paired_win_block():
    a = np.array([[1.0, 2.0, 3.0], [1.2, 2.1, 3.3]])
    b = np.array([[0.0, 1.0, 2.0], [0.1, 1.2, 2.1], [0.2, 0.9, 2.0]])
    block = seeds.difference_block(a, b, 0.95)
    assert block["method"] == "welch" and block["ci_low"] < block["mean"] < block["ci_high"]
    assert block["mean"] == pytest.approx(a.mean() - b.mean())
    assert seeds.win_block(a, b, 0.95) is None
    assert seeds.difference_block(a[0], b[0], 0.95) is None


def test_t_interval_and_quantiles():
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert stats.t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)
    assert stats.t_quantile(0.975, 9) == pytest.approx(2.2622, abs=1e-4)
    assert stats.t_quantile(0.025, 30) == pytest.approx(-2.0423, abs=1e-4)
    assert stats.t_quantile(0.95, 1e7) == pytest.approx(1.6449, abs=1e-4)
    # Two seeds: mean +- 12.706 * |x1 - x2| / 2.
    t = stats.t_interval([1.0, 1.2], 0.95)
    assert (t["ci_low"], t["ci_high"]) == pytest.approx((1.1 - 12.7062 * 0.1, 1.1 + 12.7062 * 0.1), abs=1e-3)
    assert stats.t_interval([np.nan, 2.0], 0.95) == {
        "mean": 2.0, "ci_low": None, "ci_high": None, "sd": None, "n": 1,
    }  # fmt: skip
    assert seeds.survives({"ci_low": 0.1, "ci_high": 0.3}, {"ci_low": 0.01, "ci_high": 0.5}, 0.0)
    assert not seeds.survives({"ci_low": 0.1, "ci_high": 0.3}, {"ci_low": -0.01, "ci_high": 0.5}, 0.0)
    assert not seeds.survives({"ci_low": 0.1, "ci_high": 0.3}, {"ci_low": None, "ci_high": None}, 0.0)
    assert seeds.survives({"ci_low": 0.1, "ci_high": 0.4}, {"ci_low": 0.2, "ci_high": 0.45}, 0.5)


# ------------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_pipeline_with_two_seeds_evaluates_them_as_one_variant(tmp_path, tiny_llama):
    config = write_pipeline(
        tmp_path,
        # Two steps of an SFT model trained for 10 never stop by themselves: no length alarm (it would keep
        # the untrained policy, and both seeds would be the SFT model).
        ppo={"seeds": [1, 2], "max_mean_length": None},
        variants=["sft", "rlhf"],
        max_prompts=8,
        num_samples=1,
        best_of_n=1,
        bootstrap_samples=200,
        max_new_tokens=8,
    )
    plan = pipeline.run(str(config))
    run = tmp_path / "run"
    assert [s.key for s in plan] == ["sft", "reward", "ppo-seed1", "ppo-seed2", "eval"]
    for seed in (1, 2):
        manifest = json.loads((run / f"ppo-seed{seed}" / "manifest.json").read_text())
        assert manifest["seed"] == seed
    assert not (run / "ppo").exists()
    adapters = [(run / f"ppo-seed{s}" / "adapter_model.safetensors").read_bytes() for s in (1, 2)]
    assert adapters[0] != adapters[1], "the two seeds trained the same policy"
    ledger = json.loads((run / pipeline.LEDGER).read_text())
    assert {"ppo-seed1", "ppo-seed2", "eval"} <= set(ledger)

    results = json.loads((run / "eval" / "results.json").read_text())
    assert list(results["variants"]) == ["sft", "rlhf"]
    rlhf = results["variants"]["rlhf"]
    assert [r["seed"] for r in rlhf["seed_runs"]] == [1, 2]
    reward = rlhf["metrics"]["reward"]
    assert reward["n"] == 8 and reward["seeds"]["n"] == 2 and len(reward["seeds"]["per_seed"]) == 2
    assert isinstance(rlhf["vs_baseline"]["reward"]["survives_seeds"], bool)
    # The runs are really different policies: each moved away from SFT, by its own amount.
    kl = rlhf["metrics"]["kl_to_sft"]["seeds"]["per_seed"]
    assert all(abs(x) > 0 for x in kl) and kl[0] != kl[1]
    assert "survives_seeds" in results["win_rates"]["rlhf"]["sft"]

    # A second run skips everything, seed runs included.
    again = pipeline.run(str(config))
    assert {s.action for s in again} == {"skip"}
