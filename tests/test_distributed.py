"""Stages on several processes: SFT and the reward stage under `torchrun` with 2 CPU processes (DDP over
gloo), and a pipeline that launches a stage in 2 processes itself.

Each 2-process run goes through tests/dist_worker.py, the real `hftune` CLI plus a record of the rows each
process trained on and how often it prepared data, so the test can show that the two processes split
every epoch between them (each training row seen exactly once), that data was prepared once, that one
artifact was written, and that it loads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from hftune import artifacts, pipeline
from hftune.config import ConfigError
from hftune.errors import UserError
from hftune.models import loading

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("dist_worker.py")


def torchrun(args: list[str], record: Path) -> subprocess.CompletedProcess:
    record.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # One thread a process (2 cores), and datasets' INFO lines show whether a process tokenized or read
    # the cache the other one wrote.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DATASETS_VERBOSITY": "info"}
    # What is checked is how the processes share preparing and tokenizing: a hit in hftune's data cache
    # (another test prepared the same rows) would leave nothing to share.
    args = [*args, "--data_cache", "false"]
    run = subprocess.run(
        [*command, str(WORKER), str(record), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run


def records(record: Path) -> list[dict]:
    return [json.loads((record / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def assert_epoch_split(ranks: list[dict], columns: tuple[str, ...], batch: int) -> None:
    """Both processes together trained on every training row once, half each. The only repeats allowed are
    the ones accelerate adds to fill the last step when the rows do not divide into 2 x `batch`."""
    rows = ranks[0]["training_rows"]
    n = len(rows[columns[0]])
    padding = -n % (2 * batch)
    expected = Counter(tuple(row) for key in columns for row in rows[key])
    seen = [Counter(tuple(row) for row in rank["seen"]) for rank in ranks]
    assert not expected - (seen[0] + seen[1])  # every row seen
    assert sum(((seen[0] + seen[1]) - expected).values()) == padding * len(columns)
    assert sum(seen[0].values()) == sum(seen[1].values()) == (n + padding) * len(columns) // 2


def assert_one_artifact(out: Path) -> None:
    assert artifacts.is_complete(out)
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".") or p.suffix == ".work"]
    assert leftovers == [], leftovers


def assert_logged_once(run: subprocess.CompletedProcess) -> None:
    assert run.stdout.count("saved: ") == 1, run.stdout  # the summary, from the main process only
    assert run.stderr.count("[hftune] data: kept") == 1, run.stderr


def tokenization_caches(run: subprocess.CompletedProcess) -> tuple[set[str], set[str]]:
    """The dataset caches one process wrote and the ones another read instead of computing them."""
    cached = set(re.findall(r"Caching processed dataset at (\S+?)\.arrow", run.stderr))
    loaded = set(re.findall(r"Loading cached processed dataset at (\S+?)_\*_of_\d+\.arrow", run.stderr))
    return cached, loaded


@pytest.mark.e2e
@pytest.mark.slow(80)
def test_sft_reward_and_rloo_on_two_processes(tmp_path, tiny_llama):
    # 176 training rows, 2 processes x 8 a batch: 11 steps make one epoch with no batch padded (accelerate
    # would fill a short last batch with repeated rows).
    sft_out = tmp_path / "runs" / "sft"
    run = torchrun(
        ["sft", "--config", str(REPO / "configs/tiny/sft.yaml"), "--output_dir", str(sft_out),
         "--max_steps", "-1", "--num_train_epochs", "1", "--per_device_train_batch_size", "8"],
        tmp_path / "sft-record",
    )  # fmt: skip
    ranks = records(tmp_path / "sft-record")
    assert [r["prepared"] for r in ranks] == [1, 0]  # the main process prepared the data; the other read it
    n_train = artifacts.read_manifest(sft_out)["data"]["n_train"]
    assert len(ranks[0]["training_rows"]["input_ids"]) == n_train == 176
    assert_epoch_split(ranks, ("input_ids",), batch=8)
    assert_one_artifact(sft_out)
    assert_logged_once(run)
    cached, loaded = tokenization_caches(run)
    assert cached and loaded == cached  # TRL tokenized once: whatever one process cached, the other read
    manifest = artifacts.read_manifest(sft_out)
    assert manifest["metrics"]["global_step"] == 11 and manifest["metrics"]["epoch"] == 1

    # The result loads, and its adapter changes the model.
    from trl import ModelConfig

    ids = torch.tensor([[5, 6, 7, 8, 9]])
    tuned = loading.load_model(str(sft_out), ModelConfig(dtype="float32"), for_training=False).eval()
    base = loading.load_model(tiny_llama, ModelConfig(dtype="float32"), for_training=False).eval()
    with torch.no_grad():
        assert (tuned(ids).logits - base(ids).logits).abs().max() > 1e-3

    # The reward stage on top: 351 training pairs (SFT's held-out prompts left out), 2 processes x 1 pair a
    # batch: the last step repeats one pair.
    reward_out = tmp_path / "runs" / "reward"
    run = torchrun(
        ["reward", "--config", str(REPO / "configs/tiny/reward.yaml"), "--model_name_or_path", str(sft_out),
         "--output_dir", str(reward_out), "--max_steps", "-1", "--num_train_epochs", "1",
         "--per_device_train_batch_size", "1"],
        tmp_path / "reward-record",
    )  # fmt: skip
    ranks = records(tmp_path / "reward-record")
    assert [r["prepared"] for r in ranks] == [1, 0]
    assert len(ranks[0]["training_rows"]["chosen_ids"]) == 351
    assert_epoch_split(ranks, ("chosen_ids", "rejected_ids"), batch=1)  # a pair: its chosen and rejected rows
    assert_one_artifact(reward_out)
    assert_logged_once(run)
    cached, loaded = tokenization_caches(run)
    # hftune tokenizes the pairs (train and eval) once; TRL's length filter after it is its own (and
    # hashes differently in each process, so both run it: a cheap pass over token counts).
    assert len(loaded) == 2 and loaded <= cached, (cached, loaded)

    from hftune.models.scoring import load_scorer

    scorer = load_scorer(str(reward_out))
    report = json.loads((reward_out / "reward_report.json").read_text())
    assert report["accuracy"] > 0.8  # it learnt the preferences, and it scores after reloading:
    assert len(scorer.score([[{"role": "user", "content": "What is 2 + 2?"}]], ["4"])) == 1

    # RLOO on both, with a held-out check every step and a length alarm that must fire at the first one:
    # both processes stop at the same step (one left training would wait for the other forever), and the
    # RL logs are written once, by the main process, from the rollouts of both.
    rloo_out = tmp_path / "runs" / "rloo"
    run = torchrun(
        ["ppo", "--config", str(REPO / "configs/tiny/ppo.yaml"), "--algorithm", "rloo",
         "--model_name_or_path", str(sft_out), "--reward_model_path", str(reward_out),
         "--output_dir", str(rloo_out), "--max_steps", "3", "--heldout_every", "1",
         "--max_mean_length", "0.5"],
        tmp_path / "rloo-record",
    )  # fmt: skip
    assert_one_artifact(rloo_out)
    assert "alarm" in artifacts.read_manifest(rloo_out)["metrics"]
    rows = [json.loads(line) for line in (rloo_out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1], rows
    # The response statistics cover both processes' completions, as TRL's own gathered ones do.
    assert rows[0]["response/mean_length"] == pytest.approx(rows[0]["completions/mean_length"])
    samples = (rloo_out / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 16  # the 16 held-out prompts, once
    assert run.stdout.count("saved: ") == 1 and run.stdout.count("ALARM") == 1


# Every stage that trains on several processes, in one launch (the commands run one after another in the
# same 2 processes): 3 steps each, held-out rows on, so each stage measures its "before training" numbers.
# fmt: off
STAGES = {
    "pretrain": ["pretrain", "--config", "pretrain.yaml"],
    "sft-lora": ["sft", "--config", "sft.yaml"],
    "sft-full": ["sft", "--config", "sft_full.yaml"],
    "reward": ["reward", "--config", "reward.yaml", "--model_name_or_path", "{sft-full}"],
    **{
        name: ["dpo", "--config", "dpo.yaml", "--algorithm", name, "--model_name_or_path", "{sft-full}"]
        for name in ("dpo", "kto", "orpo", "simpo")
    },
    **{
        name: ["ppo", "--config", "ppo.yaml", "--algorithm", name, "--model_name_or_path", "{sft-full}",
               "--reward_model_path", "{reward}", "--max_mean_length", "1000"]
        for name in ("rloo", "grpo")
    },
}
# fmt: on


def stage_command(name: str, runs: Path, *extra: str, models: Path | None = None) -> list[str]:
    """`name`'s command, writing to runs/NAME and reading the models it starts from in `models` (`runs`)."""
    command = [arg.format(**{k: str((models or runs) / k) for k in STAGES}) for arg in STAGES[name]]
    command[2] = str(REPO / "configs/tiny" / command[2])
    return [*command, "--output_dir", str(runs / name), "--max_steps", "3", "--logging_steps", "1", *extra]


