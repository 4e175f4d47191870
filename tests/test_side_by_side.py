"""Runs side by side (`hftune.side_by_side`): the pipeline trains the runs that take nothing from each other
at the same time, in children of a fork server, and they give byte-identical artifacts to one after another;
a run that fails beside others lets them finish, starts nothing new and exits with its code; the plan says
how many run at once and why; `max_parallel` and `freeze_gc` are checked."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_pipeline_branch import stage_entries, without

from hftune import cli, pipeline, side_by_side
from hftune.config import ConfigError


def stages(**dpo) -> list[dict]:
    """sft -> reward -> ppo (two seeds), and sft -> dpo: four runs that take nothing from each other."""
    return without(stage_entries(Path("."), ppo={"seeds": [1, 2]}, dpo=dpo), "eval")


def write(tmp_path: Path, name: str, entries: list[dict], **keys) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / name), "stages": entries, **keys}))
    return path


def weights(folder: Path) -> dict[str, str]:
    """Each saved weights file of an artifact, by its sha256."""
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.glob("*.safetensors"))}


def training(line: str) -> dict:
    """A logged step without its speed (`eps`: episodes a second) and times."""
    return {k: v for k, v in json.loads(line).items() if k != "eps" and "time" not in k}


@pytest.mark.e2e
@pytest.mark.slow(40)
def test_runs_side_by_side_give_the_same_artifacts_as_one_after_another(tmp_path, tiny_llama, capsys):
    one = pipeline.run(str(write(tmp_path, "one", stages())), max_parallel=1)
    out = capsys.readouterr().out
    assert "runs: one run at a time (max_parallel)" in out and "beside" not in out
    two = pipeline.run(str(write(tmp_path, "two", stages(), max_parallel=2)))
    out = capsys.readouterr().out
    assert "runs: up to 2 runs side by side" in out
    # After SFT, the reward model and DPO start together; each PPO seed as soon as the reward model is done.
    for key in ("reward", "dpo", "ppo-seed1", "ppo-seed2"):
        assert f"== {key}: started beside the others" in out, key
        assert (tmp_path / "two" / ".pipeline" / f"{key}.log").stat().st_size > 0
    assert "== sft ==" in out  # alone: trained in the pipeline's own process
    done = out[out.rindex("pipeline done in") :]  # what each run took, and which overlapped
    for key in ("reward", "dpo", "ppo-seed1", "ppo-seed2"):
        assert re.search(rf"\n  {key} +run +-> .*\([0-9.]+ s beside the others\)", done), (key, done)
    assert re.search(r"\n  sft +run +-> .*\([0-9.]+ s\)\n", done), done
    for a, b in zip(one, two, strict=True):
        assert a.key == b.key and b.action == "run"
        assert weights(a.output_dir) and weights(a.output_dir) == weights(b.output_dir), a.key
    for key in ("ppo-seed1", "ppo-seed2"):  # the same training, step by step (all but the speed)
        one_run, side = (
            [training(line) for line in (tmp_path / n / key / "metrics.jsonl").open()] for n in ("one", "two")
        )
        assert one_run == side
    ledger = json.loads((tmp_path / "two" / "pipeline.json").read_text())
    assert set(ledger) == {"sft", "reward", "ppo-seed1", "ppo-seed2", "dpo"}
    # Nothing changed: a rerun skips every run, and so does one run one after another (the setting is how
    # the pipeline runs, not what it computes).
    assert {s.action for s in pipeline.run(str(write(tmp_path, "two", stages(), max_parallel=1)))} == {"skip"}


@pytest.mark.e2e
@pytest.mark.slow(20)
def test_a_run_that_fails_beside_others_stops_what_takes_from_it_and_exits_with_its_code(
    tmp_path, tiny_llama, capsys
):
    # Every pair is longer than 8 tokens: DPO refuses its data when it prepares it (exit 2, a bad input).
    entries = stages(max_length=8)
    entries[2]["seeds"] = [1]
    code = cli.main(["pipeline", "--config", str(write(tmp_path, "p", entries, max_parallel=2))])
    captured = capsys.readouterr()
    assert code == 2
    assert "== dpo: failed (exit code 2)" in captured.err and "  | hftune: error:" in captured.err
    assert "stage dpo failed" in captured.err
    # The reward model, beside it, finished and is kept; nothing new started after the failure.
    ledger = json.loads((tmp_path / "p" / "pipeline.json").read_text())
    assert set(ledger) == {"sft", "reward"}


def test_plan_states_how_many_run_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(side_by_side, "cores", lambda: 4)
    monkeypatch.setattr(side_by_side, "available_memory", lambda: 64 * side_by_side.GIB)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    pipeline.run(str(write(tmp_path, "p", stages())), dry_run=True)
    out = capsys.readouterr().out
    # Two ppo seeds beside dpo: at most 3 at once, so no more than 3 are planned for.
    want = "up to 3 runs side by side, 1 thread each (4 cores, 2 runs a core, at most 3 at once in this plan"
    assert f"runs: {want}, 64 GiB free" in out, out
    pipeline.run(str(write(tmp_path, "p", stages(), max_parallel=2)), dry_run=True)
    assert "runs: up to 2 runs side by side, 2 threads each (max_parallel)" in capsys.readouterr().out
    # A chain has nothing to run side by side.
    pipeline.run(str(write(tmp_path, "chain", stages()[:2])), dry_run=True)
    assert "runs: one run at a time (no two runs are independent)" in capsys.readouterr().out


def test_runs_get_the_cores_the_plan_can_fill(tmp_path, capsys, monkeypatch):
    # 8 cores and at most 3 runs at once: each run takes 2 threads, not 1 beside 5 idle cores.
    monkeypatch.setattr(side_by_side, "cores", lambda: 8)
    monkeypatch.setattr(side_by_side, "available_memory", lambda: 64 * side_by_side.GIB)
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    plan = pipeline.run(str(write(tmp_path, "p", stages())), dry_run=True)
    assert "runs: up to 3 runs side by side, 2 threads each (8 cores" in capsys.readouterr().out
    assert pipeline._widest(plan) == 3  # ppo-seed1, ppo-seed2, dpo
    # The widest set is of the runs that will run: with the seeds up to date, reward beside dpo.
    for stage in plan:
        if stage.key.startswith("ppo-"):
            stage.action = "skip"
    assert pipeline._widest(plan) == 2
    for stage in plan:
        if stage.key in ("reward", "sft"):
            stage.action = "skip"
    assert pipeline._widest(plan) == 1  # dpo alone is left
    assert pipeline._parallelism(plan, pipeline.RunOptions()).runs == 1
    three = pipeline.run(str(write(tmp_path, "q", stages(seeds=[1, 2, 3]))), dry_run=True)
    assert pipeline._widest(three) == 5  # 2 ppo seeds and 3 dpo seeds
    chain = pipeline.run(str(write(tmp_path, "chain", stages()[:2])), dry_run=True)
    assert pipeline._widest(chain) == 1


def test_default_parallelism_follows_cores_memory_and_gpu(monkeypatch):
    monkeypatch.setattr(side_by_side, "cores", lambda: 16)
    monkeypatch.setattr(side_by_side, "available_memory", lambda: 6 * side_by_side.GIB)
    # 6 GiB free, each run ~0.5 GiB + the process: 3 fit, though 16 cores would take more.
    assert side_by_side.default_parallelism([0.5 * side_by_side.GIB, None], gpu=False).runs == 3
    assert side_by_side.default_parallelism([None], gpu=True).runs == 1
    # Memory for all: two runs a core, so no core idles while fewer runs than cores are left.
    monkeypatch.setattr(side_by_side, "available_memory", lambda: 100 * side_by_side.GIB)
    assert side_by_side.default_parallelism([None], gpu=False).runs == 32
    monkeypatch.setattr(side_by_side, "available_memory", lambda: 0.5 * side_by_side.GIB)
    assert side_by_side.default_parallelism([None], gpu=False).runs == 1  # never fewer than one
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # caps a run's share of the cores
    assert side_by_side.threads_each(1) == 2 and side_by_side.threads_each(4) == 2
    assert side_by_side.threads_each(16) == 1 and side_by_side.threads_each(32) == 1


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"max_parallel": 0}, "`max_parallel`: expected a whole number >= 1"),
        ({"max_parallel": "two"}, "`max_parallel`: expected a whole number >= 1"),
        ({"freeze_gc": "yes"}, "`freeze_gc`: expected true or false"),
        ({"max_paralel": 2}, "`max_paralel`: unknown key (did you mean `max_parallel`?)"),
    ],
)
def test_bad_run_options_are_config_errors_naming_the_key(tmp_path, keys, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        pipeline.load_plan(str(write(tmp_path, "p", stages(), **keys)))


def test_bad_max_parallel_flag_exits_2_naming_it(tmp_path, capsys):
    assert cli.main(["pipeline", "--config", str(write(tmp_path, "p", stages())), "--max-parallel", "0"]) == 2
    assert "--max-parallel: expected a whole number >= 1" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_the_fork_server_ends_with_the_pipeline_not_after_its_own_teardown(tmp_path):
    # A fork server whose interpreter takes 20 s to tear down (as one with torch imported takes 1-1.5 s):
    # the pipeline's process ends it at exit, so whoever reads the pipeline's output sees its end at once.
    (tmp_path / "slow_teardown.py").write_text(
        "import time\n\nclass Slow:\n    def __del__(self):\n        time.sleep(20)\n\nslow = Slow()\n"
    )
    script = (
        "from hftune import side_by_side\n"
        "side_by_side.PRELOAD = ('slow_teardown',)\n"
        "side_by_side.start_server([])\n"
        "from multiprocessing import forkserver\n"
        "print(forkserver._forkserver._forkserver_pid, flush=True)\n"
    )
    # On PYTHONPATH: the fork server imports its preload before it would apply the parent's sys.path.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    started = time.time()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert time.time() - started < 15, "the output stayed open until the fork server had torn itself down"
    server = int(done.stdout.split()[0])
    deadline = time.time() + 5
    while Path(f"/proc/{server}").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{server}").exists() or "Z" in Path(f"/proc/{server}/stat").read_text().split()[2]
