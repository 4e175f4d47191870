"""The report's plots with a variant trained with several seeds, and the training curves they draw.

samples.jsonl keeps a seeded variant's replies under its runs' names (`rlhf@ppo-seed1`, ...), never under the
variant's, so these tests build results and samples in that layout (synthetic, no model) and check that the
variant, its seed mean and each run reach the plots, and that `curves` reads the run folders' logs.
"""

from __future__ import annotations

import json
import logging
import random

import pytest

from hftune.evaluation import curves
from hftune.evaluation.report.plots import (
    PALETTE,
    Curve,
    distribution_boxes,
    render_plots,
    seed_mean,
    seed_points,
    training_curves,
)
from hftune.evaluation.report.sections import metrics_table

RUNS = ["rlhf@ppo-seed1", "rlhf@ppo-seed2", "rlhf@ppo-seed3"]
N_PROMPTS = 10


def _stat(mean: float, per_seed: list[float] | None = None) -> dict:
    out = {"mean": mean, "ci_low": mean - 0.3, "ci_high": mean + 0.3, "n": N_PROMPTS}
    if per_seed is not None:
        out["seeds"] = {"n": len(per_seed), "per_seed": per_seed, "mean": sum(per_seed) / len(per_seed)}
    return out


def _ppo_log(folder, seed: int, steps: int = 30) -> None:
    """A PPO run's metrics.jsonl (the guardrails' rows), its reward rising by a seed-dependent slope."""
    folder.mkdir(parents=True)
    rows = [
        {
            "objective/kl": 0.05 * step,
            "objective/scores": 0.1 * seed * step,
            "objective/rlhf_reward": 0.1 * seed * step - 0.01,
            "response/mean_length": 8.0 + seed,
            "step": step,
        }
        for step in range(1, steps + 1)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _dpo_log(folder) -> None:
    """A DPO run has no metrics.jsonl: its trainer's log_history.json (an eval row, train rows, a summary)."""
    folder.mkdir(parents=True)
    rows = [
        {"eval_loss": 0.69, "eval_rewards/margins": 0.0, "step": 0},
        *({"loss": 0.6, "rewards/margins": 0.1 * step, "step": step} for step in (20, 40, 60)),
        {"train_runtime": 12.0, "step": 60},
    ]
    (folder / "log_history.json").write_text(json.dumps(rows))


@pytest.fixture
def seeded(tmp_path):
    """(results, samples): sft, rlhf trained with 3 seeds (replies under the runs' names), dpo."""
    rng = random.Random(0)
    samples = []
    for i in range(N_PROMPTS):
        replies = {
            "sft": {"reward": rng.gauss(0, 1), "length": 8},
            "dpo": {"reward": rng.gauss(1, 1), "length": 9},
        }
        for k, run in enumerate(RUNS):
            replies[run] = {"reward": rng.gauss(2 + k, 1), "length": 9 + k}
        samples.append({"prompt_index": i, "prompt": f"q{i}", "variants": replies})
    samples[3]["variants"][RUNS[1]]["reward"] = None  # a run without a score on one prompt
    for k in (1, 2, 3):
        _ppo_log(tmp_path / f"ppo-seed{k}", k)
    _dpo_log(tmp_path / "dpo")
    training = {
        "rlhf": curves.variant_block({run: tmp_path / f"ppo-seed{k}" for k, run in enumerate(RUNS, start=1)}),
        "dpo": curves.variant_block({"dpo": tmp_path / "dpo"}),
    }
    results = {
        "baseline": "sft",
        "variants": {
            "sft": {"kind": "sft", "metrics": {"reward": _stat(0.0), "kl_to_sft": _stat(0.0)}},
            "rlhf": {
                "kind": "rlhf",
                "model": [f"runs/ppo-seed{k}" for k in (1, 2, 3)],
                "seed_runs": [
                    {"run": run, "model": f"runs/ppo-seed{k}", "seed": k} for k, run in enumerate(RUNS, 1)
                ],
                "metrics": {
                    "reward": _stat(3.0, [2.0, 3.0, 4.0]),
                    "expected_reward": _stat(3.1, [2.1, 3.1, 4.1]),
                    "kl_to_sft": _stat(1.4, [1.6, 1.4, 1.2]),
                },
            },
            "dpo": {"kind": "rlhf", "metrics": {"reward": _stat(1.0), "kl_to_sft": _stat(0.5)}},
        },
        "win_rates": {
            a: {
                b: {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": N_PROMPTS}
                for b in ("sft", "rlhf", "dpo")
            }
            for a in ("sft", "rlhf", "dpo")
        },
        "training": training,
    }
    return results, samples


def test_every_plot_is_drawn_with_a_seeded_variant(seeded):
    results, samples = seeded
    plots = render_plots(results, samples)
    assert [p.title for p in plots] == [
        "Reward per prompt",
        "Win rates",
        "Reward vs KL to SFT",
        "Response length",
        "Training curves",
    ]
    for plot in plots:
        assert plot.png is not None, f"{plot.title}: {plot.note}"


def test_distribution_has_the_seed_mean_then_each_run(seeded):
    results, samples = seeded
    boxes = distribution_boxes(results, samples, "reward")
    assert [b.label for b in boxes] == ["sft", "rlhf", *RUNS, "dpo"]
    by_label = {b.label: b for b in boxes}
    for run in RUNS:
        expected = [s["variants"][run]["reward"] for s in samples]
        assert by_label[run].values == [v for v in expected if v is not None]
        assert by_label[run].run and by_label[run].color != PALETTE[1]  # lighter than its variant's colour
    # The variant's box: per prompt, the mean over the runs that scored it (prompt 3: two of three).
    means = []
    for s in samples:
        values = [s["variants"][run]["reward"] for run in RUNS if s["variants"][run]["reward"] is not None]
        means.append(sum(values) / len(values))
    assert by_label["rlhf"].values == pytest.approx(means)
    assert not by_label["rlhf"].run and by_label["rlhf"].color == PALETTE[1]  # the colour of its table row
    lengths = {b.label: b.values for b in distribution_boxes(results, samples, "length")}
    assert lengths["rlhf"] == [10.0] * N_PROMPTS and lengths[RUNS[2]] == [11.0] * N_PROMPTS


def test_plot_names_are_the_table_rows(seeded):
    results, samples = seeded
    rows = [row[0].text for row in metrics_table(results).rows]
    boxes = distribution_boxes(results, samples, "reward")
    assert [b.label for b in boxes if not b.run] == rows
    assert list(training_curves(results, "reward")) == ["rlhf"] and "rlhf" in rows


def test_reward_kl_has_each_seed_runs_point(seeded):
    results, _ = seeded
    metrics = results["variants"]["rlhf"]["metrics"]
    points = seed_points(results, "rlhf", metrics["kl_to_sft"], metrics["expected_reward"])
    assert points == [(RUNS[0], 1.6, 2.1), (RUNS[1], 1.4, 3.1), (RUNS[2], 1.2, 4.1)]
    # A single-run variant has none, and per-seed numbers that do not match the runs one to one are not drawn.
    dpo = results["variants"]["dpo"]["metrics"]
    assert seed_points(results, "dpo", dpo["kl_to_sft"], dpo["reward"]) == []
    short = {**metrics["kl_to_sft"], "seeds": {"per_seed": [1.6, 1.4]}}
    assert seed_points(results, "rlhf", short, metrics["expected_reward"]) == []


def test_curves_read_ppo_and_grpo_logs(tmp_path):
    _ppo_log(tmp_path / "ppo", seed=2, steps=5)
    keys, series = curves.read(tmp_path / "ppo")
    assert keys == {"reward": "objective/scores", "kl": "objective/kl", "length": "response/mean_length"}
    assert series["step"] == [1, 2, 3, 4, 5]
    assert series["reward"] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert series["kl"] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.25]) and series["length"] == [10.0] * 5

    grpo = tmp_path / "grpo"
    grpo.mkdir()
    rows = [
        {"reward": 0.1, "kl": 0.0, "completions/mean_length": 12.0, "loss": 0.0, "step": 1},
        {"reward": 0.3, "completions/mean_length": 11.0, "step": 2},  # no kl logged this step
        {"train_runtime": 3.0, "step": 2},  # the end-of-training summary: not a point
    ]
    (grpo / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    keys, series = curves.read(grpo)
    assert keys == {"reward": "reward", "kl": "kl", "length": "completions/mean_length"}
    assert series == {"step": [1, 2], "reward": [0.1, 0.3], "kl": [0.0, None], "length": [12.0, 11.0]}

    # DPO: its log_history.json, the margins of the train rows only.
    _dpo_log(tmp_path / "dpo")
    keys, series = curves.read(tmp_path / "dpo")
    assert keys == {"margin": "rewards/margins"}
    assert series["step"] == [20, 40, 60] and series["margin"] == pytest.approx([2.0, 4.0, 6.0])


def test_missing_or_unreadable_logs_are_skipped_with_a_warning(tmp_path, caplog):
    _ppo_log(tmp_path / "ok", seed=1, steps=3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.jsonl").write_text('{"step": 1, "kl": 0.1}\n{"step": 2, "kl"')
    runs = {"a": tmp_path / "ok", "b": tmp_path / "empty", "c": tmp_path / "broken", "d": tmp_path / "gone"}
    with caplog.at_level(logging.WARNING, logger="hftune.evaluation.curves"):
        block = curves.variant_block(runs)
    assert list(block["runs"]) == ["a"]
    assert len(caplog.records) == 3 and "cannot read" in caplog.text
    assert curves.variant_block({"b": tmp_path / "empty"}) is None


def test_downsampling_keeps_first_and_last_step(tmp_path):
    assert curves.downsample(list(range(5)), 200) == list(range(5))
    kept = curves.downsample(list(range(1000)), 7)
    assert kept[0] == 0 and kept[-1] == 999 and len(kept) == 7
    _ppo_log(tmp_path / "long", seed=1, steps=1001)
    _, series = curves.read(tmp_path / "long")
    assert len(series["step"]) <= curves.MAX_POINTS and series["step"][0] == 1 and series["step"][-1] == 1001
    assert len(series["reward"]) == len(series["step"])


def test_training_curves_mean_and_band_across_seeds(seeded):
    results, _ = seeded
    runs, mean = training_curves(results, "reward")["rlhf"]
    assert len(runs) == 3 and runs[0].steps == list(map(float, range(1, 31)))
    # Seed k's reward is 0.1 * k * step: mean 0.2 * step, band from seed 1 to seed 3.
    assert mean.values == pytest.approx([0.2 * s for s in range(1, 31)])
    assert mean.low == pytest.approx([0.1 * s for s in range(1, 31)])
    assert mean.high == pytest.approx([0.3 * s for s in range(1, 31)])
    dpo_runs, dpo_mean = training_curves(results, "margin")["dpo"]
    assert dpo_mean is None and dpo_runs[0].values == pytest.approx([2.0, 4.0, 6.0])
    assert "dpo" not in training_curves(results, "kl")
    # Runs on different steps (one stopped early): interpolated, mean only where two runs cover a step.
    banded = seed_mean([Curve([0, 10], [0.0, 10.0]), Curve([0, 5], [2.0, 2.0])])
    assert banded.steps == [0.0, 5.0] and banded.values == pytest.approx([1.0, 3.5])
    assert banded.low == pytest.approx([0.0, 2.0]) and banded.high == pytest.approx([2.0, 5.0])


def test_training_plot_is_skipped_without_curves(seeded):
    results, samples = seeded
    for training in (None, {}, {"rlhf": {"metrics": {}, "runs": {}}}):
        plots = {p.title: p for p in render_plots({**results, "training": training}, samples)}
        assert plots["Training curves"].png is None
        assert "no training curves in results.json" in plots["Training curves"].note
        assert plots["Reward per prompt"].png is not None


def test_the_suite_names_each_seed_runs_curve(tmp_path):
    from hftune.evaluation import suite as suite_module

    for k in (1, 2):
        _ppo_log(tmp_path / f"ppo-seed{k}", k, steps=4)
    _dpo_log(tmp_path / "dpo")
    models = f"{{rlhf: [{tmp_path}/ppo-seed1, {tmp_path}/ppo-seed2], dpo: {tmp_path}/dpo}}"
    args = ["--sft_model", "m", "--reward_model", "r", "--output_dir", str(tmp_path / "e")]
    cfg = suite_module.parse("tiny", [*args, "--rlhf_models", models])
    training = curves.training(cfg.hftune)
    assert list(training) == ["rlhf", "dpo"]
    assert list(training["rlhf"]["runs"]) == ["rlhf@ppo-seed1", "rlhf@ppo-seed2"]
    assert training["rlhf"]["runs"]["rlhf@ppo-seed2"]["reward"] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert list(training["dpo"]["runs"]) == ["dpo"]
    json.dumps(training)  # results.json-ready
