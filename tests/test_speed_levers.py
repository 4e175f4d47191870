"""The training speed levers keep results: each gives the plain path's loss curve within a stated tolerance
where it runs on CPU (torch.compile), and skips where it needs a GPU (Liger)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from hftune.stages import common, sft
from hftune.stages import ppo as rl

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


def test_full_logits_give_trls_chunked_head_outputs_and_gradients(tiny_llama):
    """Where the logits are small SFT reads its loss off full logits (hftune/stages/full_logits.py): the same
    loss, per-token log-probabilities, entropy, top-1 hits and gradients as TRL's chunked head."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from hftune.stages import full_logits

    trl_utils = pytest.importorskip("trl.trainer.utils")
    if not hasattr(trl_utils, "FusedCausalLMOutput"):
        pytest.skip("this TRL has no chunked head (before 1.15): SFT trains on full logits anyway")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :5] = -100  # a prompt, not trained on
    labels[1, 9:] = -100  # padding

    def outputs():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True, num_items_in_batch=torch.tensor(11))
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        return out, grads, model(input_ids=ids).logits.detach()

    chunked, chunked_grads, chunked_logits = outputs()
    args = SimpleNamespace(max_length=12, per_device_train_batch_size=2, per_device_eval_batch_size=2)
    assert full_logits.use_full_logits(SimpleNamespace(args=args, model=model))
    full, full_grads, full_logits_ = outputs()
    assert torch.equal(full_logits_, chunked_logits)  # generation and plain forwards are untouched
    for field in ("loss", "log_probs", "entropy"):
        torch.testing.assert_close(getattr(full, field), getattr(chunked, field), atol=1e-5, rtol=1e-5)
    assert torch.equal(full.is_top1.bool(), chunked.is_top1.bool())
    assert torch.equal(full.label_mask, chunked.label_mask) and int(full.label_mask.sum()) == 11
    for name, grad in chunked_grads.items():
        torch.testing.assert_close(full_grads[name], grad, atol=1e-5, rtol=1e-4)

    # Logits too large for the budget keep TRL's head: nothing is replaced.
    other = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    trl_utils.add_fused_lm_head(other)
    patched = other.forward
    big = SimpleNamespace(max_length=32768, per_device_train_batch_size=8, per_device_eval_batch_size=8)
    assert not full_logits.use_full_logits(SimpleNamespace(args=big, model=other))
    assert other.forward == patched
