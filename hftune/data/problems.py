"""Why a row or a pair is left out: the problems converters and checks report, and how drops are tallied.

A `RowProblem` (raised) drops a whole source row; a `PairProblem` (returned in a row's list of pairs)
leaves out one preference pair of a row that may keep others. Both are counted by `reason` in
`hftune.data.prepare`; `format_counts` writes such a tally as one line, `is_blank` says what counts
as an empty turn or text, `same_text` when two replies are the same, and `bad_unicode` where text is not
valid Unicode.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Characters that show nothing and are not whitespace to str.strip(): zero-width space, non-joiner and joiner,
# word joiner, byte-order mark (zero-width no-break space). A turn made of these and whitespace is blank.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))


def is_blank(text: str) -> bool:
    """True for text with nothing visible: only whitespace and zero-width characters."""
    return not text.translate(_INVISIBLE).strip()


def same_text(a: str, b: str) -> bool:
    """True when `a` and `b` read the same: equal once format characters (zero-width, bidi marks, soft
    hyphen: Unicode category Cf) are removed, both are NFKC-normalised and whitespace runs collapse. A pair
    whose replies differ only so teaches the reward nothing but noise. Only the comparison normalises; the
    text kept is never changed. Case is kept: "Yes" and "yes" may be what a labeller preferred."""
    return a == b or _compared(a) == _compared(b)


def _compared(text: str) -> str:
    visible = "".join(c for c in unicodedata.normalize("NFKC", text) if unicodedata.category(c) != "Cf")
    return " ".join(visible.split())


def bad_unicode(value: Any, where: str = "") -> str | None:
    """Where a converted example holds text that is not valid Unicode (a lone surrogate such as "\\ud800",
    which a JSON file can spell as an escape): a short description naming the field, or None. Such text
    cannot be encoded to UTF-8, so no tokenizer, hash or Arrow file can take it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            field = f"`{where}`" if where else "the text"
            return f"{field} has {value[err.start]!r} at character {err.start}: not valid Unicode"
        return None
    if isinstance(value, Mapping):
        items = [(f"{where}.{name}" if where else str(name), item) for name, item in value.items()]
    elif isinstance(value, list | tuple):
        items = [(f"{where}[{i}]", item) for i, item in enumerate(value)]
    else:
        return None
    return next((found for path, item in items if (found := bad_unicode(item, path))), None)


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
