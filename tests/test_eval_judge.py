"""The LLM judge against a scripted fake OpenAI-compatible server on 127.0.0.1 (no network, no model).

The fake judge knows the right answer to each question and prefers the response that contains it; it can
be made position-biased, flaky, slow, broken or incoherent, to pin down how judge_pairs scores, retries,
fails and, above all, never lets the API key out.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hftune.config import ConfigError
from hftune.errors import UserError
from hftune.evaluation import judge
from hftune.evaluation.judge import JudgeConfig, judge_pairs, judge_pairs_with_stats, parse_verdict

KEY = "sk-test-0123456789abcdefSECRET"
ENV = "HFTUNE_TEST_JUDGE_KEY"

QUESTIONS = ["What is 2 + 3?", "What is the capital of Peru?", "Reverse the word 'apple'."]
RIGHT = ["2 + 3 = 5.", "The capital of Peru is Lima.", "The reverse of 'apple' is 'elppa'."]
WRONG = ["2 + 3 = 6.", "The capital of Peru is Quito.", "The reverse of 'apple' is 'appel'."]
ANSWERS = dict(zip(QUESTIONS, ["= 5", "Lima", "'elppa'"], strict=True))

# How judge.USER_TEMPLATE lays out a request: question, the response shown first, the one shown second.
_SECTIONS = re.compile(
    r"\[Question\]\n(.*)\n\n\[Response A\]\n(.*)\n\n\[Response B\]\n(.*)\n\nWhich", re.DOTALL
)


class FakeJudge:
    """The server's script and what it saw. `mode`: correct | always_a | garbage | 500 | 401 | not_json |
    slow; `fail_first` 500s to answer before following `mode`."""

    def __init__(self):
        self.mode = "correct"
        self.fail_first = 0
        self.requests: list[dict] = []  # {"path", "headers", "body"}
        self.lock = threading.Lock()

    def reply(self, body: dict) -> tuple[int, bytes]:
        with self.lock:
            if self.fail_first:
                self.fail_first -= 1
                return 500, b'{"error": {"message": "overloaded"}}'
        if self.mode == "500":
            return 500, b'{"error": {"message": "overloaded"}}'
        if self.mode == "401":
            # Real servers echo (part of) a bad key; the judge must not pass it on.
            return 401, json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}}).encode()
        if self.mode == "not_json":
            return 200, b"<html>this is not the API</html>"
        if self.mode == "slow":
            time.sleep(0.5)
        question, first, second = _SECTIONS.search(body["messages"][1]["content"]).groups()
        if self.mode == "always_a":
            verdict = "A"
        elif self.mode == "garbage":
            verdict = "Both responses have merit; I cannot decide."
        else:
            answer = ANSWERS[question]
            verdict = "A" if answer in first else "B" if answer in second else "TIE"
        message = {"role": "assistant", "content": verdict}
        return 200, json.dumps({"choices": [{"index": 0, "message": message}]}).encode()


@pytest.fixture
def server():
    """(base_url, FakeJudge) for a server on a free port of 127.0.0.1, shut down after the test."""
    script = FakeJudge()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            body = json.loads(raw)
            with script.lock:
                script.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            status, payload = script.reply(body)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

        def log_message(self, *args):  # keep the test output quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(judge, "RETRY_BACKOFF_S", 0.0)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    return KEY


def _cfg(url: str, **kw) -> JudgeConfig:
    return JudgeConfig(base_url=url, model="judge-model", api_key_env=ENV, **kw)


def _a_b(correct_is_a: list[bool]) -> tuple[list[str], list[str]]:
    a = [RIGHT[i] if ok else WRONG[i] for i, ok in enumerate(correct_is_a)]
    b = [WRONG[i] if ok else RIGHT[i] for i, ok in enumerate(correct_is_a)]
    return a, b


def test_prefers_the_correct_response_asking_both_orders_with_the_key(server, key):
    url, script = server
    a, b = _a_b([True, False, True])
    scores, stats = judge_pairs_with_stats(_cfg(url, temperature=0.0), QUESTIONS, a, b, progress=False)
    assert scores == [1.0, 0.0, 1.0]
    assert stats == {
        "n_prompts": 3,
        "n_disagreements": 0,
        "n_unparseable": 0,
        "n_identical": 0,
        "n_requests": 6,
        "n_retries": 0,
    }
    assert len(script.requests) == 6
    for req in script.requests:
        assert req["path"] == "/v1/chat/completions"
        assert req["headers"]["Authorization"] == f"Bearer {KEY}"
        body = req["body"]
        assert body["model"] == "judge-model" and body["temperature"] == 0.0
        assert 0 < body["max_tokens"] <= 32
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
    shown = [_SECTIONS.search(r["body"]["messages"][1]["content"]).groups() for r in script.requests]
    for i, question in enumerate(QUESTIONS):
        asked = [(first, second) for q, first, second in shown if q == question]
        assert sorted(asked) == sorted([(a[i], b[i]), (b[i], a[i])])  # both orders, once each
    assert judge_pairs(_cfg(url), QUESTIONS, a, b, progress=False) == scores


def test_position_bias_becomes_ties(server, key):
    url, script = server
    script.mode = "always_a"
    a, b = _a_b([True, False, True])
    scores, stats = judge_pairs_with_stats(_cfg(url), QUESTIONS, a, b, progress=False)
    assert scores == [0.5, 0.5, 0.5]
    assert stats["n_disagreements"] == 3 and stats["n_unparseable"] == 0


def test_a_500_is_retried(server, key, caplog):
    url, script = server
    script.fail_first = 1
    a, b = _a_b([True, False, True])
    with caplog.at_level(logging.DEBUG):
        scores, stats = judge_pairs_with_stats(_cfg(url, max_retries=2), QUESTIONS, a, b, progress=False)
    assert scores == [1.0, 0.0, 1.0]
    assert stats["n_requests"] == 7 and stats["n_retries"] == 1
    assert "HTTP 500" in caplog.text and "retry 1/2" in caplog.text
    assert KEY not in caplog.text


def test_unparseable_replies_are_ties_and_counted(server, key):
    url, script = server
    script.mode = "garbage"
    a, b = _a_b([True, True])
    scores, stats = judge_pairs_with_stats(_cfg(url), QUESTIONS[:2], a, b, progress=False)
    assert scores == [0.5, 0.5]
    assert stats["n_unparseable"] == 4 and stats["n_disagreements"] == 0


def test_max_prompts_judges_only_the_first(server, key):
    url, script = server
    a, b = _a_b([True, False, True])
    scores, stats = judge_pairs_with_stats(_cfg(url, max_prompts=2), QUESTIONS, a, b, progress=False)
    assert scores[:2] == [1.0, 0.0] and math.isnan(scores[2])  # lines up with the prompts
    assert stats["n_prompts"] == 2 and len(script.requests) == 4


def test_identical_responses_are_ties_without_a_request(server, key):
    url, script = server
    scores, stats = judge_pairs_with_stats(_cfg(url), QUESTIONS[:2], RIGHT[:2], RIGHT[:2], progress=False)
    assert scores == [0.5, 0.5] and stats["n_identical"] == 2 and script.requests == []


def test_progress_bar(server, key, capsys):
    url, _ = server
    a, b = _a_b([True])
    judge_pairs(_cfg(url), QUESTIONS[:1], a, b, progress=True)
    assert "judge" in capsys.readouterr().err


def test_lengths_must_match():
    with pytest.raises(ValueError, match="differ in length"):
        judge_pairs(_cfg("http://127.0.0.1:1/v1"), QUESTIONS, RIGHT, WRONG[:2], progress=False)


# --- failures: a readable UserError with the URL, never the key --------------------------------------


def _fails(cfg, capsys, caplog, n=1) -> str:
    a, b = _a_b([True] * n)
    with caplog.at_level(logging.DEBUG), pytest.raises(UserError) as err:
        judge_pairs(cfg, QUESTIONS[:n], a, b, progress=True)
    text = str(err.value)
    out = capsys.readouterr()
    for where in (text, repr(err.value), caplog.text, out.out, out.err):
        assert KEY not in where
    assert err.value.__cause__ is None  # nothing chained that could carry the request
    return text


def test_persistent_500_fails_after_the_retries(server, key, capsys, caplog):
    url, script = server
    script.mode = "500"
    text = _fails(_cfg(url, max_retries=1), capsys, caplog)
    assert f"{url}/chat/completions" in text and "HTTP 500" in text and "after 2 attempts" in text
    assert len(script.requests) == 2


def test_401_is_not_retried_and_the_echoed_key_is_redacted(server, key, capsys, caplog):
    url, script = server
    script.mode = "401"
    text = _fails(_cfg(url, max_retries=3), capsys, caplog)
    assert "HTTP 401" in text and "<redacted>" in text and ENV in text
    assert len(script.requests) == 1


def test_connection_refused(key, capsys, caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    text = _fails(_cfg(url, max_retries=1), capsys, caplog)
    assert f"{url}/chat/completions" in text and "refused" in text.lower()


def test_timeout_is_retried_then_fails(server, key, capsys, caplog):
    url, script = server
    script.mode = "slow"
    text = _fails(_cfg(url, timeout_s=0.1, max_retries=1), capsys, caplog)
    assert "timed out" in text.lower() and len(script.requests) == 2


def test_a_server_that_is_not_the_api(server, key, capsys, caplog):
    url, script = server
    script.mode = "not_json"
    assert "not an OpenAI-compatible" in _fails(_cfg(url), capsys, caplog)


def test_missing_key_variable_for_a_remote_endpoint(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    cfg = _cfg("https://judge.example.invalid/v1")
    with pytest.raises(UserError, match=ENV):
        judge_pairs(cfg, QUESTIONS[:1], RIGHT[:1], WRONG[:1], progress=False)


def test_a_local_endpoint_needs_no_key(server, monkeypatch):
    url, script = server
    monkeypatch.delenv(ENV, raising=False)
    assert judge_pairs(_cfg(url), QUESTIONS[:1], RIGHT[:1], WRONG[:1], progress=False) == [1.0]
    assert "Authorization" not in script.requests[0]["headers"]


# --- config ----------------------------------------------------------------------------------------------


def test_from_dict():
    cfg = JudgeConfig.from_dict(
        {"base_url": "http://localhost:8000/v1/", "model": "m", "timeout_s": 5, "max_prompts": 10}, "s.yaml"
    )
    assert cfg.timeout_s == 5.0 and cfg.max_prompts == 10 and cfg.api_key_env == "OPENAI_API_KEY"
    assert cfg.url == "http://localhost:8000/v1/chat/completions"


def test_from_dict_unknown_key_names_it_and_a_close_match():
    with pytest.raises(ConfigError) as err:
        JudgeConfig.from_dict({"base_url": "http://x/v1", "modle": "m"}, "suite.yaml: `judge`")
    text = str(err.value)
    assert "suite.yaml: `judge`" in text and "`modle`" in text and "did you mean `model`" in text
    assert "`model`: required" in text


@pytest.mark.parametrize("name", ["api_key", "key", "token", "openai_api_key", "password", "authorization"])
def test_from_dict_refuses_secrets(name):
    with pytest.raises(UserError) as err:
        JudgeConfig.from_dict({"base_url": "https://api.openai.com/v1", "model": "m", name: KEY}, "s.yaml")
    assert f"`{name}`" in str(err.value) and "api_key_env" in str(err.value) and KEY not in str(err.value)


def test_from_dict_refuses_a_key_pasted_as_the_variable_name():
    with pytest.raises(UserError) as err:
        JudgeConfig.from_dict({"base_url": "https://h/v1", "model": "m", "api_key_env": KEY + "-x"}, "s.yaml")
    assert "NAME of an environment variable" in str(err.value) and KEY not in str(err.value)


def test_from_dict_reports_every_bad_value():
    raw = {"base_url": "ftp://h", "model": "", "timeout_s": 0, "max_retries": -1, "max_prompts": 0}
    with pytest.raises(ConfigError) as err:
        JudgeConfig.from_dict(raw, "s.yaml")
    assert len(err.value.problems) == 5


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("A", "A"),
        (" b.", "B"),
        ("tie", "TIE"),
        ("[[B]]", "B"),
        ("**A**", "A"),
        ("Verdict: A", "A"),
        ("Response B is better.", "B"),
        ("It is a tie.", "TIE"),  # the article "a" is not a vote
        ("<think>A looks right, but B...</think>B", "B"),
        ("I cannot decide.", None),
        ("ABBA", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict
