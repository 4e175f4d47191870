"""report.html: a report's sections as one self-contained page, with the plots.

The page has no external resources (its plots are inline PNGs) so it can be mailed or archived as one file;
a small inline script checks on load that every plot decoded and records the outcome in the page title and
a `data-plots-ok` attribute on <body>, which the tests read through headless Chromium. Every string is
HTML-escaped, since model output is arbitrary text and the report is opened in a browser.
"""

from __future__ import annotations

import json
from html import escape as html_escape
from typing import Any

from hftune.evaluation.report import sections
from hftune.evaluation.report.plots import Plot, render_plots
from hftune.evaluation.report.results import baseline, confidence
from hftune.evaluation.report.table import MARKS, Cell, Definition, Example, Paragraph, Reply, Section, Table


def _escape(text: Any) -> str:
    return html_escape("" if text is None else str(text), quote=True)


def render_html(results: dict, samples: list[dict]) -> str:
    """The whole of report.html."""
    suite = (results.get("suite") or {}).get("name", "eval")
    n_prompts = results.get("n_prompts", len(samples))
    body = []
    for part in sections.report(results, samples):
        body.append(_section(part))
        if part.name == "diffs":  # the plots draw the numbers of the tables above them
            body.append(_plots(render_plots(results, samples)))
    body.append(_suite(results))
    return PAGE.format(
        title=_escape(f"{suite} — hftune eval report"),
        css=CSS,
        heading=f"Eval report: {_escape(suite)}",
        subtitle=_escape(
            f"{n_prompts} prompts · baseline: {baseline(results) or '-'} · {confidence(results)} CI"
        ),
        body="\n".join(body),
        script=SCRIPT,
    )


def _section(part: Section) -> str:
    out = f"<h2>{_escape(part.title)}</h2>"
    if part.note:
        out += f'<p class="note">{_paragraph(part.note)}</p>'
    if part.empty:
        out += f"<p>{_escape(part.empty)}</p>"
    if part.table is not None:
        out += _table(part.table)
    if part.items:
        out += "<ul>" + "".join(f"<li>{_paragraph(item)}</li>" for item in part.items) + "</ul>"
    if part.glossary:
        entries = "".join(map(_definition, part.glossary))
        out += f"<details><summary>{_escape(part.glossary_title)}</summary><dl>{entries}</dl></details>"
    return out + "".join(map(_example, part.examples))


