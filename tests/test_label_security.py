"""The label server takes writes only from the page it served: not from a page on another origin (a
`no-cors` fetch, a form, a CORS request with the page's header), not without this run's write token, not
as anything but JSON; a forged answer can never stand in for a labeller's own; and malformed requests get a
400 with a one-line JSON error, never a 500 with a traceback in the log.

The requests below are the ones a browser sends for each attack (a `no-cors` fetch or a form: `text/plain`
or a form encoding, no custom header, `Origin` set to the attacker's page); the last test makes them in
headless Chromium from a page served on another port."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_label import (
    browser,
    items_data,
    log_in,
    needs_browser,
    page_client,
    press,
    serve_in_thread,
    shown_item,
    wait_for,
)

from hftune.label import app as label_app
from hftune.label.store import LabelStore, read_rows

ATTACKER = "http://localhost:9999"
FORGED_SKIP = {"labeller": "ann", "item": "item0", "action": "skip"}


def label_server(tmp_path, **kwargs):
    store = LabelStore(tmp_path)
    app = label_app.create_app(label_app.Labelling(items_data([["a", "b", "c"]] * 2), store), **kwargs)
    return store, app


def ranks_by_text(client, labeller: str, by_text: dict[str, int]) -> dict:
    page = client.get("/api/next", params={"labeller": labeller}).json()["item"]
    ranks = [by_text[c["text"]] for c in page["completions"]]
    return {"labeller": labeller, "item": page["id"], "action": "rank", "ranks": ranks}


def assert_refused(response, status: int) -> None:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and "\n" not in response.json()["error"]


def test_a_write_from_anywhere_but_this_runs_page_is_refused_and_changes_nothing(tmp_path):
    store, app = label_server(tmp_path)
    page = page_client(app)
    assert page.post("/api/submit", json=ranks_by_text(page, "bob", {"a": 1, "b": 2, "c": 3})).json()["saved"]
    labels = tmp_path / "labels.jsonl"
    before = labels.read_bytes()
    token = page.headers["X-Hftune-Token"]
    forged = json.dumps(FORGED_SKIP)
    form = "labeller=ann&item=item0&action=skip"
    attempts = [
        # fetch(server + "/api/submit", {method: "POST", mode: "no-cors", body}) from another localhost port
        ({"Origin": ATTACKER, "Content-Type": "text/plain;charset=UTF-8"}, forged, 403),
        # <form method=post enctype=text/plain> and a plain form, from there
        ({"Origin": ATTACKER, "Content-Type": "text/plain"}, forged[:-1] + ', "pad": "="}\r\n', 403),
        ({"Origin": ATTACKER, "Content-Type": "application/x-www-form-urlencoded"}, form, 403),
        # a sandboxed frame or a file:// page
        ({"Origin": "null", "Content-Type": "application/json", "X-Hftune-Token": token}, forged, 403),
        # even with the token, another origin is refused; and without a browser (no Origin): no token, a
        # wrong one, a right one on a body that is not declared JSON
        ({"Origin": ATTACKER, "Content-Type": "application/json", "X-Hftune-Token": token}, forged, 403),
        ({"Content-Type": "application/json"}, forged, 403),
        ({"Content-Type": "application/json", "X-Hftune-Token": token[:-1]}, forged, 403),
        ({"Content-Type": "text/plain", "X-Hftune-Token": token}, forged, 415),
    ]
    fresh = bare_client(app)
    for headers, body, status in attempts:
        assert_refused(fresh.post("/api/submit", content=body, headers=headers), status)
    # The preflight a CORS request with the page's header needs is never granted.
    preflight = fresh.options(
        "/api/submit",
        headers={"Origin": ATTACKER, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    assert labels.read_bytes() == before
    # The real page still writes, also when its browser names its own origin.
    body = ranks_by_text(page, "ann", {"a": 3, "b": 1, "c": 2})
    saved = page.post("/api/submit", json=body, headers={"Origin": "http://testserver"})
    assert saved.status_code == 200 and saved.json()["saved"]
    assert [(r["labeller"], r["status"]) for r in read_rows(labels)] == [("bob", "ranked"), ("ann", "ranked")]
    store.close()


def bare_client(app):
    """A client that never got the page: what any other program or page can send."""
    from starlette.testclient import TestClient

    return TestClient(app)


def test_a_forged_skip_cannot_displace_a_real_ranking_and_a_second_answer_is_not_silently_dropped(tmp_path):
    # The probe: a forged "skip" for ann landed first, and "first answer per labeller and item wins" then
    # dropped her real ranking (saved: false) while the page moved on. Now the forgery never lands, ...
    store, app = label_server(tmp_path)
    fresh = bare_client(app)
    forged = fresh.post(
        "/api/submit",
        content=json.dumps(FORGED_SKIP),
        headers={"Origin": ATTACKER, "Content-Type": "text/plain"},
    )
    assert forged.status_code == 403
    page = page_client(app)
    real = ranks_by_text(page, "ann", {"a": 1, "b": 2, "c": 3})
    after = page.post("/api/submit", json=real).json()
    assert after["saved"] is True and after["item"]["id"] == "item1"
    # ... and a second, different answer of ann's (another tab) is refused with the reason, never "moved on".
    again = page.post("/api/submit", json={**FORGED_SKIP, "item": real["item"]})
    assert again.status_code == 409 and again.json()["saved"] is False
    assert "already answered" in again.json()["error"] and "ranked" in again.json()["error"]
    (row,) = read_rows(tmp_path / "labels.jsonl")
    assert row["status"] == "ranked" and row["labeller"] == "ann"
    store.close()


def test_the_page_moves_on_only_when_the_server_says_saved():
    # What the page does with an answer: a 409 (or any `saved` but true) keeps the item on screen.
    script = (label_app.STATIC / "label.js").read_text()
    assert 'if (page.saved !== true) throw new Error(page.error || "not saved");' in script
    assert '"X-Hftune-Token": WRITE_TOKEN' in script


@pytest.mark.parametrize(
    ("headers", "body", "mentions"),
    [
        ([(b"x-hftune-token", "jeton-é".encode())], b"{}", "write token"),
        ([], b'{"labeller": "ann", "item": ["item0"], "action": "skip"}', "unknown item"),
        ([], b'{"labeller": "ann", "item": {"id": "item0"}, "action": "skip"}', "unknown item"),
        ([], b'{"labeller": ["ann"], "item": "item0", "action": "skip"}', "labeller"),
        ([], b"[" * 30000 + b"]" * 30000, "nested too deeply"),
        ([], b'{"labeller": "ann", "pad": "' + b"x" * 70000 + b'"}', "over 64 KiB"),
        ([], b'{"labeller": "\xff\xfe", "item": "item0", "action": "skip"}', "not UTF-8"),
        ([], b'{"labeller": "ann", "item": "item0",', "not JSON"),
        ([], b'["labeller", "ann"]', "JSON object"),
    ],
    ids=[
        "non-ascii-token",
        "item-list",
        "item-dict",
        "labeller-list",
        "deep",
        "huge",
        "not-utf8",
        "truncated",
        "array",
    ],
)
def test_a_malformed_write_gets_a_400_and_logs_no_exception(tmp_path, caplog, headers, body, mentions):
    store, app = label_server(tmp_path)
    page = page_client(app)  # raises, rather than answering 500, on any exception in the app
    labels = tmp_path / "labels.jsonl"
    with caplog.at_level(logging.WARNING):
        response = page.post(
            "/api/submit", content=body, headers=[(b"content-type", b"application/json"), *headers]
        )
    assert_refused(response, 400)
    assert mentions in response.json()["error"]
    assert not caplog.records and labels.read_bytes() == b""
    store.close()


def test_a_malformed_access_token_gets_a_400_and_logs_no_exception(tmp_path, caplog):
    from starlette.testclient import TestClient

    store, app = label_server(tmp_path, token="s3cret-token")
    client = TestClient(app, base_url="http://192.0.2.1:7860")
    with caplog.at_level(logging.WARNING):
        for response in (
            client.get("/", params={"token": "jeton-é"}),
            client.get("/", headers=[(b"cookie", "hftune_label_token=jeton-é".encode())]),
            client.get(
                "/api/next", params={"labeller": "ann"}, headers=[(b"cookie", b"hftune_label_token=\xff")]
            ),
        ):
            assert_refused(response, 400)
            assert "malformed access token" in response.json()["error"]
    assert_refused(client.get("/", params={"token": "wrong"}), 401)
    assert not caplog.records
    store.close()


# --- in a browser: a page on another port attacks, then the real page labels ----------------------------


ATTACK_PAGE = """<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="form" method="post" enctype="text/plain" target="sink" action="{server}api/submit">
<input name='{{"labeller": "ann", "item": "item0", "action": "skip", "pad": "' value='"}}'></form>
<script>
const url = "{server}api/submit";
const body = JSON.stringify({{labeller: "ann", item: "item0", action: "skip"}});
const sent = [
  fetch(url, {{method: "POST", mode: "no-cors", body}}),
  fetch(url, {{method: "POST", mode: "no-cors", credentials: "include",
              body: JSON.stringify({{labeller: "mallory", item: "item1", action: "skip"}})}}),
  fetch(url, {{method: "POST", body,
              headers: {{"Content-Type": "application/json", "X-Hftune-Token": "guess"}}}}),
];
document.getElementById("form").submit();
Promise.allSettled(sent).then(() => {{ document.title = "attacked"; }});
</script></body></html>"""


def serve_attacker(html: str) -> tuple[str, ThreadingHTTPServer]:
    class Attacker(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(html.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/", server


def recorded(app, seen: list[tuple[str, str, int]]):
    """`app`, noting every request's method, path and answer: proof the attacks reached the server."""

    async def wrapper(scope, receive, send):
        async def noting(message):
            if message["type"] == "http.response.start":
                seen.append((scope["method"], scope["path"], message["status"]))
            await send(message)

        await app(scope, receive, noting if scope["type"] == "http" else send)

    return wrapper


