"""report.html: a report's sections as one self-contained page, with the plots and every prompt.

The page has no external resources (its plots are inline PNGs) so it can be mailed or archived as one file;
a small inline script checks on load that every plot decoded and records the outcome in the page title and
a `data-plots-ok` attribute on <body>, which the tests read through headless Chromium. In place of the
first few examples the page has the prompt browser (`browse`): every prompt's replies, all in the markup,
which a second inline script sorts and filters. Every string is HTML-escaped, since model output is
arbitrary text and the report is opened in a browser.
"""

from __future__ import annotations

import json
from html import escape as html_escape
from typing import Any

from hftune.evaluation.report import browse, sections
from hftune.evaluation.report.plots import Plot, render_plots
from hftune.evaluation.report.results import CAVEAT_MARK, baseline, confidence, prompt_count
from hftune.evaluation.report.table import (
    MARKS,
    Cell,
    Definition,
    Example,
    Paragraph,
    Reply,
    Section,
    Table,
    number,
)

# A longer reply or prompt in the prompt browser shows its first FOLD_AT characters, the rest behind a click.
FOLD_AFTER = 300
FOLD_AT = 220


def _escape(text: Any) -> str:
    return html_escape("" if text is None else str(text), quote=True)


def render_html(results: dict, samples: list[dict]) -> str:
    """The whole of report.html."""
    suite = (results.get("suite") or {}).get("name", "eval")
    body, contents = [], []  # the parts, and (id, title) of each for the contents bar
    for part in sections.report(results, samples):
        if part.name == "examples":  # the page has every prompt, in the browser, instead of the first few
            prompts = _browser(browse.browser(results, samples))
            if prompts:
                body.append(prompts)
                contents.append(("prompts", "All prompts"))  # its heading's id
            continue
        body.append(_section(part))
        contents.append((part.name, part.title))
        if part.name == "diffs":  # the plots draw the numbers of the tables above them
            body.append(_plots(render_plots(results, samples)))
            contents.append(("plots", "Plots"))
    body.append(_suite(results))
    return PAGE.format(
        title=_escape(f"{suite} — hftune eval report"),
        css=CSS,
        heading=f"Eval report: {_escape(suite)}",
        subtitle=_escape(
            f"{prompt_count(results, len(samples))} · baseline: {baseline(results) or '-'} · "
            f"{confidence(results)} CI"
        ),
        contents=_contents(contents),
        body="\n".join(body),
        script=SCRIPT,
    )


def _contents(entries: list[tuple[str, str]]) -> str:
    """The contents bar: a link to each part of the page, in order: to a <section> whose id is its
    Section.name (unique) or "plots", or to the prompt browser's heading ("prompts"). The bar is one line,
    which scrolls sideways on a phone."""
    links = "".join(f'<a href="#{_escape(id_)}">{_escape(title)}</a>' for id_, title in entries)
    return f'<nav class="contents" aria-label="Contents">{links}</nav>'


def _section(part: Section) -> str:
    out = f'<section id="{_escape(part.name)}"><h2>{_escape(part.title)}</h2>'
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
    return out + "".join(map(_example, part.examples)) + "</section>"