def logged_losses(out: Path) -> list[float]:
    return [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]


@pytest.mark.e2e
@pytest.mark.slow(45)
def test_every_stage_ends_with_the_same_weights_on_both_processes(tmp_path):
    """DDP keeps one model: after training, each rank's trainable weights (hashed as it saves, before any
    gathering) are bit-identical, for every stage that trains on several processes. On a 2-process run the
    "before training" evaluation used to leave the model prepared for evaluation only, accelerate then
    skipped the DDP wrap, and pretrain, sft, dpo, kto, orpo and simpo trained two separate copies and
    exited 0. The losses of pretrain, SFT (LoRA and full), the reward model, DPO and SimPO match a 1-process
    run on the same global batch (twice each config's batch), step by step."""
    runs = tmp_path / "runs"
    commands = [stage_command(name, runs) for name in STAGES]
    torchrun([arg for command in commands for arg in ["+", *command]][1:], tmp_path / "record")
    ranks = [r["checksums"] for r in records(tmp_path / "record")]
    assert set(ranks[0]) == set(STAGES), ranks[0]
    differ = [name for name in STAGES if ranks[0][name] != ranks[1][name]]
    assert differ == [], f"the ranks hold different weights after {differ}"
    assert len(set(ranks[0].values())) == len(STAGES)  # every stage trained weights of its own
    for name in STAGES:
        manifest = artifacts.read_manifest(runs / name)
        assert "alarm" not in manifest["metrics"], name
        assert manifest["run"] == {"processes": 2, "engine": "DDP", "mixed_precision": "no", "device": "cpu"}

    # The same global batch on one process (twice the config's batch): the same losses, step by step. Not
    # KTO (its KL baseline is estimated within each process's batch), ORPO (its NLL term is a mean over each
    # process's tokens: 4e-4 apart on the first step, before any update) nor RLOO / GRPO (each process
    # samples its own completions, so 2 processes draw other replies than 1).
    from hftune import cli

    alone = tmp_path / "alone"
    for name in ("pretrain", "sft-lora", "sft-full", "reward", "dpo", "simpo"):
        command = stage_command(name, alone, models=runs)
        batch = yaml.safe_load(Path(command[2]).read_text())["per_device_train_batch_size"]
        assert cli.main([*command, "--per_device_train_batch_size", str(2 * batch)]) == 0, name
        two, one = logged_losses(runs / name), logged_losses(alone / name)
        assert len(two) == len(one) == 3 and two == pytest.approx(one, rel=1e-4, abs=1e-5), (name, two, one)
    # Measured before training on the 2 processes too (held-out batches split differently, so the mean of
    # batch means is not the 1-process one).
    for name, before in (("sft-lora", "eval_loss_before"), ("dpo", "heldout_before/logps/chosen")):
        assert math.isfinite(json.loads((runs / name / "metrics.json").read_text())[before]), name


