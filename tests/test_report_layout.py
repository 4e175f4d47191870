"""report.html reads on any screen: on a phone the page never scrolls sideways (a wide table scrolls in its
own box, keeping its first column and header row in view), a contents bar links every part, and the
prompt browser's rows are laid out (so they print and screenshot). Rendered from the synthetic eval of
tests/test_eval_report.py, whose metric table is far wider than a phone; measured in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from report_page import driver, first_column_stays, header_stays, open_page, page_overflow, ready_for_browser
from test_eval_report import eval_output  # noqa: F401  (a fixture)

from hftune.evaluation.report import write_reports

PHONE, DESKTOP = 390, 1400


@pytest.fixture
def report(tmp_path, eval_output) -> Path:  # noqa: F811
    results, samples = eval_output
    write_reports(tmp_path, results, samples)
    return tmp_path / "report.html"


def test_the_contents_bar_links_every_part_in_order(report):
    page = report.read_text()
    [nav] = re.findall(r'<nav class="contents"[^>]*>(.*?)</nav>', page)
    links = re.findall(r'<a href="#([^"]+)">([^<]*)</a>', nav)
    # Each part: a <section> with its id around its heading, or a heading with its own id.
    parts = [
        (section or heading, title or own)
        for section, title, heading, own in re.findall(
            r'<section id="([^"]+)"><h2>([^<]*)</h2>|<h2 id="([^"]+)">([^<]*)</h2>', page
        )
    ]
    assert len(parts) == page.count("<h2") >= 8
    assert links == parts
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "an id used twice"
    assert {"prompts", "plots", "verdict", "metrics"} <= set(ids)


@pytest.mark.integration  # launches a browser
@ready_for_browser
@pytest.mark.parametrize("width", [PHONE, DESKTOP])
def test_the_page_never_scrolls_sideways(report, width):
    with driver(width) as chrome:
        open_page(chrome, report)
        assert page_overflow(chrome) <= 0
        # The plots and the glossary fit too, each in one column on a phone.
        columns = chrome.execute_script(
            "return [getComputedStyle(document.querySelector('.plots')).gridTemplateColumns,"
            " getComputedStyle(document.querySelector('dl')).gridTemplateColumns]"
        )
        assert all(len(c.split()) == (1 if width == PHONE else 2) for c in columns), columns


@pytest.mark.integration
@ready_for_browser
def test_a_wide_table_keeps_its_first_column_and_header_in_view(report):
    with driver(PHONE, 700) as chrome:
        open_page(chrome, report)
        assert first_column_stays(chrome, "table.stats")  # the metrics: a variant's name stays
        assert first_column_stays(chrome, "table.browse")  # the prompt browser: a prompt's number stays
        assert header_stays(chrome, "table.browse")
        # A sticky cell hides what scrolls beneath it.
        backgrounds = chrome.execute_script(
            "return Array.prototype.map.call(document.querySelectorAll("
            "'.scroll tr > :first-child, .scroll thead th'), function (c) {"
            " return getComputedStyle(c).backgroundColor; })"
        )
        assert backgrounds and not [b for b in backgrounds if b.startswith("rgba")], set(backgrounds)


@pytest.mark.integration
@ready_for_browser
def test_every_prompt_row_is_laid_out_and_prints_whole(report):
    with driver(PHONE, 700) as chrome:
        open_page(chrome, report)
        rows = "document.querySelectorAll('table.browse tbody tr')"
        skipped = chrome.execute_script(
            f"return Array.prototype.filter.call({rows}, function (tr) {{"
            " return getComputedStyle(tr).contentVisibility !== 'visible'; }).length"
        )
        assert chrome.execute_script(f"return {rows}.length") == 12 and skipped == 0
        chrome.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        printed = chrome.execute_script(
            "var nav = document.querySelector('nav.contents'), box = document.querySelector('.scroll');"
            "var head = document.querySelector('.scroll thead th');"
            "return [getComputedStyle(nav).display, getComputedStyle(box).overflowX,"
            " getComputedStyle(box).maxHeight, getComputedStyle(head).position]"
        )
        assert printed == ["none", "visible", "none", "static"]
