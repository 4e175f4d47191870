"""Helpers for checking a rendered report page in headless Chromium through Selenium (a module, not tests).

The layout tests of report.html (tests/test_report_layout.py) and the quickstart's acceptance test open a
page at a phone's and a desktop's width and ask the browser what a reader would see: whether the page
scrolls sideways, whether a wide table keeps its first column in view, what a full-page screenshot shows.
Everything is measured in the browser (layout is the browser's, not the markup's), in CSS pixels.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")


def browser_ready() -> bool:
    """Selenium, a Chromium and its chromedriver are all installed."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return CHROMIUM is not None and CHROMEDRIVER is not None


# A test that opens a page in `driver` skips cleanly where there is no browser to open it in.
ready_for_browser = pytest.mark.skipif(
    not browser_ready(), reason="needs selenium, chromium and chromedriver"
)


@contextmanager
def driver(width: int, height: int = 900) -> Iterator:
    """A headless Chromium whose viewport is `width` x `height` CSS pixels (`window.innerWidth` is `width`),
    quit on leaving the block. The viewport is set through the DevTools protocol rather than the window
    size, which in headless mode also counts the window's frame."""
    with tempfile.TemporaryDirectory(prefix="hftune-chromium-") as profile:
        browser = chrome(Path(profile))
        try:
            resize(browser, width, height)
            yield browser
        finally:
            browser.quit()


def chrome(profile: Path):
    """A headless Chromium driven by Selenium, with its own profile folder `profile`; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def resize(chrome, width: int, height: int) -> None:
    """Set the viewport to `width` x `height` CSS pixels. Not as a phone (`mobile`): a phone zooms out to
    fit a page wider than its screen, which widens `window.innerWidth` and would hide the very overflow
    the tests look for; the page's media queries see the same width either way."""
    chrome.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


def open_page(chrome, page: Path) -> None:
    """Load a report file and wait until it has loaded: its scripts run, its images decoded."""
    from selenium.webdriver.support.ui import WebDriverWait

    chrome.get(page.resolve().as_uri())
    WebDriverWait(chrome, 30).until(lambda d: d.execute_script("return document.readyState === 'complete'"))


def page_overflow(chrome) -> int:
    """How many pixels the page is wider than the viewport: above 0, the reader scrolls the page sideways."""
    return chrome.execute_script("return document.documentElement.scrollWidth - window.innerWidth")


# The first `.scroll` box holding a `css` table that overflows it along `axis` ("x" or "y"), scrolled to
# that end; then where the first cell of the header and of the first body row are, and the box's visible
# part (inside its borders, without its scrollbars), as viewport coordinates. Null when there is no such box.
_SCROLLED = """
var css = arguments[0], x = arguments[1] === "x";
var box = Array.prototype.find.call(document.querySelectorAll(".scroll"), function (b) {
  var over = x ? b.scrollWidth - b.clientWidth : b.scrollHeight - b.clientHeight;
  return b.querySelector(css) !== null && over > 0;
});
if (!box) return null;
var table = box.querySelector(css);
box.scrollIntoView();
if (x) box.scrollLeft = box.scrollWidth; else box.scrollTop = box.scrollHeight;
var at = function (el) { var r = el.getBoundingClientRect(); return {x: r.left, y: r.top}; };
var rect = box.getBoundingClientRect(), left = rect.left + box.clientLeft, top = rect.top + box.clientTop;
return {
  scrolled: x ? box.scrollLeft : box.scrollTop,
  head: at(table.querySelector("thead tr > :first-child")),
  body: at(table.querySelector("tbody tr > :first-child")),
  from: {x: left, y: top},
  to: {x: left + box.clientWidth, y: top + box.clientHeight},
};
"""


def _scrolled(chrome, table_css: str, axis: str) -> dict:
    at = chrome.execute_script(_SCROLLED, table_css, axis)
    wide = "wider" if axis == "x" else "taller"
    assert at is not None, f"no {table_css!r} table is {wide} than its .scroll box here: nothing to check"
    assert at["scrolled"] > 0, at
    return at


def _inside(at: dict, cell: str, axis: str) -> bool:
    # One pixel of slack: a sticky cell's edge lands on the box's edge give or take rounding.
    return at["from"][axis] - 1 <= at[cell][axis] < at["to"][axis]


def first_column_stays(chrome, table_css: str = "table") -> bool:
    """Scroll the first `table_css` table that is wider than its `.scroll` box all the way right, and say
    whether its first column (the header's first cell and the first row's) is still in the box's visible
    part. Fails the test when no such table is wider than its box: there would be nothing to check (make
    the viewport narrower or the table wider)."""
    at = _scrolled(chrome, table_css, "x")
    return _inside(at, "head", "x") and _inside(at, "body", "x")


def header_stays(chrome, table_css: str = "table") -> bool:
    """Scroll the first `table_css` table that is taller than its `.scroll` box all the way down, and say
    whether its header row is still at the top of the box's visible part. Fails the test when no such
    table is taller than its box (make the viewport lower or the table longer)."""
    at = _scrolled(chrome, table_css, "y")
    return _inside(at, "head", "y")


def screenshot_full(chrome, path: Path) -> Path:
    """Save a screenshot of the whole page, not only the viewport: the viewport is made as tall as the
    document first (keeping its width), so rows far down are laid out and painted as a reader scrolling
    there would see them. A table in a scroll box of limited height (report.html's prompt browser) shows
    the part in its box's view, as on screen. The viewport keeps that height afterwards."""
    width = chrome.execute_script("return window.innerWidth")
    height = chrome.execute_script("return document.documentElement.scrollHeight")
    resize(chrome, width, height)
    chrome.save_screenshot(str(path))
    return path
