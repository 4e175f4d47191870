"""Guardrails for RLHF runs: per-step metrics to `metrics.jsonl`, held-out reward with sample completions,
and alarms that stop a run going wrong while keeping its last good policy.

Every RL algorithm hftune runs (PPO, RLOO, GRPO) logs through the transformers callback system, so one
callback watches them all. An alarm raises `AlarmStop` out of the trainer's loop; the stage catches it,
restores the last good adapter weights and saves them with the alarm recorded in the manifest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from hftune import distributed

logger = logging.getLogger(__name__)


class AlarmStop(Exception):
    """A guardrail bound was crossed; `reason` says which and by how much."""

    def __init__(self, reason: str, step: int):
        super().__init__(f"step {step}: {reason}")
        self.reason = reason
        self.step = step


@dataclass
class Bounds:
    max_kl: float | None = None
    min_mean_length: float | None = None
    max_mean_length: float | None = None
    heldout_drop: bool = True  # stop when the train reward rises while the held-out reward falls
    heldout_tolerance: float = 0.1  # ... by more than this (sampling noise on a small prompt set)


# What each trainer calls the quantities the guardrails read (the first key present wins).
KL_KEYS = ("objective/kl", "kl")
REWARD_KEYS = ("objective/scores", "reward")
LENGTH_KEYS = ("response/mean_length", "completions/mean_length")


def first_value(logs: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    """The value of the first of `keys` that `logs` has."""
    for key in keys:
        if key in logs and logs[key] is not None:
            return float(logs[key])
    return None


@dataclass
class RolloutStats:
    """Filled by the stage's reward function: reply lengths and end-of-turn rate, the same for every
    algorithm (PPO logs none of its own)."""

    lengths: list[int] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)

    def drain(self) -> dict[str, float]:
        # Each process scored its own share of the completions: the statistics are over all of them.
        self.lengths, self.ended = (
            distributed.gather_lists(self.lengths),
            distributed.gather_lists(self.ended),
        )
        if not self.lengths:
            return {}
        out = {
            "response/mean_length": sum(self.lengths) / len(self.lengths),
            "response/eos_rate": sum(self.ended) / len(self.ended),
        }
        self.lengths, self.ended = [], []
        return out


class Guardrails(TrainerCallback):
    """Writes metrics.jsonl and samples.jsonl, evaluates held-out prompts, and fires alarms."""

    def __init__(
        self,
        out_dir: Path,
        bounds: Bounds,
        *,
        policy_fn,
        heldout=None,
        heldout_every: int = 0,
        rollout_stats: RolloutStats | None = None,
        resumed_at: int = 0,
        report: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.out_dir = out_dir
        self.bounds = bounds
        self.policy_fn = policy_fn  # () -> the PEFT policy (trainers wrap it differently)
        self.heldout = heldout  # callable(policy) -> (mean reward, sample rows), or None
        self.heldout_every = heldout_every
        self.rollout_stats = rollout_stats
        # Shown each step's full row (the console's step line), before any alarm can stop the run.
        self.report = report
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.last_good: dict[str, torch.Tensor] | None = None
        self.last_train_reward: float | None = None
        self.last_heldout: float | None = None
        self.alarm: AlarmStop | None = None
        out_dir.mkdir(parents=True, exist_ok=True)
        # Every process sees the same (gathered) metrics and decides the same alarms; one writes the logs.
        self.writes = distributed.is_main_process()
        for name in ("metrics.jsonl", "samples.jsonl"):
            if self.writes:
                self._keep_rows_up_to(out_dir / name, resumed_at)

    @staticmethod
    def _keep_rows_up_to(path: Path, step: int) -> None:
        """A resumed run continues its logs from the checkpoint; a fresh run starts them anew."""
        if not path.is_file():
            return
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
        path.write_text("".join(line + "\n" for line in kept))

    # -- adapter snapshots: the policy whose rollouts a step's metrics describe is the one before it ----

    def adapter_state(self) -> dict[str, torch.Tensor]:
        policy = self.policy_fn()
        return {k: v.detach().clone() for k, v in policy.named_parameters() if v.requires_grad}

    def restore_last_good(self) -> None:
        if self.last_good is None:
            return
        params = dict(self.policy_fn().named_parameters())
        with torch.no_grad():
            for name, value in self.last_good.items():
                params[name].copy_(value)

    def on_train_begin(self, args, state, control, **kwargs):
        self.snapshots = [self.adapter_state()]
        self.last_good = self.snapshots[0]

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if not any(k in logs for k in KL_KEYS + REWARD_KEYS):
            return  # an end-of-training summary, not a step
        step = state.global_step
        if self.rollout_stats is not None:
            logs.update(self.rollout_stats.drain())
        if self.heldout is not None and self.heldout_every and step % self.heldout_every == 0:
            heldout_reward, samples = self.heldout(self.policy_fn())
            logs["heldout/reward"] = heldout_reward
            self._append("samples.jsonl", [{"step": step, **row} for row in samples])
        logs["step"] = step
        self._append("metrics.jsonl", [logs])
        if self.writes and self.report is not None:
            self.report(logs)

        # These metrics describe rollouts of the policy as it was before this step's update.
        self.snapshots.append(self.adapter_state())
        self.snapshots = self.snapshots[-2:]
        # One decision for every process (each computed its own held-out reward), so that they all stop
        # at the same step or none does: a process left training alone would wait for the others forever.
        reason = distributed.broadcast(self._crossed(logs))
        if reason:
            self.alarm = AlarmStop(reason, step)
            logger.warning("guardrail alarm at step %d: %s; keeping the last good policy", step, reason)
            raise self.alarm
        self.last_good = self.snapshots[0]

    def _crossed(self, logs: dict[str, Any]) -> str | None:
        b = self.bounds
        kl = first_value(logs, KL_KEYS)
        if b.max_kl is not None and kl is not None and kl > b.max_kl:
            return f"KL to the SFT policy {kl:.4f} exceeds max_kl {b.max_kl}"
        length = first_value(logs, LENGTH_KEYS)
        if b.min_mean_length is not None and length is not None and length < b.min_mean_length:
            return f"mean response length {length:.1f} fell below min_mean_length {b.min_mean_length}"
        if b.max_mean_length is not None and length is not None and length > b.max_mean_length:
            return f"mean response length {length:.1f} exceeds max_mean_length {b.max_mean_length}"
        reward, heldout = first_value(logs, REWARD_KEYS), logs.get("heldout/reward")
        if b.heldout_drop and heldout is not None and reward is not None:
            rising = self.last_train_reward is not None and reward > self.last_train_reward
            falling = self.last_heldout is not None and heldout < self.last_heldout - b.heldout_tolerance
            self.last_train_reward, self.last_heldout = reward, heldout
            if rising and falling:
                return (
                    f"train reward rose to {reward:.3f} while held-out reward fell to {heldout:.3f} "
                    "(over-optimising the reward model)"
                )
        return None

    def _append(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not self.writes:
            return
        with (self.out_dir / name).open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, default=float) + "\n")
