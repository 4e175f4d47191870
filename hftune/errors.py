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


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean `x`?)' or '' — appended to an 'unknown key' message."""
    match = closest(name, candidates)
    return f" (did you mean `{match}`?)" if match else ""
