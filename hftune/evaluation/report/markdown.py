"""report.md, and the Markdown tables of the model card: a report's sections as Markdown.

Every string goes through `escape`, since a Markdown viewer (the Hub's included) renders raw HTML and model
output is arbitrary text.
"""

from __future__ import annotations

import html
import re
from typing import Any

from hftune.evaluation.report import sections
from hftune.evaluation.report.results import prompt_count
from hftune.evaluation.report.table import MARKS, Cell, Definition, Example, Paragraph, Section, Table


def escape(text: Any) -> str:
    """Inline-safe Markdown: HTML-escaped (a viewer renders raw HTML), Markdown syntax and pipes
    backslash-escaped, line breaks as <br> so a table cell stays one line."""
    text = html.escape("" if text is None else str(text), quote=False)
    text = re.sub(r"([\\`*\[\]{}|#~])", r"\\\1", text)
    # An underscore inside a word never starts emphasis; escaping it there would only clutter the file.
    text = re.sub(r"(?<!\w)_|_(?!\w)", r"\\_", text)
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def render_markdown(results: dict, samples: list[dict]) -> str:
    """The whole of report.md."""
    suite = escape((results.get("suite") or {}).get("name", "eval"))
    out = [f"# Eval report: {suite} ({escape(prompt_count(results, len(samples)))})", ""]
    for part in sections.report(results, samples):
        out += _section(part)
    out.append(
        "Plots (reward and length distributions, win-rate heatmap, reward vs KL, each trained variant's "
        "training curves per seed) and every prompt's replies "
        "(sortable and filterable by the reward difference of two variants) are in report.html."
    )
    return "\n".join(out) + "\n"


def _section(part: Section) -> list[str]:
    out = [f"## {escape(part.title)}", ""]
    if part.note:
        out += [_paragraph(part.note), ""]
    if part.empty:
        out += [escape(part.empty), ""]
    if part.table is not None:
        out += table(part.table)
    if part.items:
        out += [*(f"- {_paragraph(item)}" for item in part.items), ""]
    if part.glossary:
        out += [*map(_definition, part.glossary), ""]
    for example in part.examples:
        out += _example(example)
    return out


def table(rows: Table) -> list[str]:
    """A pipe table, then a blank line."""
    lines = [_row(rows.header), "|" + "|".join("---" for _ in rows.header) + "|"]
    notes = [line for note in rows.footnotes for line in (escape(note), "")]
    return [*lines, *map(_row, rows.rows), "", *notes]


def _row(cells: list[Cell]) -> str:
    return "| " + " | ".join(map(_cell, cells)) + " |"


def _cell(c: Cell) -> str:
    """A cell's text, escaped, with its arrow, tag and interval; a marked cell in bold with its mark. Code
    is not put in backticks: escapes do not work inside a code span, so a name could end it."""
    text = escape(c.text) + c.arrow
    if c.tag:
        text += f" ({escape(c.tag)})"
    if c.ci is not None:
        text += f" [{escape(c.ci)}]"
    if c.mark:
        text += f" {MARKS[c.mark]}"
    if c.note:
        text += f" {escape(c.note)}"
    return f"**{text}**" if c.mark or c.strong else text


def _paragraph(runs: Paragraph) -> str:
    return "".join(map(_cell, runs))


def _definition(entry: Definition) -> str:
    return f"- **{escape(entry.term)}** ({escape(entry.detail)}): {escape(entry.text)}"


def _example(example: Example) -> list[str]:
    out = [f"### Prompt {escape(example.index)}", "", f"**Prompt:** {escape(example.prompt)}"]
    if example.reference is not None:
        out += ["", f"**Reference:** {escape(example.reference)}"]
    # One row per reply; the HTML shows the same replies side by side as cards instead.
    header = [Cell("variant"), Cell("reward"), Cell("tokens"), Cell("response")]
    rows = [[Cell(r.variant), Cell(r.reward), Cell(r.tokens), Cell(r.response)] for r in example.replies]
    return [*out, "", *table(Table(header, rows))]
