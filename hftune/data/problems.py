"""Why a row or a pair is left out: the problems converters and checks report, and how drops are tallied.

A `RowProblem` (raised) drops a whole source row; a `PairProblem` (returned in a row's list of pairs)
leaves out one preference pair of a row that may keep others. Both are counted by `reason` in
`hftune.data.prepare`; `format_counts` writes such a tally as one line, and `is_blank` says what counts
as an empty turn or text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Characters that show nothing and are not whitespace to str.strip(): zero-width space, non-joiner and joiner,
# word joiner, byte-order mark (zero-width no-break space). A turn made of these and whitespace is blank.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))


def is_blank(text: str) -> bool:
    """True for text with nothing visible: only whitespace and zero-width characters."""
    return not text.translate(_INVISIBLE).strip()


class RowProblem(Exception):
    """A row that cannot be used; `reason` is the key it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PairProblem:
    """A preference pair left out of a row that may still have good ones; counted per pair, never raised.

    Converters and the preference check put one in a row's list of pairs in place of the pair it stands for.
    """

    reason: str
    detail: str


def format_counts(counts: Mapping[str, int]) -> str:
    """Reasons with their counts, most frequent first: "empty_turn 3, too_long 2"."""
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
