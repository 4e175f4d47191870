"""Reproducible RL: with the same seed on the same machine, two PPO / RLOO / GRPO runs log the same metrics
and save byte-identical adapters (CPU); another seed gives another run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_ppo import chain_args

from hftune.stages import ppo as rl

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs/tiny/ppo.yaml")

# The only per-step metrics that measure wall-clock time (everything else must repeat exactly):
# PPO logs episodes per second (`eps`), RLOO / GRPO the seconds a step took (`step_time`).
WALL_CLOCK_KEYS = {"eps", "step_time"}


def run_rl(chain, out: Path, algorithm: str, seed: int) -> tuple[bytes, list[dict]]:
    """A 2-step run on the tiny chain with a held-out check every step: its adapter bytes and metric rows."""
    argv = [
        *chain_args(chain, out),
        "--algorithm",
        algorithm,
        "--seed",
        str(seed),
        "--max_steps",
        "2",
        "--heldout_every",
        "1",
        "--heldout_prompts",
        "4",
        # The held-out check runs for its sampling to be compared; with 4 prompts its reward moves by more
        # than the over-optimisation alarm's tolerance from noise alone, and an alarm would end the run.
        "--heldout_tolerance",
        "100",
        # Small batches keep the test fast; PPO's two minibatches make its minibatch order matter.
        "--per_device_train_batch_size",
        "8",
        "--num_generations",
        "4",
        *(["--num_mini_batches", "2"] if algorithm == "ppo" else []),
    ]
    result = rl.run(rl.parse(CONFIG, argv))
    assert result.alarm is None
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in row.items() if k not in WALL_CLOCK_KEYS} for row in rows]
    return (result.output_dir / "adapter_model.safetensors").read_bytes(), rows


@pytest.mark.parametrize("algorithm", ["ppo", "rloo", "grpo"])
def test_same_seed_same_run_other_seed_other_run(chain, tmp_path, algorithm):
    adapter, rows = run_rl(chain, tmp_path / "a", algorithm, seed=42)
    again, rows_again = run_rl(chain, tmp_path / "b", algorithm, seed=42)
    other, rows_other = run_rl(chain, tmp_path / "c", algorithm, seed=7)

    assert [r["step"] for r in rows] == [1, 2] and all("heldout/reward" in r for r in rows)
    assert rows_again == rows, f"{algorithm}: the same seed logged different metrics"
    assert again == adapter, f"{algorithm}: the same seed saved a different adapter"
    assert other != adapter and rows_other != rows, f"{algorithm}: another seed gave the same run"


def test_full_determinism_asks_for_deterministic_kernels_for_every_algorithm(monkeypatch):
    """The stage's seeding applies `full_determinism` for every algorithm, before any trainer is built."""
    import os
    from types import SimpleNamespace

    import torch

    from hftune.stages.rl.seeding import seed_run

    # The flag sets these for the whole process: monkeypatch puts them back after the test.
    for name in (
        "CUBLAS_WORKSPACE_CONFIG",
        "CUDA_LAUNCH_BLOCKING",
        "ASCEND_LAUNCH_BLOCKING",
        "HCCL_DETERMINISTIC",
        "FLASH_ATTENTION_DETERMINISTIC",
    ):
        monkeypatch.delenv(name, raising=False)
    try:
        seed_run(SimpleNamespace(seed=3, full_determinism=False))
        assert not torch.are_deterministic_algorithms_enabled()
        first = torch.rand(3)
        seed_run(SimpleNamespace(seed=3, full_determinism=True))
        assert torch.equal(torch.rand(3), first)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":16:8", ":4096:8")
    finally:
        torch.use_deterministic_algorithms(False)  # process-wide: the other tests run without it
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, False