@pytest.mark.e2e
@pytest.mark.slow(45)
@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_zero_on_cpu_trains_and_saves_whole_weights(tmp_path, zero):
    """`accelerate launch` with the shipped DeepSpeed config on 2 CPU processes (DeepSpeed's CPU accelerator,
    gloo; `--mixed_precision no`, since the configs' bf16 is for GPUs): SFT in full and with LoRA, the reward
    model and DPO train on a real DeepSpeed engine (the manifest says which ZeRO stage ran), the ranks agree
    (ZeRO-3's shards gathered), and each saved artifact holds the whole weights: it loads in this process
    and gives the trained model's logits. ZeRO-3 used to fail on the reward model (its pairs were scored on
    the sharded model before training) and on SFT (evaluated before the engine started)."""
    pytest.importorskip("deepspeed")
    runs, record = tmp_path / "runs", tmp_path / "record"
    record.mkdir()
    names = ("sft-full", "sft-lora", "reward", "dpo")
    commands = [stage_command(name, runs) for name in names]
    config = REPO / f"configs/accelerate/deepspeed_zero{zero}.yaml"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    command += ["--num_processes", "2", "--mixed_precision", "no", str(WORKER), str(record)]
    command += [arg for stage in commands for arg in ["+", *stage]][1:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    ranks = records(record)
    assert ranks[0]["checksums"] == ranks[1]["checksums"] and set(ranks[0]["checksums"]) == set(names)

    from trl import ModelConfig

    from hftune.models.scoring import load_scorer

    ids = torch.tensor([[5, 6, 7, 8, 9]])
    for name in names:
        assert_one_artifact(runs / name)
        manifest = artifacts.read_manifest(runs / name)
        assert manifest["run"]["engine"] == f"DeepSpeed ZeRO-{zero}" and manifest["run"]["processes"] == 2
        if name == "reward":
            model = load_scorer(str(runs / name)).model
        else:
            model = loading.load_model(str(runs / name), ModelConfig(dtype="float32"), for_training=False)
        with torch.no_grad():
            reloaded = model.eval()(input_ids=ids).logits
        trained = torch.tensor(ranks[0]["logits"][name])
        torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.e2e
@pytest.mark.slow(25)
def test_two_nodes_on_loopback_train_one_model(tmp_path):
    """Multi-node as a cluster runs it, on one machine: two `torchrun` launches of one process each
    (`--nnodes 2`, node ranks 0 and 1, rendezvous on 127.0.0.1), as configs/accelerate/multi_node.sbatch
    starts one launch a node. Both ranks end with the same weights; one artifact says 2 processes, DDP."""
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    record, out = tmp_path / "record", tmp_path / "sft"
    record.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(port)]
    args = [str(WORKER), str(record), "sft", "--config", str(REPO / "configs/tiny/sft.yaml")]
    args += ["--output_dir", str(out), "--max_steps", "3"]
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    nodes = [subprocess.Popen([*command, "--node_rank", str(r), *args], env=env, **output) for r in (0, 1)]
    printed = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], printed[0][-3000:] + printed[1][-3000:]
    ranks = [r["checksums"] for r in records(record)]
    assert ranks[0] == ranks[1] and set(ranks[0]) == {"sft"}
    assert_one_artifact(out)
    run = artifacts.read_manifest(out)["run"]
    assert run == {"processes": 2, "engine": "DDP", "mixed_precision": "no", "device": "cpu"}
    assert "".join(printed).count("saved: ") == 1


@pytest.mark.e2e
@pytest.mark.slow(16)
def test_a_data_error_on_the_main_process_ends_the_whole_job(tmp_path):
    """The main process finds the problem while preparing the data (the other waits for it): one readable
    error, the launcher ends the waiting process, and nothing is written."""
    out = tmp_path / "sft"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [
        "-m",
        "hftune",
        "sft",
        "--config",
        str(REPO / "configs/tiny/sft.yaml"),
        "--output_dir",
        str(out),
    ]
    command += ["--data_files", str(REPO / "data_recipes/fixtures/bad_chats.jsonl")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode != 0
    assert run.stderr.count("hftune: error: column `instruction` not found") == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr.split("hftune: error:")[0]  # no traceback of ours before it
    assert not out.exists() and not any(p.name.startswith(".sft") for p in tmp_path.iterdir())


@pytest.mark.e2e
@pytest.mark.slow(40)
def test_pipeline_launches_stages_on_two_processes(tmp_path, capsys):
    """Pretraining from scratch (the tokenizer and initial weights built by the main process first) and SFT
    on its output, each started by the pipeline in 2 processes; a second run launches nothing."""
    config = tmp_path / "pipeline.yaml"
    stages = [
        {"stage": "pretrain", "config": str(REPO / "configs/tiny/pretrain.yaml"), "max_steps": 3},
        {"stage": "sft", "config": str(REPO / "configs/tiny/sft.yaml"), "max_steps": 3},
    ]
    for stage in stages:
        stage["num_processes"] = 2  # the pipeline's key: not passed to the stage, it starts it twice
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": stages}))
    pipeline.run(str(config))
    out = capsys.readouterr().out
    assert "== pretrain (2 processes) ==" in out and "== sft (2 processes) ==" in out
    assert out.count("[2 processes]") == 2  # the plan says so
    metrics = artifacts.read_manifest(tmp_path / "run" / "sft")["metrics"]
    # 2 processes x 8 rows a step: an epoch is ceil(n / 16) steps (one process would take twice as many).
    n_train = artifacts.read_manifest(tmp_path / "run" / "sft")["data"]["n_train"]
    assert metrics["global_step"] == 3 and metrics["epoch"] == pytest.approx(3 / math.ceil(n_train / 16))
    parent = artifacts.read_manifest(tmp_path / "run" / "sft")["parents"][0]
    assert parent["stage"] == "pretrain" and Path(parent["name_or_path"]) == tmp_path / "run" / "pretrain"
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == [".pipeline", "pipeline.json", "pretrain", "sft"], names  # no half-written folder

    pipeline.run(str(config))  # the same inputs again: skipped, without launching anything
    assert "== " not in capsys.readouterr().out


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"stage": "sft", "num_processes": 0}, "`num_processes` must be a whole number >= 1"),
        ({"stage": "sft", "num_processes": "two"}, "`num_processes` must be a whole number >= 1"),
        ({"stage": "sft", "accelerate_config": "nope.yaml"}, "`accelerate_config`: file not found"),
        ({"stage": "eval", "num_processes": 2}, "are for training stages, not eval"),
    ],
)
def test_launch_keys_are_checked(tmp_path, entry, message):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": [entry]}))
    with pytest.raises(ConfigError, match=message):
        pipeline.load_plan(str(config))


