"""`hftune pipeline`: handoff paths filled in, a second run skips every stage, a changed SFT setting re-runs
SFT and everything after it, `--force`, `--dry-run` without loading weights, strict pipeline configs, and
resuming after the process is killed during SFT; every model it made gets a card and a dry-run push."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hftune import artifacts, cli, pipeline
from hftune.config import ConfigError
from hftune.models import loading

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny"

# A short version of configs/tiny/pipeline.yaml: same stage files, fewer steps.
SHORT = {
    "pretrain": {"max_steps": 40, "save_steps": 20},
    "sft": {"max_steps": 40, "save_steps": 10},
    "reward": {"max_steps": 10},
    "ppo": {"max_steps": 2, "heldout_every": 0},
    "eval": {
        "max_prompts": 6,
        "num_samples": 2,
        "best_of_n": 2,
        "bootstrap_samples": 200,
        "max_new_tokens": 12,
    },
}


def write_pipeline(tmp_path: Path, name: str = "pipeline.yaml", **sft_overrides) -> Path:
    stages = [
        {"stage": "pretrain", "config": str(TINY / "pretrain.yaml"), **SHORT["pretrain"]},
        {"stage": "sft", "config": str(TINY / "sft_full.yaml"), **SHORT["sft"], **sft_overrides},
        {"stage": "reward", "config": str(TINY / "reward.yaml"), **SHORT["reward"]},
        {"stage": "ppo", "config": str(TINY / "ppo.yaml"), **SHORT["ppo"]},
        {
            "stage": "eval",
            "config": str(REPO / "eval/suites/tiny.yaml"),
            "cache_dir": str(tmp_path / "eval-cache"),
            **SHORT["eval"],
        },
    ]
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": stages}))
    return path


def actions(plan) -> dict[str, str]:
    return {s.name: s.action for s in plan}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_llama):
    tmp = tmp_path_factory.mktemp("pipeline")
    config = write_pipeline(tmp)
    plan = pipeline.run(str(config))
    return tmp, config, plan


def test_pipeline_runs_every_stage_with_handoff_and_lineage(first_run):
    tmp, _, plan = first_run
    assert actions(plan) == {"pretrain": "run", "sft": "run", "reward": "run", "ppo": "run", "eval": "run"}
    run = tmp / "run"
    sft_manifest = json.loads((run / "sft" / "manifest.json").read_text())
    assert sft_manifest["parents"][0]["name_or_path"] == str(run / "pretrain")
    for stage in ("pretrain", "sft", "reward", "ppo", "eval"):
        assert (run / stage / "manifest.json").is_file(), stage
    ppo_manifest = json.loads((run / "ppo" / "manifest.json").read_text())
    assert [p["name_or_path"] for p in ppo_manifest["parents"]] == [str(run / "sft"), str(run / "reward")]
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["variants"]["rlhf"]["model"] == str(run / "ppo")
    assert (run / "eval" / "report.html").is_file()


# Every model the pipeline made gets a card and a dry-run push (checked before the tests below re-run it).
LINEAGE = {
    "pretrain": ["from scratch", "pretraining"],
    "sft": ["from scratch", "pretraining", "supervised fine-tuning"],
    "reward": ["from scratch", "pretraining", "supervised fine-tuning", "reward model"],
    "ppo": ["from scratch", "pretraining", "supervised fine-tuning", "reward model", "RLHF (ppo)"],
}


@pytest.mark.parametrize("stage", LINEAGE)
def test_every_model_of_a_from_scratch_pipeline_gets_a_card_and_a_dry_run(first_run, stage, tmp_path, capsys):
    from huggingface_hub import ModelCard

    from_scratch = first_run[0] / "run"
    folder = from_scratch / stage
    assert cli.main(["card", str(folder)]) == 0
    text = capsys.readouterr().out
    summary = next(line for line in text.splitlines() if line.startswith("A "))
    assert "trained from scratch" in summary and "llama weights initialised at random" in summary
    assert ModelCard(text).data.base_model is None  # no bogus Hub link: there is no base model
    lineage = text[text.index("## Lineage") : text.index("## Evaluation")]
    rows = [
        line.split(" | ")[1] for line in lineage.splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert rows[1:] == LINEAGE[stage]

    args = ["--eval", str(from_scratch / "eval")] if stage == "ppo" else []
    out = tmp_path / "staged"
    assert cli.main(["push", str(folder), "--repo-id", "me/x", "--dry-run", str(out), *args]) == 0
    staged = (out / "README.md").read_text()
    assert ModelCard(staged).data.base_model is None and "trained from scratch" in staged
    assert {"README.md", "manifest.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert any(p.suffix == ".safetensors" for p in out.iterdir())
    if stage == "ppo":  # the eval compared this very folder: its table, and no "does not list" note
        assert "| reward ↑ |" in staged and "does not list" not in staged


def test_the_eval_folder_of_a_pipeline_is_refused_as_a_model_naming_eval(first_run, tmp_path, capsys):
    """An eval folder holds results, not a model: card and push say to pass it with --eval instead."""
    folder = str(first_run[0] / "run" / "eval")
    for argv in (["card", folder], ["push", folder, "--repo-id", "me/x", "--dry-run", str(tmp_path / "o")]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err and f"--eval {folder}" in err[-1], err
    assert not (tmp_path / "o").exists()


def test_second_run_skips_every_stage(first_run, monkeypatch):
    _, config, _ = first_run
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a skipped stage loaded a model"))
    started = time.time()
    plan = pipeline.run(str(config))
    assert set(actions(plan).values()) == {"skip"}
    assert time.time() - started < 30


def test_dry_run_plans_without_loading_weights(first_run, monkeypatch, capsys):
    tmp, _, _ = first_run
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("dry-run loaded a model"))
    changed = write_pipeline(tmp, "changed.yaml", learning_rate=2.0e-3)
    plan = pipeline.run(str(changed), dry_run=True)
    # A changed SFT hyper-parameter re-runs SFT and everything that depends on it, not pretraining.
    assert actions(plan) == {"pretrain": "skip", "sft": "run", "reward": "run", "ppo": "run", "eval": "run"}
    assert "pipeline plan" in capsys.readouterr().out
    plan = pipeline.run(str(write_pipeline(tmp, "same.yaml")), dry_run=True, force="ppo")
    assert actions(plan) == {"pretrain": "skip", "sft": "skip", "reward": "skip", "ppo": "run", "eval": "run"}


def test_changed_sft_setting_reruns_sft_and_everything_after(first_run):
    tmp, _, _ = first_run
    before = json.loads((tmp / "run" / "reward" / "manifest.json").read_text())["created"]
    plan = pipeline.run(str(write_pipeline(tmp, "changed.yaml", learning_rate=2.0e-3)))
    assert actions(plan) == {"pretrain": "skip", "sft": "run", "reward": "run", "ppo": "run", "eval": "run"}
    reward_manifest = json.loads((tmp / "run" / "reward" / "manifest.json").read_text())
    assert reward_manifest["parents"][0]["manifest_sha256"] == artifacts.manifest_sha256(tmp / "run" / "sft")
    assert reward_manifest["created"] >= before


def test_pipeline_config_errors_name_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(tmp_path / "run"),
                "stagez": [],
                "stages": [
                    {"stage": "sfft"},
                    {"stage": "sft", "config": str(TINY / "sft.yaml")},
                    {"stage": "reward", "config": str(TINY / "reward.yaml"), "model_name_or_path": "x"},
                ],
            }
        )
    )
    with pytest.raises(ConfigError) as err:
        pipeline.load_plan(str(bad))
    text = str(err.value)
    assert "stagez" in text and "did you mean `stages`" in text
    assert "sfft" in text and "`sft`" in text
    assert "model_name_or_path" in text and "filled in by the pipeline" in text


@pytest.mark.e2e
@pytest.mark.slow(30)
def test_killed_during_sft_resumes_and_completes(tmp_path, tiny_llama, caplog):
    # Enough steps after the first checkpoint (step 10) that the kill, at most 0.1 s after it appears,
    # lands inside SFT; the resumed run then trains only the rest.
    config = write_pipeline(tmp_path, max_steps=100, save_steps=10)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hftune", "pipeline", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    work = tmp_path / "run" / "sft.work"
    deadline = time.time() + 240
    while not list(work.glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, "the pipeline ended before it could be killed"
        assert time.time() < deadline, "no SFT checkpoint appeared"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "sft" / "manifest.json").exists()
    with caplog.at_level("INFO", logger="hftune"):
        plan = pipeline.run(str(config))
    assert plan[0].action == "skip" and plan[1].action == "resume"
    assert "resuming from" in caplog.text and "checkpoint-" in caplog.text
    history = json.loads((tmp_path / "run" / "sft" / "log_history.json").read_text())
    assert max(h.get("step", 0) for h in history) == 100
    assert (tmp_path / "run" / "eval" / "results.json").is_file()


def test_an_interrupted_stage_resumes_only_with_the_inputs_it_started_with(first_run):
    tmp, original, _ = first_run
    # The run folder holds the first run's outputs, or the changed-SFT test's if that ran before this one.
    for config in (original, write_pipeline(tmp, "changed.yaml", learning_rate=2.0e-3)):
        plan = pipeline.run(str(config), dry_run=True)
        if set(actions(plan).values()) == {"skip"}:
            break
    else:
        pytest.fail("no config matches the finished run")
    ppo = next(s for s in plan if s.name == "ppo")
    hidden = ppo.output_dir.with_name("ppo.hidden")
    work = artifacts.work_dir(ppo.output_dir)
    ppo.output_dir.rename(
        hidden
    )  # as if PPO had been killed before finishing (its folder is never half-made)
    try:
        work.mkdir()
        artifacts.write_json(work / pipeline.STARTED, ppo.fingerprint)
        assert actions(pipeline.run(str(config), dry_run=True))["ppo"] == "resume"
        artifacts.write_json(work / pipeline.STARTED, {**ppo.fingerprint, "config_sha256": "another config"})
        assert actions(pipeline.run(str(config), dry_run=True))["ppo"] == "run"
    finally:
        hidden.rename(ppo.output_dir)
        shutil.rmtree(work, ignore_errors=True)


def test_a_checkpoint_cut_off_mid_write_is_not_resumed(tmp_path):
    from hftune.stages import common

    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-20").mkdir()  # killed before the Trainer wrote its state (it writes it last)
    (tmp_path / "checkpoint-20" / "model.safetensors").write_text("partial")
    assert common.last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert not (tmp_path / "checkpoint-20").exists()
