"""`hftune label`: sampling a model's completions, the ranking page (driven in headless Chromium), the
crash-safe labels file, resuming, the safety of the page and the server, stats, and training a reward model
on what was labelled."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from report_page import chrome, ready_for_browser

from hftune.errors import UserError
from hftune.label import app as label_app
from hftune.label import config as label_config
from hftune.label import stats as label_stats
from hftune.label.store import LabelStore, read_rows

REPO = Path(__file__).resolve().parent.parent
needs_browser = ready_for_browser


# --- fast checks, no model -----------------------------------------------------------------------------


def items_data(completions: list[list[str]]) -> dict:
    return {
        "format": "hftune-label-items/1",
        "sampling": {"model": "some/model"},
        "order_salt": "salt",
        "items": [
            {"id": f"item{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}], "completions": c}
            for i, c in enumerate(completions)
        ],
    }


def page_client(app, **kwargs):
    """A TestClient that writes as the real page does: with the write token written into the page it gets."""
    from starlette.testclient import TestClient

    client = TestClient(app, **kwargs)
    found = re.search(r'<meta name="hftune-write-token" content="([^"]+)">', client.get("/").text)
    assert found, "the page carries no write token"
    client.headers["X-Hftune-Token"] = found.group(1)
    return client


def test_each_labeller_sees_a_stable_shuffle_that_is_never_the_sampling_order():
    for k in (2, 3, 5):
        orders = {tuple(label_app.shown_order("salt", f"item{i}", "ann", k)) for i in range(40)}
        assert tuple(range(k)) not in orders
        assert all(sorted(o) == list(range(k)) for o in orders)
    assert label_app.shown_order("s", "x", "ann", 4) == label_app.shown_order("s", "x", "ann", 4)


def test_a_ranking_is_saved_in_sampling_order_once_and_a_torn_last_line_is_dropped(tmp_path):
    data = items_data([["first", "second", "third"], ["a", "b", "c"]])
    store = LabelStore(tmp_path)
    client = page_client(label_app.create_app(label_app.Labelling(data, store)))
    page = client.get("/api/next", params={"labeller": "ann"}).json()
    assert page["done"] == 0 and page["total"] == 2 and page["item"]["number"] == 1
    shown = [c["text"] for c in page["item"]["completions"]]
    assert shown != ["first", "second", "third"] and sorted(shown) == ["first", "second", "third"]
    ranks_shown = [3, 1, 2]
    body = {"labeller": "ann", "item": "item0", "action": "rank", "ranks": ranks_shown}
    after = client.post("/api/submit", json=body).json()
    assert after["saved"] and after["done"] == 1 and after["item"]["id"] == "item1"
    # A resent submit is not a second row, and is on disk all the same.
    assert client.post("/api/submit", json=body).json()["saved"] is True
    (row,) = read_rows(tmp_path / "labels.jsonl")
    expected = {text: rank for text, rank in zip(shown, ranks_shown, strict=True)}
    assert {t: r for t, r in zip(row["completions"], row["ranks"], strict=True)} == expected
    assert row["status"] == "ranked" and row["labeller"] == "ann" and row["model"] == "some/model"
    # Refused, and nothing written: a bad rank, all tied, an unknown flag, an unknown item.
    for bad in (
        {**body, "item": "item1", "ranks": [1, 2, 4]},
        {**body, "item": "item1", "ranks": [2, 2, 2]},
        {"labeller": "ann", "item": "item1", "action": "flag", "flag": "boring"},
        {"labeller": "ann", "item": "nope", "action": "skip"},
        {"labeller": "", "item": "item1", "action": "skip"},
    ):
        assert client.post("/api/submit", json=bad).status_code == 400
    client.post("/api/submit", json={"labeller": "ann", "item": "item1", "action": "flag", "flag": "unsafe"})
    store.close()
    with open(tmp_path / "labels.jsonl", "a") as f:
        f.write('{"prompt": "half a li')  # a crash in the middle of a write
    reopened = LabelStore(tmp_path)
    assert [r["status"] for r in reopened.rows] == ["ranked", "flagged"]
    assert (tmp_path / "labels.jsonl").read_text().endswith("}\n")
    assert reopened.done("ann") == {"item0", "item1"} and reopened.done("bob") == set()
    reopened.close()


def test_beyond_loopback_the_server_needs_the_flag_and_then_a_token(tmp_path):
    from starlette.testclient import TestClient

    with pytest.raises(UserError) as err:
        label_config.parse(
            None, ["--model_name_or_path", "m", "--data_recipe", "tiny_alpaca", "--host", "0.0.0.0"]
        )
    assert "`host`" in str(err.value) and "allow_remote" in str(err.value)
    cfg = label_config.parse(
        None,
        [
            "--model_name_or_path",
            "m",
            "--data_recipe",
            "tiny_alpaca",
            "--host",
            "0.0.0.0",
            "--allow_remote",
            "true",
        ],
    )
    assert cfg.hftune.allow_remote
    for k in ("1", "27"):
        with pytest.raises(UserError, match="num_completions"):
            label_config.parse(
                None, ["--model_name_or_path", "m", "--data_recipe", "x", "--num_completions", k]
            )
    store = LabelStore(tmp_path)
    app = label_app.create_app(label_app.Labelling(items_data([["x", "y"]]), store), token="s3cret-token")
    client = TestClient(app, base_url="http://192.0.2.1:7860")
    assert client.get("/").status_code == 401
    assert client.get("/api/next", params={"labeller": "ann"}).status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    handshake = client.get("/?token=s3cret-token", follow_redirects=False)
    assert handshake.status_code == 303 and "token" not in handshake.headers["location"]
    page = client.get("/")  # the cookie from the handshake now
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    store.close()


def test_on_loopback_only_loopback_host_names_are_answered(tmp_path):
    from starlette.testclient import TestClient

    store = LabelStore(tmp_path)
    app = label_app.create_app(
        label_app.Labelling(items_data([["x", "y"]]), store), allowed_hosts=["127.0.0.1"]
    )
    assert TestClient(app, base_url="http://127.0.0.1:7860").get("/").status_code == 200
    # A page elsewhere that rebinds its own name to 127.0.0.1 still sends its name: refused.
    assert TestClient(app, base_url="http://evil.example:7860").get("/").status_code == 400
    store.close()


def test_kendall_tau_b():
    assert label_stats.kendall_tau_b([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert label_stats.kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # With ties, tau-b: (C - D) / sqrt((C + D + T_a)(C + D + T_b)); here C=2, D=0, T_a=0, T_b=1.
    assert label_stats.kendall_tau_b([1, 2, 3], [1, 2, 2]) == pytest.approx(2 / (2 * 3) ** 0.5)
    assert label_stats.kendall_tau_b([1, 1, 1], [1, 2, 3]) is None


def test_stats_count_skips_flags_and_agreement(tmp_path, capsys):
    data = items_data([["a", "b", "c"]] * 4)
    store = LabelStore(tmp_path)
    labelling = label_app.Labelling(data, store)
    client = page_client(label_app.create_app(labelling))

    def rank(labeller: str, item: str, by_text: dict[str, int]) -> None:
        page = labelling.next_for(labeller)
        assert page["item"]["id"] == item
        ranks = [by_text[c["text"]] for c in page["item"]["completions"]]
        assert client.post(
            "/api/submit", json={"labeller": labeller, "item": item, "action": "rank", "ranks": ranks}
        ).json()["saved"]

    rank("ann", "item0", {"a": 1, "b": 2, "c": 3})
    rank("bob", "item0", {"a": 1, "b": 2, "c": 3})  # the same order: tau 1
    rank("ann", "item1", {"a": 1, "b": 2, "c": 3})
    rank("bob", "item1", {"a": 3, "b": 2, "c": 1})  # reversed: tau -1
    client.post("/api/submit", json={"labeller": "ann", "item": "item2", "action": "skip"})
    client.post("/api/submit", json={"labeller": "ann", "item": "item3", "action": "flag", "flag": "broken"})
    store.close()
    (tmp_path / "items.json").write_text(json.dumps(data))
    got = label_stats.compute(tmp_path)
    assert (got["items"], got["submissions"], got["ranked"], got["skipped"], got["flagged"]) == (
        4,
        6,
        4,
        1,
        1,
    )
    assert got["flags"] == {"broken": 1} and got["pairs"] == 12
    assert got["labellers"]["ann"] == {"ranked": 2, "skipped": 1, "flagged": 1}
    assert got["shared_items"] == 2 and got["agreement_kendall_tau"]["mean"] == pytest.approx(0.0)
    text = label_stats.render(got)
    assert "items: 4; answers now: 4 ranked, 1 skipped, 1 flagged (1 broken); 6 rows in the file" in text
    assert "(Kendall's tau-b on 2 shared items): 0.000 [-1.000, 1.000]" in text
    from hftune.cli import main

    assert main(["label", "stats", str(tmp_path)]) == 0 and capsys.readouterr().out.strip() == text
    assert main(["label", "stats", str(tmp_path / "nowhere")]) == 2


def test_without_the_web_extra_label_says_how_to_install_it_before_sampling(tmp_path, monkeypatch):
    import importlib.util

    from hftune.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    out = tmp_path / "labels"
    rc = main(
        ["label", "--model_name_or_path", "m", "--data_recipe", "tiny_alpaca", "--output_dir", str(out)]
    )
    assert rc == 2 and not out.exists()


def test_a_folder_label_did_not_write_is_refused_and_left_alone(tmp_path):
    from hftune.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    rc = main(
        ["label", "--model_name_or_path", "m", "--data_recipe", "tiny_alpaca", "--output_dir", str(mine)]
    )
    assert rc == 2 and (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1


# --- the real command on a tiny model, in a browser ----------------------------------------------------


def start_label(config: Path) -> tuple[subprocess.Popen, str, list[str]]:
    """`hftune label --config` as a user runs it; returns the process, the page's address and its output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hftune", "label", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    deadline = time.time() + 240
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("label: open "):
            return proc, line.split()[2], lines
    proc.kill()
    raise AssertionError("hftune label did not start:\n" + "".join(lines))