def test_launch_commands():
    torchrun = pipeline.Launch(4).command("rloo", Path("/r/rloo.yaml"), resume=True)
    assert torchrun[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
        "-m", "hftune", "ppo", "--config", "/r/rloo.yaml", "--resume",
    ]  # fmt: skip
    fsdp = REPO / "configs/accelerate/fsdp.yaml"
    accelerate = pipeline.Launch(8, fsdp).command("sft", Path("/r/sft.yaml"), resume=False)
    assert accelerate[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(fsdp)]
    assert accelerate[5:10] == ["--num_processes", "8", "-m", "hftune", "sft"]


def test_an_accelerate_config_alone_keeps_its_process_count(tmp_path):
    config = tmp_path / "pipeline.yaml"
    multi_gpu = REPO / "configs/accelerate/multi_gpu.yaml"
    stage = {
        "stage": "sft",
        "config": str(REPO / "configs/tiny/sft.yaml"),
        "accelerate_config": str(multi_gpu),
    }
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": [stage]}))
    _, plan, _ = pipeline.load_plan(str(config))
    assert plan[0].launch == pipeline.Launch(8, multi_gpu)
    assert "accelerate_config" not in plan[0].values  # a pipeline key, not a key of the SFT config


def test_rl_launches_that_cannot_work_are_refused(tmp_path, monkeypatch):
    """hftune's PPO is not tested on several processes (refused, not run untested), and an RL policy sharded
    by FSDP / DeepSpeed would be saved from a partial copy: refused before anything
    loads, whether launched by hand or by the pipeline; RLOO on DDP is accepted."""
    from hftune import distributed
    from hftune.stages import ppo as rl

    config = REPO / "configs/tiny/ppo.yaml"
    with monkeypatch.context() as patch:  # as under torchrun, without starting a process group here
        patch.setattr(distributed, "is_distributed", lambda: True)
        with pytest.raises(UserError, match="runs in one process only"):
            rl.parse(str(config))
        assert rl.parse(str(config), ["--algorithm", "rloo"]).hftune.algorithm == "rloo"

    plan = tmp_path / "pipeline.yaml"
    stage = {"stage": "ppo", "config": str(config), "num_processes": 2}
    stage.update(model_name_or_path="tiny:llama", reward_model_path=str(tmp_path / "rm"))
    plan.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": [stage]}))
    with pytest.raises(UserError, match="one process only"):
        pipeline.run(str(plan), dry_run=True)

    # As on a GPU machine (on CPU an FSDP launch is refused before this: the next test).
    monkeypatch.setattr(distributed, "accelerator_available", lambda: True)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for an FSDP config
    with pytest.raises(UserError, match="not FSDP"):
        rl.parse(str(config), ["--algorithm", "rloo"])
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    stage.update(
        stage="rloo", num_processes=None, accelerate_config=str(REPO / "configs/accelerate/fsdp.yaml")
    )
    del stage["num_processes"]
    plan.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": [stage]}))
    with pytest.raises(UserError, match="not FSDP"):
        pipeline.run(str(plan), dry_run=True)


