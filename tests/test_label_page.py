"""The labelling page in headless Chromium, as a labeller uses it with a keyboard, a mouse, a finger or a
screen reader: keys act on the focused control only, the rank buttons rank and tie, the highlighted
completion is the focused element and in view, skipped items come back, undo retracts, and axe-core finds
no serious or critical accessibility problem on a desktop or a phone. The real app serves a small items
file written here: no model needed."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
from report_page import ready_for_browser, resize
from test_label import browser, items_data, log_in, press, serve_in_thread, shown_item, wait_for

from hftune.label import app as label_app
from hftune.label.store import TRAIN_FILE, LabelStore, read_rows

pytestmark = ready_for_browser

PHONE, DESKTOP = (390, 844), (1280, 900)


@contextmanager
def labelling_page(tmp_path: Path, data: dict, size: tuple[int, int] = DESKTOP, **options):
    """The real app on `data` (`options`: the Labelling's guidelines and hints), served in a thread, and a
    browser of viewport `size` on its page; yields the browser and the Labelling (to ask the server what
    it would answer)."""
    store = LabelStore(tmp_path)
    labelling = label_app.Labelling(data, store, **options)
    url, server, thread = serve_in_thread(label_app.create_app(labelling))
    driver = browser(tmp_path)
    try:
        resize(driver, *size)
        driver.get(url)
        yield driver, labelling
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(10)
        store.close()


def labels(tmp_path: Path) -> list[dict]:
    return read_rows(tmp_path / "labels.jsonl")


def number(driver) -> str:
    """The item's number line, read in one script: the page may be putting the next item up meanwhile."""
    return driver.execute_script(
        "return document.getElementById('task').hidden ? null : document.getElementById('number').textContent"
    )


def progress(driver) -> str:
    return driver.execute_script("return document.getElementById('progress').textContent")


def active(driver) -> dict:
    """What has the focus: its id, its classes and its slot (on a completion)."""
    return driver.execute_script(
        "const a = document.activeElement; return {id: a.id, cls: a.className, slot: a.dataset.slot || null};"
    )


def completion(driver, text: str):
    from selenium.webdriver.common.by import By

    for li in driver.find_elements(By.CSS_SELECTOR, "#completions .completion"):
        if li.find_element(By.CSS_SELECTOR, ".text").get_attribute("textContent") == text:
            return li
    raise AssertionError(f"no completion {text!r} on the page")


def rank_button(driver, text: str, rank: int):
    from selenium.webdriver.common.by import By

    return completion(driver, text).find_element(By.XPATH, f".//button[normalize-space()='{rank}']")


def tap(driver, element) -> None:
    """A finger's tap (a touch pointer, not a mouse) on `element`."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    finger = PointerInput(interaction.POINTER_TOUCH, "finger")
    actions = ActionBuilder(driver, mouse=finger)
    actions.pointer_action.move_to(element).pointer_down().pointer_up()
    actions.perform()


def ranks_by_text(row: dict) -> dict[str, int]:
    return dict(zip(row["completions"], row["ranks"], strict=True))


def test_enter_on_a_focused_button_presses_that_button_and_item_keys_stay_on_the_item(tmp_path):
    from selenium.webdriver.common.keys import Keys

    with labelling_page(tmp_path, items_data([["a", "b", "c"]] * 2)) as (driver, _):
        log_in(driver, "ann")
        wait_for(driver, lambda d: number(d) == "1 of 2")
        assert "completion" in active(driver)["cls"]  # a new item: the focus on its first completion
        # Tab leaves the list in one step (one tab stop, its rank buttons are not stops): Submit, then Skip.
        press(driver, Keys.TAB)
        assert active(driver)["id"] == "submit"
        press(driver, Keys.TAB)
        assert active(driver)["id"] == "skip"
        # On a button the item's keys do nothing: no rank given, no highlight moved, nothing submitted.
        highlighted = "return document.querySelector('#completions .current').dataset.slot"
        assert driver.execute_script(highlighted) == "A"
        press(driver, "1" + Keys.ARROW_DOWN)
        assert not driver.execute_script("return document.querySelector('#completions .ranked')")
        assert driver.execute_script(highlighted) == "A"
        press(driver, Keys.ENTER)
        wait_for(driver, lambda d: number(d) == "2 of 2")
        (row,) = labels(tmp_path)
        assert (row["item"], row["status"], row["ranks"]) == ("item0", "skipped", None)
        # Space on a focused button presses it too.
        press(driver, Keys.TAB + Keys.TAB + Keys.TAB)  # Submit, Skip, Flag unsafe
        assert active(driver)["id"] == "flag-unsafe"
        press(driver, Keys.SPACE)
        wait_for(driver, lambda d: len(labels(tmp_path)) == 2)
        assert (labels(tmp_path)[1]["status"], labels(tmp_path)[1]["flag"]) == ("flagged", "unsafe")


def test_rank_buttons_rank_by_touch_and_mouse_and_tie(tmp_path):
    from selenium.webdriver.common.by import By

    with labelling_page(tmp_path, items_data([["a", "b", "c"]]), PHONE) as (driver, _):
        log_in(driver, "ann")
        wait_for(driver, lambda d: number(d) == "1 of 1")
        tap(driver, rank_button(driver, "c", 2))
        rank_button(driver, "a", 1).click()
        # The list keeps itself sorted by rank, unranked last, and the focus follows the ranked completion.
        assert shown_item(driver)[2] == ["a", "c", "b"]
        assert active(driver)["slot"] == completion(driver, "a").get_attribute("data-slot")
        rank_button(driver, "b", 1).click()
        rank_button(driver, "b", 1).click()  # the active number again: cleared
        assert completion(driver, "b").get_attribute("aria-label").endswith(", not ranked")
        tap(driver, rank_button(driver, "b", 1))  # a tie: two completions ranked 1
        a_slot = completion(driver, "a").get_attribute("data-slot")
        assert f"rank 1, tied with {a_slot}" in completion(driver, "b").get_attribute("aria-label")
        assert rank_button(driver, "b", 1).get_attribute("aria-pressed") == "true"
        assert shown_item(driver)[2] in (["a", "b", "c"], ["b", "a", "c"])
        driver.find_element(By.ID, "submit").click()
        wait_for(driver, lambda d: d.find_element(By.ID, "finished").is_displayed())
    (row,) = labels(tmp_path)
    assert row["status"] == "ranked" and ranks_by_text(row) == {"a": 1, "b": 1, "c": 2}


# What a mouse's drag and drop sends (Selenium's own drag does not make HTML5 drag events in Chromium).
DRAG = """
const [from, onto] = arguments, data = new DataTransfer();
from.dispatchEvent(new DragEvent("dragstart", {bubbles: true, dataTransfer: data}));
onto.dispatchEvent(new DragEvent("drop", {bubbles: true, cancelable: true, dataTransfer: data}));
"""


def test_dragging_orders_the_ranks_and_keeps_ties(tmp_path):
    from selenium.webdriver.common.by import By

    with labelling_page(tmp_path, items_data([["a", "b", "c", "d"]])) as (driver, _):
        log_in(driver, "ann")
        wait_for(driver, lambda d: number(d) == "1 of 1")
        for text, rank in (("a", 1), ("b", 1), ("c", 2), ("d", 3)):
            rank_button(driver, text, rank).click()
        assert shown_item(driver)[2][2:] == ["c", "d"]
        top = completion(driver, shown_item(driver)[2][0])  # a or b, tied at the top
        driver.execute_script(DRAG, completion(driver, "d"), top)
        top = shown_item(driver)[2][0]
        assert top == "d" and active(driver)["slot"] == completion(driver, "d").get_attribute("data-slot")
        # c dropped onto b would land between a and b, which are tied: it goes below them instead.
        tied_lower = shown_item(driver)[2][2]
        driver.execute_script(DRAG, completion(driver, "c"), completion(driver, tied_lower))
        assert shown_item(driver)[2][0] == "d" and shown_item(driver)[2][3] == "c"
        driver.find_element(By.ID, "submit").click()
        wait_for(driver, lambda d: d.find_element(By.ID, "finished").is_displayed())
    (row,) = labels(tmp_path)
    assert ranks_by_text(row) == {"d": 1, "a": 2, "b": 2, "c": 3}


def test_the_highlighted_completion_is_the_focused_element_and_in_view_in_a_long_list(tmp_path):
    from selenium.webdriver.common.keys import Keys

    long = [f"completion {i}\n" + "a line of text\n" * 12 for i in range(8)]
    with labelling_page(tmp_path, items_data([long]), (600, 420)) as (driver, _):
        log_in(driver, "ann")
        wait_for(driver, lambda d: number(d) == "1 of 1")
        shown = shown_item(driver)[2]
        for n in range(1, 8):
            press(driver, Keys.ARROW_DOWN)
            focused = driver.execute_script(
                "const a = document.activeElement, r = a.getBoundingClientRect();"
                "return {current: a.classList.contains('current'), top: r.top, bottom: r.bottom,"
                " text: a.querySelector('.text').textContent, height: innerHeight};"
            )
            assert focused["current"] and focused["text"] == shown[n]
            # Inside the viewport: all of it where it fits, else its top edge (block "nearest").
            assert 0 <= focused["top"] < focused["height"] and focused["bottom"] > 0, focused
        assert driver.execute_script("return scrollY") > 0  # it did scroll to get there
        # Outside the list the arrow keys are the page's again: on a button they scroll the page.
        press(driver, Keys.TAB)
        assert active(driver)["id"] == "submit"
        driver.execute_script("scrollTo(0, 0)")
        press(driver, Keys.ARROW_DOWN)
        wait_for(driver, lambda d: d.execute_script("return scrollY") > 0)
        assert (
            driver.execute_script("return document.querySelector('.current .text').textContent") == shown[7]
        )


def test_a_skipped_item_comes_back_and_the_end_page_shows_the_counts_and_the_next_commands(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with labelling_page(tmp_path, items_data([["a", "b", "c"]] * 2)) as (driver, labelling):
        log_in(driver, "ann")
        wait_for(driver, lambda d: number(d) == "1 of 2")
        assert not driver.find_element(By.ID, "second-pass").is_displayed()
        press(driver, "s")
        wait_for(driver, lambda d: number(d) == "2 of 2")
        press(driver, "123" + Keys.ENTER)
        # Every item has an answer: the skipped one comes back before the end page, and the page says so.
        wait_for(driver, lambda d: number(d) == "1 of 2")
        assert driver.find_element(By.ID, "second-pass").text.startswith("Second look at 1 skipped item:")
        press(driver, "213" + Keys.ENTER)
        wait_for(driver, lambda d: d.find_element(By.ID, "finished").is_displayed())
        end = labelling.next_for("ann")["end"]
        assert progress(driver) == "2 / 2 done"
        assert driver.find_element(By.ID, "end-counts").text == (
            f"2 ranked, 0 skipped, 0 flagged: {end['pairs']} preference pairs for training."
        )
        assert end["pairs"] == 6
        # Each next command as text of its own, to copy as it stands.
        commands = driver.find_elements(By.CSS_SELECTOR, "#end-next pre > code")
        assert [c.get_attribute("textContent") for c in commands] == end["next"]
        assert end["next"][0].startswith("hftune label stats ")
        # Back at the name form, the names in the file are offered.
        driver.find_element(By.ID, "change-name").click()
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#known-names option"))
        offered = driver.find_elements(By.CSS_SELECTOR, "#known-names option")
        assert [o.get_attribute("value") for o in offered] == ["ann"]
        assert driver.find_element(By.ID, "name").get_attribute("list") == "known-names"
    assert [r["status"] for r in labels(tmp_path)] == ["skipped", "ranked", "ranked"]


def test_undo_shows_the_item_again_and_only_the_new_ranking_trains(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with labelling_page(tmp_path, items_data([["a", "b", "c"]] * 2)) as (driver, _):
        log_in(driver, "  Ann   Lee ")
        wait_for(driver, lambda d: number(d) == "1 of 2")
        assert driver.find_element(By.ID, "who-name").text == "Ann Lee"  # the name as the server keeps it
        assert not driver.find_element(By.ID, "undo").is_enabled()  # nothing to undo yet
        first = shown_item(driver)[2]
        press(driver, "123" + Keys.ENTER)
        wait_for(driver, lambda d: number(d) == "2 of 2")
        assert driver.find_element(By.ID, "undo").is_enabled()
        press(driver, "z")
        wait_for(driver, lambda d: number(d) == "1 of 2")
        assert "prompt 1 is back" in driver.find_element(By.ID, "message").text
        assert progress(driver) == "0 / 2 done"
        press(driver, "321" + Keys.ENTER)
        wait_for(driver, lambda d: number(d) == "2 of 2")
    rows = labels(tmp_path)
    # The file keeps the whole story: the first ranking, its retraction, the new ranking.
    assert [r["status"] for r in rows] == ["ranked", "retracted", "ranked"]
    assert all(r["item"] == "item0" and r["labeller"] == "Ann Lee" for r in rows)
    old, new = ranks_by_text(rows[0]), ranks_by_text(rows[2])
    assert old == dict(zip(first, [1, 2, 3], strict=True)) and new == dict(zip(first, [3, 2, 1], strict=True))
    # The derived training data (store.write_training's train.jsonl) has the new ranking only.
    (trained,) = [json.loads(line) for line in (tmp_path / TRAIN_FILE).read_text().splitlines()]
    assert ranks_by_text(trained) == new


def axe_problems(driver) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now, one line each."""
    from axe_selenium_python import Axe

    axe = Axe(driver)
    axe.inject()
    found = axe.run()["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_axe_finds_no_serious_problem_on_the_item_page_or_the_end_page(tmp_path, size):
    pytest.importorskip("axe_selenium_python")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    data = items_data([["a short answer", "an answer that ran out of tokens and", "<b>bold</b> " * 40]])
    data["items"][0]["ended"] = [True, False, True]
    options = {
        "guidelines": "Prefer the correct answer.\n\nThen the shorter one.",
        "hints": {"item0": "Is the arithmetic right?"},
    }
    with labelling_page(tmp_path, data, size, **options) as (driver, _):
        log_in(driver, "ann")
        wait_for(driver, lambda d: number(d) == "1 of 1")
        # Everything an item page can show is on: guidelines, the hint, a truncated completion, a tie.
        assert driver.find_element(By.ID, "guidelines-text").text.startswith("Prefer the correct answer.")
        assert driver.find_element(By.ID, "hint-text").text == "Is the arithmetic right?"
        cut = completion(driver, "an answer that ran out of tokens and")
        assert "cut off at the token limit" in cut.text and cut.get_attribute("aria-label").endswith(
            ", cut off at the token limit"
        )
        press(driver, "11")
        assert axe_problems(driver) == []
        press(driver, "2" + Keys.ENTER)
        wait_for(driver, lambda d: d.find_element(By.ID, "finished").is_displayed())
        assert axe_problems(driver) == []
        assert driver.execute_script("return document.documentElement.scrollWidth <= innerWidth")