@needs_browser
@pytest.mark.e2e
def test_a_page_on_another_origin_cannot_write_a_label_while_the_real_page_still_works(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    store, app = label_server(tmp_path)
    seen: list[tuple[str, str, int]] = []
    # The label server and the attacker on two ports of one address: one site, so the browser would send
    # the label server's SameSite cookies along; two origins, so the attacker cannot read its page.
    url, server, thread = serve_in_thread(recorded(app, seen))
    attacker_url, attacker = serve_attacker(ATTACK_PAGE.format(server=url))
    labels = tmp_path / "labels.jsonl"
    driver = browser(tmp_path)
    try:
        driver.get(attacker_url)
        posted = lambda: sum(method == "POST" for method, _, _ in seen)  # noqa: E731
        wait_for(driver, lambda d: d.title == "attacked" and posted() >= 3)  # the form's POST too
        writes = [status for method, path, status in seen if path == "/api/submit"]
        # Both no-cors fetches and the form reached the server and were refused; the CORS request with the
        # page's header never got past its preflight.
        assert writes.count(403) >= 3 and 200 not in writes, seen
        assert ("OPTIONS", "/api/submit", 403) in seen
        assert labels.read_bytes() == b""
        driver.get(url)
        log_in(driver, "ann")
        wait_for(driver, lambda d: shown_item(d)[0] == "1 of 2")
        _, item, texts = shown_item(driver)
        assert sorted(texts) == ["a", "b", "c"]
        press(driver, "213" + Keys.ENTER)
        wait_for(driver, lambda d: d.find_element(By.ID, "progress").text == "1 / 2 done")
        (row,) = read_rows(labels)
        assert row["labeller"] == "ann" and row["item"] == item == "item0" and row["status"] == "ranked"
        assert [row["ranks"][i] for i in row["shown"]] == [2, 1, 3]
    finally:
        driver.quit()
        attacker.shutdown()
        server.should_exit = True
        thread.join(10)
        store.close()