def _table(rows: Table) -> str:
    """The first column heads its row."""
    head = "".join(f"<th>{_content(c)}</th>" for c in rows.header)
    body = "".join("<tr>" + "".join(_td(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows.rows)
    markup = (
        f'<table class="{_escape(rows.style)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )
    return f'<div class="scroll">{markup}</div>'


def _td(column: int, c: Cell) -> str:
    tag = "th" if column == 0 else "td"
    attrs = f' class="{_escape(c.mark)}"' if c.mark else ""
    if c.shade is not None:
        attrs += f' style="{_shade(c.shade)}"'
    return f"<{tag}{attrs}>{_content(c)}</{tag}>"


def _shade(rate: float) -> str:
    # Same diverging scale as the heatmap: red below 0.5, white at 0.5, blue above.
    strength = min(abs(rate - 0.5) * 2, 1.0) * 0.55
    target = (33, 102, 172) if rate > 0.5 else (178, 24, 43)
    r, g, b = (round(255 + (t - 255) * strength) for t in target)
    return f"background: rgb({r},{g},{b})"


def _content(c: Cell) -> str:
    """A cell's content. A statistic is its mean in bold over its CI in small print (two lines keep a wide
    metric table in the page); a header has its description as a tooltip and its decoding below."""
    text = _escape(c.text) + c.arrow
    if c.code:
        text = f"<code>{text}</code>"
    if c.strong:
        text = f"<b>{text}</b>"
    if c.title is not None:
        text = f'<span title="{_escape(c.title)}">{text}</span>'
    if c.number:
        mark = f" {MARKS[c.mark]}" if c.mark else ""
        text = f'<span class="mean">{text}{mark}</span>'
        if c.ci is not None:
            text += f'<span class="ci">[{_escape(c.ci)}]</span>'
    if c.tag:
        text += f' <span class="tag">{_escape(c.tag)}</span>'
    if c.detail:
        text += f'<span class="dec">{_escape(c.detail)}</span>'
    return text


def _paragraph(runs: Paragraph) -> str:
    return "".join(map(_content, runs))


def _definition(entry: Definition) -> str:
    detail = f'<span class="dec">{_escape(entry.detail)}</span>'
    return f"<dt>{_escape(entry.term)} {detail}</dt><dd>{_escape(entry.text)}</dd>"


def _example(example: Example) -> str:
    reference = ""
    if example.reference is not None:
        reference = (
            f'<div class="ref"><b>Reference:</b> <span class="text">{_escape(example.reference)}</span></div>'
        )
    return (
        f'<div class="example"><div class="prompt"><b>Prompt {_escape(example.index)}:</b> '
        f'<span class="text">{_escape(example.prompt)}</span></div>{reference}'
        f'<div class="replies">{"".join(map(_reply, example.replies))}</div></div>'
    )


def _reply(reply: Reply) -> str:
    facts = f'<span class="facts">{_escape(" · ".join(reply.facts))}</span>'
    return (
        f'<div class="reply"><div class="who">{_escape(reply.variant)} {facts}</div>'
        f'<div class="text">{_escape(reply.response)}</div></div>'
    )


def _plots(plots: list[Plot]) -> str:
    figures = []
    for plot in plots:
        if plot.png:
            body = f'<img alt="{_escape(plot.title)}" src="data:image/png;base64,{plot.png}">'
        else:
            body = f'<div class="skipped">Plot skipped: {_escape(plot.note)}</div>'
        figures.append(
            f"<figure><h3>{_escape(plot.title)}</h3>{body}<figcaption>{_escape(plot.caption)}</figcaption></figure>"
        )
    return f'<h2>Plots</h2><div class="plots">{"".join(figures)}</div>'


def _suite(results: dict) -> str:
    suite = json.dumps(results.get("suite") or {}, indent=2, default=str, ensure_ascii=False)
    return f"<details><summary>Suite settings</summary><pre>{_escape(suite)}</pre></details>"


CSS = """
:root { --fg: #1d2329; --muted: #5b6670; --line: #dde2e7; --bg2: #f5f7f9; --accent: #2f6db5; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 14px; margin: 0 0 6px; }
.subtitle, .note, figcaption, .facts { color: var(--muted); }
.note { margin: 4px 0 8px; font-size: 13px; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
pre { background: var(--bg2); padding: 10px; overflow-x: auto; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: right; vertical-align: top; }
thead th { background: var(--bg2); text-align: center; font-weight: 600; }
tbody th { text-align: left; background: #fbfcfd; white-space: nowrap; }
table.narrow td { text-align: left; }
.stats td { white-space: nowrap; }
.mean { display: block; font-weight: 600; font-variant-numeric: tabular-nums; }
.ci { display: block; font-size: 11px; color: var(--muted); font-variant-numeric: tabular-nums; }
.dec { display: block; font-size: 10px; font-weight: 400; color: var(--muted); }
.tag { font-size: 11px; background: #e8eef7; color: var(--accent); padding: 1px 6px; border-radius: 8px; }
td.better { background: #dcf2de; } td.worse { background: #f8dcdc; } td.changed { background: #fbefd0; }
.matrix td { text-align: center; min-width: 96px; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 16px; }
figure { margin: 0; padding: 10px; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; margin-top: 4px; }
.skipped { padding: 40px 12px; text-align: center; color: var(--muted); background: var(--bg2); }
li { margin-bottom: 4px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; font-size: 13px; }
dt { font-weight: 600; } dd { margin: 0; }
details { margin: 8px 0; } summary { cursor: pointer; color: var(--accent); }
.example { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; margin: 12px 0; }
.prompt, .ref { margin-bottom: 6px; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; }
.replies { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 8px; }
.reply { background: var(--bg2); border-radius: 4px; padding: 6px 8px; font-size: 13px; }
.reply .who { font-weight: 600; margin-bottom: 2px; } .reply .facts { font-weight: 400; font-size: 12px; }
.reply .text { display: block; }
"""

# Run after load, when every data: image has decoded or failed; the tests read the title / attribute.
SCRIPT = """
window.addEventListener("load", function () {
  var broken = Array.prototype.filter.call(document.images, function (img) {
    return !(img.complete && img.naturalWidth > 0);
  }).length;
  var status = broken ? "hftune report: broken images " + broken : "hftune report: ok";
  document.title = status + " · " + document.title;
  document.body.setAttribute("data-plots-ok", broken ? "false" : "true");
});
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<main>
<h1>{heading}</h1>
<div class="subtitle">{subtitle}</div>
{body}
</main>
<script>{script}</script>
</body>
</html>
"""
