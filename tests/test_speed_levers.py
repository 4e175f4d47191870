"""The training speed levers keep results: each gives the plain path's loss curve within a stated tolerance
where it runs on CPU (torch.compile), and skips where it needs a GPU (Liger)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from hftune.stages import common, sft
from hftune.stages.rl import stage as rl

REPO = Path(__file__).resolve().parent.parent
STEPS = 6


def losses(tmp_path: Path, name: str, *extra: str) -> list[float]:
    # SGD, not AdamW: Adam's normalised step turns a last-bit difference in a near-zero gradient into a full
    # step the other way, so a curve would diverge from rounding alone and say nothing about the lever.
    argv = [
        "--output_dir", str(tmp_path / name), "--max_steps", str(STEPS), "--logging_steps", "1",
        "--eval_fraction", "0", "--max_samples", "96", "--per_device_train_batch_size", "8",
        "--save_strategy", "no", "--optim", "sgd",
        # Every batch padded to one shape: torch.compile then builds one graph, not a static one for the
        # first batch and a dynamic one for the next (measured: 101 s -> 46 s of compiling on 2 CPU cores).
        "--pad_to_multiple_of", "256", *extra,
    ]  # fmt: skip
    result = sft.run(sft.parse(str(REPO / "configs/tiny/sft.yaml"), argv))
    return [e["loss"] for e in result.trainer.state.log_history if "loss" in e]


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny_llama) -> list[float]:
    return losses(tmp_path_factory.mktemp("plain"), "plain")


@pytest.mark.slow(50)
def test_torch_compile_gives_the_eager_loss_curve(plain, tmp_path):
    compiled = losses(tmp_path, "compiled", "--torch_compile", "true")
    # The first forward is the same model to float rounding; fused kernels reorder float sums, and six
    # steps at the tiny config's large learning rate grow that to a few parts in a thousand.
    assert compiled[0] == pytest.approx(plain[0], rel=1e-5)
    assert compiled == pytest.approx(plain, rel=5e-3)


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None,
    reason="Liger's kernels need a CUDA GPU and liger-kernel (pip install 'hftune[gpu]')",
)
def test_liger_kernels_give_the_plain_loss_curve(tmp_path, tiny_llama):
    plain_gpu = losses(tmp_path, "plain-gpu", "--use_liger_kernel", "false")
    liger = losses(tmp_path, "liger", "--use_liger_kernel", "true")
    assert liger == pytest.approx(plain_gpu, rel=2e-2)  # bf16 kernels


def test_liger_is_on_by_default_only_on_a_gpu_with_it_installed_and_only_for_plain_forwards(monkeypatch):
    assert common.hardware_defaults(liger=True)["use_liger_kernel"] is (
        torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True, raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else real(name, *a)
    )
    assert common.hardware_defaults(liger=True)["use_liger_kernel"] is True
    assert common.hardware_defaults()["use_liger_kernel"] is False  # RL and preference trainers: off
    assert rl.schema().defaults["use_liger_kernel"] is False