def _table(rows: Table) -> str:
    """The first column heads its row. In its scroll box the first column and the header row stay in view
    while the table scrolls (see CSS)."""
    head = "".join(f"<th>{_content(c)}</th>" for c in rows.header)
    body = "".join("<tr>" + "".join(_td(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows.rows)
    markup = (
        f'<table class="{_escape(rows.style)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )
    notes = "".join(f'<p class="footnote">{_escape(note)}</p>' for note in rows.footnotes)
    return f'<div class="scroll">{markup}</div>{notes}'


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
    note = f'<sup class="fn">{_escape(c.note)}</sup>' if c.note else ""
    if c.number:
        mark = f" {MARKS[c.mark]}" if c.mark else ""
        text = f'<span class="mean">{text}{mark}{note}</span>'
        if c.ci is not None:
            text += f'<span class="ci">[{_escape(c.ci)}]</span>'
    else:
        text += note
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


def _browser(b: browse.Browser | None) -> str:
    """Every prompt as a table row, all in the page; the script (hidden controls until it runs) sorts and
    filters them. The script reads: `data-r` (each variant's reward, in column order, '-' where none), `.q`
    (the prompt's text), `.bd` (the A - B cell) and `th[data-v]` (a variant's column)."""
    if b is None:
        return ""
    pair = b.a is not None and b.b is not None
    controls = ""
    if pair:
        controls = (
            f'<label>A <select name="a">{_options(b, b.a)}</select></label>'
            f'<label>B <select name="b">{_options(b, b.b)}</select></label>'
            '<label>Show <select name="only"><option value="all">every prompt</option>'
            '<option value="lt">A loses to B (A − B &lt; 0)</option>'
            '<option value="gt">A beats B (A − B &gt; 0)</option>'
            '<option value="eq">ties (A − B = 0)</option></select></label>'
            '<label>Order <select name="sort"><option value="index">prompt order</option>'
            '<option value="asc">A − B, ascending</option><option value="desc">A − B, descending</option>'
            "</select></label>"
        )
    controls += '<label>Prompt contains <input type="search" name="q"></label><span class="count"></span>'
    head = "<th>#</th><th>prompt</th>"
    if pair:
        head += f'<th class="bd">{_escape(b.variants[b.a])} − {_escape(b.variants[b.b])}</th>'
    for i, name in enumerate(b.variants):
        picked = ' class="pick-a"' if i == b.a else ' class="pick-b"' if i == b.b else ""
        note = f'<sup class="fn">{_escape(CAVEAT_MARK)}</sup>' if b.caveated and b.caveated[i] else ""
        head += f'<th data-v="{i}"{picked}>{_escape(name)}{note}</th>'
    rows = "".join(_browser_row(b, row, pair) for row in b.rows)
    # Each row lays itself out as a grid with these columns (see CSS), so rows out of view can skip layout.
    columns = f"3.5em minmax(160px, 1.2fr){' 90px' * pair} repeat({len(b.variants)}, minmax(160px, 1fr))"
    note = (
        f"All {len(b.rows)} prompts, each variant's greedy reply side by side. Pick two variants A and B to "
        "sort and filter the prompts by the paired reward difference reward(A) − reward(B); long texts are "
        "folded (click to unfold)."
        if pair
        else f"All {len(b.rows)} prompts, each variant's greedy reply side by side; long texts are folded."
    )
    if b.seeded:
        note += (
            " A variant trained with several seeds has a column for each seed and one for the seeds "
            "together: their mean reward (what its metrics use) and their replies, with how many seeds "
            "gave each."
        )
    caveat = f'<p class="footnote">{_escape(b.caveat)}</p>' if b.caveat else ""
    return (
        f'<h2 id="prompts">All prompts</h2><p class="note">{_escape(note)}</p>{caveat}<div id="browse">'
        f'<form class="controls" hidden>{controls}</form><div class="scroll">'
        f'<table class="browse" style="--columns: {columns}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div></div>"
    )


def _options(b: browse.Browser, chosen: int | None) -> str:
    return "".join(
        f'<option value="{i}"{" selected" if i == chosen else ""}>{_escape(b.variants[i])}</option>'
        for i in b.rewarded
    )


def _browser_row(b: browse.Browser, row: browse.Row, pair: bool) -> str:
    rewards = " ".join("-" if a is None or a.reward is None else repr(a.reward) for a in row.answers)
    prompt = _folded(row.prompt, "text q")
    if row.reference is not None:
        prompt += f'<div class="refline"><b>Reference:</b> {_folded(row.reference, "text")}</div>'
    out = f'<tr data-r="{rewards}"><td class="bi">{_escape(row.index)}</td><td>{prompt}</td>'
    if pair:
        difference = b.difference(row)
        mark = "" if not difference else " worse" if difference < 0 else " better"
        out += f'<td class="bd{mark}">{number(difference, 3, signed=difference != 0)}</td>'
    for answer in row.answers:
        if answer is None:
            out += '<td class="none">no reply</td>'
        else:
            facts = f'<span class="facts">{_escape(" · ".join(answer.facts))}</span>'
            out += f"<td>{facts}{_folded(answer.response, 'text')}</td>"
    return out + "</tr>"


def _folded(text: str, css: str) -> str:
    """Text in full when short; else its start, and the rest in a <details> (unfolded by a click)."""
    if len(text) <= FOLD_AFTER:
        return f'<span class="{css}">{_escape(text)}</span>'
    head, tail = text[:FOLD_AT], text[FOLD_AT:]
    return (
        f'<span class="{css}">{_escape(head)}</span><details><summary>… {len(tail)} more characters'
        f'</summary><span class="{css}">{_escape(tail)}</span></details>'
    )


def _plots(plots: list[Plot]) -> str:
    figures = []
    for plot in plots:
        if plot.png:
            body = f'<img alt="{_escape(plot.title)}" src="data:image/png;base64,{plot.png}">'
        else:
            body = f'<div class="skipped">Plot skipped: {_escape(plot.note)}</div>'
        # The names it draws, for a reader's tools (and the tests) to check what a picture shows.
        drawn = f' data-variants="{_escape(json.dumps(plot.variants))}"' if plot.png else ""
        figures.append(
            f"<figure{drawn}><h3>{_escape(plot.title)}</h3>{body}"
            f"<figcaption>{_escape(plot.caption)}</figcaption></figure>"
        )
    return f'<section id="plots"><h2>Plots</h2><div class="plots">{"".join(figures)}</div></section>'


def _suite(results: dict) -> str:
    suite = json.dumps(results.get("suite") or {}, indent=2, default=str, ensure_ascii=False)
    return f"<details><summary>Suite settings</summary><pre>{_escape(suite)}</pre></details>"


CSS = """
:root { --fg: #1d2329; --muted: #5b6670; --line: #dde2e7; --bg2: #f5f7f9; --accent: #2f6db5;
        --bar: 34px; /* the sticky contents bar's height, which sticky things below it keep clear of */ }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 14px; margin: 0 0 6px; }
h1, h2, h3 { overflow-wrap: anywhere; }
[id] { scroll-margin-top: var(--bar); }  /* a link to a part lands below the contents bar */
nav.contents { position: sticky; top: 0; z-index: 5; height: var(--bar); display: flex; gap: 4px 16px;
               align-items: center; overflow-x: auto; white-space: nowrap; scrollbar-width: thin;
               background: #fff; border-bottom: 1px solid var(--line); margin: 8px 0 0; font-size: 13px; }
nav.contents a { color: var(--accent); text-decoration: none; }
nav.contents a:hover { text-decoration: underline; }
.subtitle, .note, figcaption, .facts { color: var(--muted); }
.note { margin: 4px 0 8px; font-size: 13px; }
.footnote { margin: 4px 0 10px; font-size: 12px; color: var(--muted); max-width: 70em; }
sup.fn { color: #a0522d; font-weight: 600; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
code { overflow-wrap: break-word; }  /* a long model path breaks in running text; a table cell scrolls */
pre { background: var(--bg2); padding: 10px; overflow-x: auto; }
/* A table wider or taller than the screen scrolls in its box, where its header row and first column stay
   in view. Sticky cells need opaque backgrounds, and borders of their own: with collapsed borders the
   table, not the cell, paints them, and they would scroll away from the cell. */
.scroll { overflow: auto; max-height: 80vh; }
table { border-collapse: separate; border-spacing: 0; font-size: 13px; }
th, td { border: 0 solid var(--line); border-width: 0 1px 1px 0; padding: 4px 8px; text-align: right;
         vertical-align: top; }
tr > :first-child { border-left-width: 1px; }
thead tr:first-child > * { border-top-width: 1px; }
thead th { background: var(--bg2); text-align: center; font-weight: 600; }
tbody th { text-align: left; background: #fbfcfd; white-space: nowrap; }
.scroll thead th { position: sticky; top: 0; z-index: 2; }
.scroll tr > :first-child { position: sticky; left: 0; z-index: 1; }
.scroll thead tr > :first-child { z-index: 3; }
table.narrow td { text-align: left; }
.stats td { white-space: nowrap; }
.mean { display: block; font-weight: 600; font-variant-numeric: tabular-nums; }
.ci { display: block; font-size: 11px; color: var(--muted); font-variant-numeric: tabular-nums; }
.dec { display: block; font-size: 10px; font-weight: 400; color: var(--muted); }
.tag { font-size: 11px; background: #e8eef7; color: var(--accent); padding: 1px 6px; border-radius: 8px; }
/* Marks colour a header cell too (opaque, so a marked sticky cell hides what scrolls beneath it). */
:is(td, th).better { background: #dcf2de; } :is(td, th).worse { background: #f8dcdc; }
:is(td, th).changed { background: #fbefd0; } :is(td, th).better_prompts { background: #eff9f0; }
:is(td, th).worse_prompts { background: #fcf0f0; } :is(td, th).changed_prompts { background: #fdf7e8; }
ul.verdicts li { margin: 0.2em 0; }
.matrix td { text-align: center; min-width: 96px; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(520px, 100%), 1fr)); gap: 16px; }
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
.replies { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(260px, 100%), 1fr)); gap: 8px; }
.reply { background: var(--bg2); border-radius: 4px; padding: 6px 8px; font-size: 13px; }
.reply .who { font-weight: 600; margin-bottom: 2px; } .reply .facts { font-weight: 400; font-size: 12px; }
.reply .text { display: block; }
.controls { display: flex; flex-wrap: wrap; gap: 6px 16px; align-items: center; font-size: 13px;
            position: sticky; top: var(--bar); z-index: 4; background: #fff; padding: 6px 0; }
.count { color: var(--muted); }
/* The prompt browser: a table whose rows are grids of the same fixed columns rather than table rows, so
   that no column's width depends on the other rows and sorting or filtering thousands of rows does not
   measure them all again. (Not `content-visibility: auto` on the rows: rows it skips print and screenshot
   blank.) The table is as wide as its columns' minimum widths (or its box), so that its rows, and the
   sticky cells in them, reach its right end; its header sticks as a whole, its cells being in a row. */
table.browse, table.browse thead, table.browse tbody { display: block; }
table.browse { font-size: 12.5px; width: min-content; min-width: 100%; }
table.browse thead { position: sticky; top: 0; z-index: 2; }
table.browse tr { display: grid; grid-template-columns: var(--columns); }
table.browse th, table.browse td { text-align: left; min-width: 0; }
table.browse tbody td:first-child { background: #fff; }
.controls[hidden], table.browse tr[hidden] { display: none; }
table.browse td.bi, table.browse td.bd { text-align: right; }
td.bd { font-variant-numeric: tabular-nums; white-space: nowrap; }
table.browse th.pick-a::after { content: " (A)"; } table.browse th.pick-b::after { content: " (B)"; }
table.browse .facts { display: block; font-size: 11px; } td.none { color: var(--muted); }
table.browse details { margin: 2px 0 0; } table.browse summary { font-size: 11px; }
.refline { margin-top: 4px; color: var(--muted); }
/* A phone: less padding and smaller type; the glossary's terms above their text. The controls scroll
   away with the page rather than cover a good part of a small screen. */
@media (max-width: 600px) {
  body { font-size: 13px; }
  main { padding: 12px 10px 32px; }
  h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 20px; }
  th, td { padding: 3px 5px; }
  dl { grid-template-columns: minmax(0, 1fr); } dd { margin-bottom: 6px; }
  figure { padding: 6px; }
  .controls { position: static; }
}
/* On paper: no contents bar or controls, nothing sticky, and tables at full height (wide ones are cut at
   the page's edge). Folded texts stay folded: CSS cannot open a <details>. */
@media print {
  nav.contents, .controls { display: none; }
  main { max-width: none; padding: 0; }
  .scroll { overflow: visible; max-height: none; }
  .scroll thead th, .scroll tr > :first-child, table.browse thead { position: static; }
  h2 { break-after: avoid; } tr, figure { break-inside: avoid; }
}
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

// The prompt browser: every row is in the page; this only orders and hides them. A - B is recomputed when
// the pair changes, the rows are moved only when their order changes, so typing in the filter stays fast.
(function () {
  var box = document.getElementById("browse");
  if (!box) return;
  var form = box.querySelector("form"), tbody = box.querySelector("tbody"), ctl = form.elements;
  var rows = Array.prototype.slice.call(tbody.rows);
  var texts = rows.map(function (tr) {
    var parts = tr.querySelectorAll(".q");
    return Array.prototype.map.call(parts, function (e) { return e.textContent; }).join("").toLowerCase();
  });
  var rewards = rows.map(function (tr) { return tr.getAttribute("data-r").split(" ").map(parseFloat); });
  var cells = rows.map(function (tr) { return tr.querySelector("td.bd"); });
  var heads = Array.prototype.slice.call(box.querySelectorAll("th[data-v]"));
  var pair = null, order = "index", diff = rows.map(function () { return NaN; });
  function name(select) { return select.options[select.selectedIndex].text; }
  function update() {
    var a = ctl.a ? +ctl.a.value : -1, b = ctl.b ? +ctl.b.value : -1;
    var keep = ctl.only ? ctl.only.value : "all", how = ctl.sort ? ctl.sort.value : "index";
    var needle = ctl.q.value.trim().toLowerCase(), shown = 0;
    if (a >= 0 && pair !== a + " " + b) {
      pair = a + " " + b;
      diff = rewards.map(function (r) { return r[a] - r[b]; });
      cells.forEach(function (td, i) {
        var d = diff[i];
        td.textContent = isNaN(d) ? "-" : (d > 0 ? "+" : "") + d.toFixed(3);
        td.className = "bd" + (d < 0 ? " worse" : d > 0 ? " better" : "");
      });
      box.querySelector("th.bd").textContent = name(ctl.a) + " − " + name(ctl.b);
      heads.forEach(function (th) {
        var v = +th.getAttribute("data-v");
        th.className = v === a ? "pick-a" : v === b ? "pick-b" : "";
      });
    }
    rows.forEach(function (tr, i) {
      var d = diff[i];
      var ok = texts[i].indexOf(needle) >= 0 &&
        (keep === "all" || (keep === "lt" ? d < 0 : keep === "gt" ? d > 0 : d === 0));
      if (tr.hidden === ok) tr.hidden = !ok;
      shown += ok ? 1 : 0;
    });
    var key = how === "index" ? how : how + " " + pair;
    if (order !== key) {
      order = key;
      var sign = how === "asc" ? 1 : -1, idx = rows.map(function (_, i) { return i; });
      if (how !== "index") {  // a stable sort: ties keep prompt order; prompts without a difference last
        idx.sort(function (i, j) {
          var x = diff[i], y = diff[j];
          return isNaN(x) || isNaN(y) ? isNaN(x) - isNaN(y) : sign * (x - y);
        });
      }
      var frag = document.createDocumentFragment();
      idx.forEach(function (i) { frag.appendChild(rows[i]); });
      tbody.appendChild(frag);
    }
    box.querySelector(".count").textContent = shown + " of " + rows.length + " prompts shown";
  }
  form.addEventListener("input", update);
  form.addEventListener("submit", function (e) { e.preventDefault(); });
  form.hidden = false;
  update();
})();
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
{contents}
{body}
</main>
<script>{script}</script>
</body>
</html>
"""
