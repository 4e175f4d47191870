"""What an RL run prints while it trains: transformers' progress bar, and one short line per logged step
with the numbers worth watching, in place of the trainer's raw metrics dict (18 keys a step for PPO):

    [ppo] step 10/60  reward 0.715  kl 0.631  length 31.0  eos 1.00  heldout 0.402

Every number still goes to metrics.jsonl (the guardrails write it); this is only the console.
"""

from __future__ import annotations

from typing import Any

from transformers import PrinterCallback, ProgressCallback
from transformers.trainer import DEFAULT_PROGRESS_CALLBACK

from hftune.stages.rl.guardrails import KL_KEYS, LENGTH_KEYS, REWARD_KEYS, first_value

# label, the keys it reads (the first present wins), format. Length and end-of-turn rate are the
# guardrails' own rollout statistics where TRL logs none (PPO).
COLUMNS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("reward", REWARD_KEYS, ".3f"),
    ("kl", KL_KEYS, ".3f"),
    ("length", LENGTH_KEYS, ".1f"),
    ("eos", ("response/eos_rate",), ".2f"),
    ("heldout", ("heldout/reward",), ".3f"),  # only on the steps the held-out check ran
)


def step_line(algorithm: str, row: dict[str, Any], total: int | None) -> str:
    """`[ppo] step 10/60  reward 0.715  kl 0.631 ...`: the columns `row` has, in a fixed order."""
    parts = [f"[{algorithm}] step {row['step']}/{total if total is not None else '?'}"]
    for label, keys, spec in COLUMNS:
        value = first_value(row, keys)
        if value is not None:
            text = f"{value:{spec}}"
            parts.append(f"{label} {text.lstrip('-') if float(text) == 0 else text}")  # never "-0.000"
    return "  ".join(parts)


class RLProgress(ProgressCallback):
    """transformers' progress bars (training, and an evaluation's prediction bar) with the step line in
    place of the raw dict its `on_log` writes; main process only. The line is written from the guardrails'
    row (`write_step`, their `report`), which adds to the trainer's logs what only they know: the rollout
    statistics and the held-out reward. With `disable_tqdm` the lines are printed without a bar."""

    def __init__(self, algorithm: str):
        super().__init__()
        self.algorithm = algorithm
        self.total: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.total = state.max_steps
        if not args.disable_tqdm:
            super().on_train_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass  # the step line comes from `write_step`; the trainer's raw dicts (run summary too) are not shown

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def write_step(self, row: dict[str, Any]) -> None:
        line = step_line(self.algorithm, row, self.total)
        if self.training_bar is not None:
            self.training_bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        """Close the bar; also after a run an alarm stopped (the trainer then never ends the training)."""
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None


def replace_progress_callback(trainer, progress: RLProgress) -> None:
    """Swap the trainer's progress bar (or, with `disable_tqdm`, printer) for `progress`."""
    for cls in (ProgressCallback, PrinterCallback, DEFAULT_PROGRESS_CALLBACK):
        trainer.remove_callback(cls)
    trainer.add_callback(progress)
