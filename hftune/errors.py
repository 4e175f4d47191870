"""User-facing errors.

A `UserError` is a mistake in what the user gave us (a config, a recipe, a data file, a path). The CLI
prints its message without a traceback and exits with status 2; everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input; `str(err)` is the whole message shown to them."""

    exit_code = 2


class StageFailed(UserError):
    """A stage run in processes of its own failed; they have already printed why. Exits with the launcher's
    status (torchrun and accelerate exit 1 whatever failed), without a traceback of the launcher's."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The closest valid name to a misspelt one, or None if nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


# Keys transformers and TRL renamed, old -> new: spelling alone points an old name elsewhere (`torch_dtype` is
# closer to `torch_compile` than to `dtype`), and configs written for an older release still carry them.
RENAMED = {
    "torch_dtype": "dtype",  # transformers 4.56, TRL's ModelConfig
    "evaluation_strategy": "eval_strategy",  # transformers 4.41
    "no_cuda": "use_cpu",  # transformers 4.34
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
    "push_to_hub_model_id": "hub_model_id",
    "max_seq_length": "max_length",  # TRL 0.20, SFTConfig
    "rloo_k": "num_generations",  # TRL 0.22, RLOOConfig
    "response_length": "max_completion_length",  # TRL's old RLOO
}


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean `x`?)' or '' — appended to an 'unknown key' message. A known old name points at its
    new one when that is among the candidates (an old name for a key this config does not have is not
    renamed here, so it gets the plain spelling hint)."""
    candidates = list(candidates)
    renamed = RENAMED.get(name)
    if renamed in candidates:
        return f" (renamed: use `{renamed}`)"
    match = closest(name, candidates)
    return f" (did you mean `{match}`?)" if match else ""
