"""A run whose numbers stopped being numbers stops, and its weights are never saved.

A learning rate far too high (or bad data, or an fp16 overflow) turns the loss and then every weight into
NaN/inf; training carries on without complaint and the save writes an artifact of NaN tensors that every
later stage loads as if it were a model. Two guards, both raising `UserError` (exit 2, one message):

- `StopOnNonFinite`, a Trainer callback: the run stops at the first logged `loss` / `grad_norm` (PPO:
  `loss/*`) that is NaN or inf, naming the step and what to change.
- `check_finite_weights(model)`, called before an artifact is written: names the first trainable
  parameter that is not finite, so a diverged run never leaves an artifact behind.

Why `grad_norm` matters most: transformers' `logging_nan_inf_filter` (on by default) drops NaN/inf step
losses from the logged `loss`, so after a divergence the logged loss can read 0.0 while the gradient norm,
taken before clipping, shows NaN.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from transformers import TrainerCallback

from hftune.errors import UserError

logger = logging.getLogger(__name__)

# Logged values that are NaN/inf only when training has diverged. (`eval_loss` is not one: a held-out batch
# with no trained tokens averages 0/0 on a healthy model.)
WATCHED = ("loss", "grad_norm")
WATCHED_PREFIXES = ("loss/",)  # hftune's PPO: loss/policy_avg, loss/value_avg

# Under fp16 mixed precision the gradient scaler skips a step whose gradients overflowed and lowers its
# scale, leaving the weights as they were: a few non-finite logs in a row are expected there.
FP16_PATIENCE = 3


def _watched(key: str) -> bool:
    return key in WATCHED or key.startswith(WATCHED_PREFIXES)


def non_finite_logs(logs: dict[str, Any] | None) -> dict[str, float]:
    """The watched entries of a Trainer log that are NaN or inf."""
    return {
        key: value
        for key, value in (logs or {}).items()
        if _watched(key)
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and not math.isfinite(value)
    }


def diverged_message(step: int, bad: dict[str, float], args: Any = None) -> str:
    what = ", ".join(f"{key} is {value}" for key, value in bad.items())
    lr = getattr(args, "learning_rate", None)
    clip = getattr(args, "max_grad_norm", None)
    advice = [f"lower `learning_rate` (now {lr:g})" if isinstance(lr, float) else "lower `learning_rate`"]
    if not clip:
        advice.append("set `max_grad_norm` (e.g. 1.0) to clip gradients")
    advice.append("check the data for empty or extreme rows")
    return (
        f"training diverged at step {step}: {what}. The weights are no longer numbers, so nothing was "
        f"saved; {', '.join(advice)}, and start again without --resume (checkpoints written since the "
        "divergence hold the same broken weights)"
    )


class StopOnNonFinite(TrainerCallback):
    """Raise `UserError` from `on_log` as soon as a logged loss or gradient norm is NaN or inf.

    Raising in a callback leaves `trainer.train()` with that exception (the Trainer catches nothing around
    its callbacks). Every process raises together: the logged loss is averaged over processes and the
    gradient norm is that of the synchronised gradients, so all of them see the same values."""

    def __init__(self, fp16_patience: int = FP16_PATIENCE):
        self.fp16_patience = fp16_patience
        self._streak = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = non_finite_logs(logs)
        if not bad:
            self._streak = 0
            return
        self._streak += 1
        if getattr(args, "fp16", False) and self._streak < self.fp16_patience:
            logger.warning(
                "step %d: %s non-finite; under fp16 the gradient scaler skips such steps (stopping if it "
                "happens %d logs in a row)",
                state.global_step, ", ".join(bad), self.fp16_patience,
            )  # fmt: skip
            return
        raise UserError(diverged_message(state.global_step, bad, args))


def _local_data(param):
    """The part of a parameter this process holds: DeepSpeed ZeRO-3 keeps its shard in `ds_tensor` (the
    parameter itself is empty), FSDP2 a DTensor's local shard."""
    data = getattr(param, "ds_tensor", None)
    if data is None:
        data = param.detach()
    if hasattr(data, "to_local"):
        data = data.to_local()
    return data


def first_non_finite(model) -> tuple[str, str] | None:
    """(name, 'nan' or 'inf') of the first trainable parameter (this process's shard of it) that holds a
    NaN or an inf, or None."""
    import torch

    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        data = _local_data(param)
        if not data.is_floating_point() or data.numel() == 0:
            continue
        # The largest magnitude is NaN if any entry is, inf if any is: one reduction, no tensor-sized
        # temporary (a boolean mask of a 7B model's embedding would not fit beside it on the GPU).
        peak = torch.linalg.vector_norm(data, ord=math.inf).item()
        if not math.isfinite(peak):
            return name, str(peak)
    return None


def check_finite_weights(model, *, what: str = "the trained weights") -> None:
    """Raise `UserError` when a trainable parameter holds NaN/inf, before an artifact is written.

    In a multi-process run every process must call it (it agrees with the others through one all-reduce,
    so all of them raise or none does, and none waits forever in the save that follows)."""
    import torch
    import torch.distributed as dist

    found = first_non_finite(model)
    anywhere = found is not None
    if dist.is_available() and dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([int(anywhere)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        anywhere = bool(flag.item())
    if not anywhere:
        return
    where = f"`{found[0]}` holds {found[1]}" if found else "a parameter held by another process is not finite"
    raise UserError(
        f"refusing to save {what}: {where}. Training diverged (NaN/inf weights); lower `learning_rate`, "
        "set `max_grad_norm`, and start again without --resume"
    )