def test_fsdp_without_a_gpu_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    """accelerate shards with FSDP only on GPUs: on CPU the shipped fsdp.yaml failed inside accelerate on
    every rank, and an edited one trained unsharded copies while the run said FSDP. Refused by the pipeline
    before it launches, and by a stage launched by hand, in one message from one process, exit 2."""
    from hftune import cli, distributed

    monkeypatch.setattr(distributed, "accelerator_available", lambda: False)
    plan = tmp_path / "pipeline.yaml"
    stage = {"stage": "sft", "config": str(REPO / "configs/tiny/sft.yaml")}
    stage["accelerate_config"] = str(REPO / "configs/accelerate/fsdp.yaml")
    plan.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": [stage]}))
    with pytest.raises(UserError, match="FSDP: this machine has no GPU"):
        pipeline.run(str(plan), dry_run=True)
    assert not (tmp_path / "run").exists()

    # `accelerate launch --config_file configs/accelerate/fsdp.yaml -m hftune sft ...`, as each rank sees it.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    argv = ["sft", "--config", str(REPO / "configs/tiny/sft.yaml"), "--output_dir", str(tmp_path / "sft")]
    import datasets

    printed = []
    hftune_logger = logging.getLogger("hftune")
    level, bars = hftune_logger.level, datasets.is_progress_bar_enabled()
    try:
        for rank in ("0", "1"):
            monkeypatch.setenv("RANK", rank)
            assert cli.main(argv) == 2
            printed.append(capsys.readouterr().err)
    finally:  # the CLI quietens a non-main process's logs for the rest of it: not for the tests after this
        hftune_logger.setLevel(level)
        if bars:
            datasets.enable_progress_bars()
    assert printed[0].count("hftune: error:") == 1 and "use DDP" in printed[0]
    assert "Traceback" not in printed[0]
    assert printed[1] == ""  # the other rank refuses silently: one message for the job
    assert not (tmp_path / "sft").exists()


@pytest.mark.parametrize("config", sorted((REPO / "configs/accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_accelerate_config_is_refused_on_cpu_as_shipped(tmp_path, monkeypatch, config):
    """Each shipped config is for GPUs and asks for bf16: on a machine without one the pipeline refuses it
    before it launches, saying what to do (FSDP: use DDP; the others: `--mixed_precision no`, which is how
    the DeepSpeed ZeRO tests above run them on CPU), and so does a stage launched by hand."""
    from hftune import distributed
    from hftune.stages import sft

    monkeypatch.setattr(distributed, "accelerator_available", lambda: False)
    plan = tmp_path / "pipeline.yaml"
    stage = {"stage": "sft", "config": str(REPO / "configs/tiny/sft.yaml"), "accelerate_config": str(config)}
    plan.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": [stage]}))
    fsdp = config.name.startswith("fsdp")
    precision = r"asks for bf16 mixed precision.*--mixed_precision no"
    expected = "FSDP: this machine has no GPU" if fsdp else precision
    with pytest.raises(UserError, match=expected):
        pipeline.run(str(plan), dry_run=True)
    assert not (tmp_path / "run").exists()

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch` sets from the file
    if fsdp:
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match=expected):
        sft.parse(str(REPO / "configs/tiny/sft.yaml"))
    if not fsdp:  # launched with `--mixed_precision no`, or asked for by the stage: accepted
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
        assert sft.parse(str(REPO / "configs/tiny/sft.yaml")).training.bf16 is False
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
        assert sft.parse(str(REPO / "configs/tiny/sft.yaml"), ["--bf16", "true"]).training.bf16 is True


def test_eval_under_a_launcher_runs_on_the_main_process_only(monkeypatch):
    """The other processes return before reading anything (the models named here do not even exist)."""
    from hftune.evaluation import harness, suite

    cfg = suite.parse(str(REPO / "eval/suites/tiny.yaml"), ["--sft_model", "no/such", "--rlhf_models", "x"])
    monkeypatch.setattr(harness.distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(harness.distributed, "is_main_process", lambda: False)
    assert harness.run(cfg) is None
