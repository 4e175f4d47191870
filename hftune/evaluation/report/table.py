"""What a report says, before it is Markdown or HTML: sections of notes, tables, lists and examples.

Every string in this model is plain text, exactly as it came from results.json or the suite (a variant
named `<img src=x onerror=alert(1)>` is stored as those characters); the renderers escape it for their
format. A cell carries meaning rather than markup (a significant difference is marked `better`, a win rate
is a `shade`), so Markdown and HTML can each show it their own way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hftune.evaluation.report.results import finite

# A difference whose interval excludes 0, by the metric's direction, and the symbol it is shown with; the
# hollow ones: over prompts but not across seeds (a seeded variant whose seed-level interval includes 0).
MARKS = {
    "better": "▲",
    "worse": "▼",
    "changed": "●",
    "better_prompts": "△",
    "worse_prompts": "▽",
    "changed_prompts": "○",
}


@dataclass(frozen=True)
class Cell:
    """A table cell, or one run of text in a note or a list item."""

    text: str = ""
    number: bool = False  # a statistic: `text` is its mean
    ci: str | None = None  # "low, high": the mean's confidence interval
    mark: str | None = None  # a key of MARKS
    shade: float | None = None  # a win rate, shaded from 0 through 0.5 (even) to 1
    higher_is_better: bool | None = None  # a metric's header: ↑ / ↓
    title: str | None = None  # a longer description of a header (a tooltip in HTML)
    detail: str | None = None  # a small second line of a header, e.g. the decoding a metric uses (HTML)
    tag: str | None = None  # a label after the text, e.g. "baseline"
    code: bool = False  # a path or settings (monospace in HTML)
    strong: bool = False
    note: str | None = None  # a footnote mark after the cell (its footnote is under the table)

    @property
    def arrow(self) -> str:
        """An up / down arrow after a metric's name: higher / lower is better; none without a direction."""
        return "" if self.higher_is_better is None else " ↑" if self.higher_is_better else " ↓"


@dataclass(frozen=True)
class Table:
    """A header row and body rows of cells; the first column heads its row."""

    header: list[Cell]
    rows: list[list[Cell]]
    style: str = ""  # how wide / dense to lay it out: "narrow", "stats", "stats matrix" (HTML classes)
    footnotes: list[str] = field(default_factory=list)  # shown under the table (a cell's `note` points here)

    def transposed(self, corner: str) -> Table:
        """Rows become columns; `corner` names the new first column."""
        columns = [[Cell(corner), *(row[0] for row in self.rows)]]
        columns += [[head, *(row[i] for row in self.rows)] for i, head in enumerate(self.header) if i > 0]
        return Table(columns[0], columns[1:], self.style, self.footnotes)


@dataclass(frozen=True)
class Definition:
    """One entry of a glossary: a term, what it is measured on, what it means."""

    term: str
    detail: str
    text: str


@dataclass(frozen=True)
class Reply:
    """One variant's greedy reply to an example prompt."""

    variant: str
    reward: str  # formatted, '-' when there is no reward model
    tokens: str
    facts: list[str]  # reward, length, EOS, verifier: what the HTML shows above the reply
    response: str


@dataclass(frozen=True)
class Example:
    index: str
    prompt: str
    reference: str | None
    replies: list[Reply]


# A paragraph: runs of text, each shown its own way (e.g. a model name as code).
Paragraph = list[Cell]


@dataclass(frozen=True)
class Section:
    """One titled part of a report; each renderer shows the parts that are set, in this order."""

    name: str  # stable, for a renderer to place things around it (the HTML puts its plots after "diffs")
    title: str
    note: Paragraph = field(default_factory=list)
    empty: str | None = None  # says why there is nothing to show
    table: Table | None = None
    items: list[Paragraph] = field(default_factory=list)  # a bullet list
    glossary_title: str = ""
    glossary: list[Definition] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- numbers


def _decimals(*xs: Any) -> int:
    # One precision per cell, from its largest magnitude, so the mean and its bounds line up.
    magnitude = max((abs(x) for x in xs if finite(x)), default=0.0)
    return 3 if magnitude < 10 else 1 if magnitude < 1000 else 0


def number(x: Any, places: int, signed: bool = False) -> str:
    return f"{x:{'+' if signed else ''}.{places}f}" if finite(x) else "-"


def stat_cell(stat: dict | None, signed: bool = False, mark: str | None = None) -> Cell:
    """`mean` with its `[ci_low, ci_high]`; just the mean when the interval is undefined, '-' when missing."""
    if not isinstance(stat, dict) or not finite(stat.get("mean")):
        return Cell("-", number=True)
    mean, low, high = stat["mean"], stat.get("ci_low"), stat.get("ci_high")
    places = _decimals(mean, low, high)
    ci = (
        f"{number(low, places, signed)}, {number(high, places, signed)}"
        if finite(low) and finite(high)
        else None
    )
    return Cell(number(mean, places, signed), number=True, ci=ci, mark=mark)


def plain(cell: Cell) -> str:
    """A cell as unformatted text (the terminal summary)."""
    return (
        cell.text + (f" [{cell.ci}]" if cell.ci is not None else "") + (f" {cell.note}" if cell.note else "")
    )