def browser(tmp_path: Path):
    return chrome(tmp_path / "chromium-profile")


def wait_for(driver, condition, timeout: float = 30):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout).until(condition)
    except TimeoutException:
        body = driver.execute_script("return document.body.innerText")
        raise AssertionError(f"the page never got there; it shows:\n{body}") from None


def shown_item(driver) -> tuple[str, str, list[str]]:
    """The item on the page: its number line, its id and its completions' texts in the order shown."""
    from selenium.webdriver.common.by import By

    task = driver.find_element(By.ID, "task")
    texts = [
        e.get_attribute("textContent") for e in driver.find_elements(By.CSS_SELECTOR, "#completions .text")
    ]
    return driver.find_element(By.ID, "number").text, task.get_attribute("data-item"), texts


def log_in(driver, name: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    # The form is shown by the page's script once it runs: typing before that would be lost.
    wait_for(driver, lambda d: d.find_element(By.ID, "login").is_displayed())
    driver.find_element(By.ID, "name").send_keys(name, Keys.ENTER)


def press(driver, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()


@pytest.fixture(scope="module")
def label_config_file(tmp_path_factory, tiny_llama) -> Path:
    root = tmp_path_factory.mktemp("label")
    config = root / "label.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_llama}\n"
        "data_recipe: tiny_alpaca\n"
        "num_completions: 3\n"
        "max_new_tokens: 12\n"
        "max_prompts: 6\n"
        f"output_dir: {root / 'labels'}\n"
        "port: 0\n"
    )
    return config


@needs_browser
@pytest.mark.e2e
@pytest.mark.slow(16)
def test_a_person_ranks_with_the_keyboard_reloads_and_the_server_resumes_after_a_kill(
    label_config_file, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out = label_config_file.parent / "labels"
    proc, url, _ = start_label(label_config_file)
    items_before = (out / "items.json").read_bytes()
    driver = browser(tmp_path)
    submitted = []
    try:
        driver.get(url)
        log_in(driver, "ann")
        for n, keys in enumerate(("213", "321", "132"), 1):
            if n == 3:
                driver.refresh()  # mid-way: the page comes back at the same place, the name kept
            wait_for(driver, lambda d, n=n: shown_item(d)[0] == f"{n} of 6")
            _, item, texts = shown_item(driver)
            press(driver, keys + Keys.ENTER)
            submitted.append((item, texts, [int(k) for k in keys]))
            wait_for(driver, lambda d, n=n: d.find_element(By.ID, "progress").text == f"{n} / 6 done")
        # Killed between submissions (no chance to flush anything more): every ranking is on disk.
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        rows = read_rows(out / "labels.jsonl")
        assert len(rows) == 3
        for row, (item, texts, ranks) in zip(rows, submitted, strict=True):
            assert row["item"] == item and row["labeller"] == "ann" and row["status"] == "ranked"
            assert [row["completions"][i] for i in row["shown"]] == texts  # the page showed exactly these
            assert [row["ranks"][i] for i in row["shown"]] == ranks  # and they got the keys pressed
            assert row["shown"] != [0, 1, 2]
        # Restarted: no resampling (the same items file), and the page resumes at prompt 4.
        proc, url2, lines = start_label(label_config_file)
        assert any("resuming" in line or "3 submissions so far" in line for line in lines)
        assert (out / "items.json").read_bytes() == items_before
        driver.get(url2)
        log_in(
            driver, "ann"
        )  # the restarted server has another port: another origin, so the name is asked again
        wait_for(driver, lambda d: shown_item(d)[0] == "4 of 6")
        assert driver.find_element(By.ID, "progress").text == "3 / 6 done"
        items = json.loads(items_before)["items"]
        assert shown_item(driver)[1] == items[3]["id"]
        # Held out means held out: no labelled prompt is one the recipe holds out.
        from hftune.data import prepare_dataset

        held_out = set(prepare_dataset("tiny_alpaca", eval_fraction=0.1, seed=42).eval_keys)
        assert not held_out & {item["id"] for item in items}
    finally:
        driver.quit()
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


@needs_browser
@pytest.mark.slow
def test_reward_trains_on_the_labelled_file(label_config_file, tmp_path, tiny_llama):
    from hftune.stages import reward

    out = label_config_file.parent / "labels"
    if not (out / "labels.jsonl").is_file():
        pytest.skip("the browser test did not label anything")
    cfg = reward.parse(
        str(REPO / "configs/tiny/reward.yaml"),
        [
            "--model_name_or_path", tiny_llama,
            "--data_recipe", str(out / "recipe.yaml"),
            "--output_dir", str(tmp_path / "rm"),
            "--eval_fraction", "0",
            "--max_steps", "3",
            "--per_device_train_batch_size", "3",
        ],
    )  # fmt: skip
    reward.run(cfg)
    manifest = json.loads((tmp_path / "rm" / "manifest.json").read_text())
    assert manifest["data"]["n_source_rows"] == 3 and manifest["data"]["n_train"] == 9  # 3 rankings x 3 pairs
    stats = label_stats.compute(out)
    assert stats["ranked"] == 3 and stats["pairs"] == 9


def serve_in_thread(app) -> tuple[str, object, threading.Thread]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/", server, thread


@needs_browser
def test_model_text_with_markup_is_shown_as_text_and_never_runs(tmp_path):
    from selenium.webdriver.common.by import By

    hostile = [
        "<script>window.__pwned = 1</script>",
        '<img src=x onerror="window.__pwned = 2">',
        "```python\nprint('code')\n```\n**bold**",
    ]
    data = items_data([hostile])
    data["items"][0]["prompt"] = [{"role": "user", "content": "<b>Which</b> is <i>best</i>?"}]
    store = LabelStore(tmp_path)
    url, server, thread = serve_in_thread(label_app.create_app(label_app.Labelling(data, store)))
    driver = browser(tmp_path)
    try:
        driver.get(url)
        log_in(driver, "ann")
        wait_for(driver, lambda d: shown_item(d)[0] == "1 of 1")
        assert sorted(shown_item(driver)[2]) == sorted(hostile)
        assert driver.find_element(By.CSS_SELECTOR, "#prompt .content").text == "<b>Which</b> is <i>best</i>?"
        assert driver.execute_script("return window.__pwned === undefined")
        assert not driver.find_elements(By.CSS_SELECTOR, "#task img, #task script, #prompt b")
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(10)
        store.close()
