"""Optional LLM judge on an OpenAI-compatible chat endpoint (off unless a suite sets `judge:`).

The harness uses it to compare two variants' responses to the same prompts. Each pair is judged twice,
once with each response shown first, because LLM judges favour a position; a pair whose two verdicts
disagree counts as a tie, so position bias turns into ties rather than into a fake win.

Only the standard library speaks HTTP here (urllib + json): any server with `POST /chat/completions` works
(OpenAI, vLLM, llama.cpp, TGI, ...) and no client package is needed. The API key is read from the
environment variable that `api_key_env` names, and only ever goes into the Authorization header: configs,
errors, logs and return values never carry it.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, fields
from typing import Any

from hftune.config import ConfigError, is_secret_key
from hftune.errors import UserError, did_you_mean

logger = logging.getLogger(__name__)

# A verdict is one token; a few more leave room for "[[A]]" or "Verdict: A" without paying for an essay.
MAX_TOKENS = 16
# Base of the exponential backoff between retries (seconds); a server's Retry-After wins, up to the cap.
RETRY_BACKOFF_S = 1.0
RETRY_AFTER_CAP_S = 30.0
# Statuses worth retrying: rate limits and server-side failures. Anything else (401, 404, 400...) will not
# get better by asking again.
_RETRY_STATUS = {408, 429} | set(range(500, 600))

SYSTEM_PROMPT = (
    "You are an impartial judge. You are shown a user's question and two responses, A and B. Decide which "
    "response answers the question better: correctness first, then helpfulness and clarity. Do not let the "
    "order of the responses or their length influence you. Reply with exactly one token: A if response A is "
    "better, B if response B is better, or TIE if they are equally good or equally bad."
)
USER_TEMPLATE = (
    "[Question]\n{question}\n\n"
    "[Response A]\n{first}\n\n"
    "[Response B]\n{second}\n\n"
    "Which response is better? Reply with exactly one token: A, B or TIE."
)

# Config keys that would carry the key itself. `is_secret_key` covers token/api_key/password/...; a judge
# config also invites `key`, `openai_api_key` or an `authorization` header.
_SECRET_NAMES = {"key", "apikey", "authorization", "auth", "bearer", "headers"}


def _looks_secret(name: str) -> bool:
    low = name.lower()
    return is_secret_key(low) or low in _SECRET_NAMES or low.endswith("_key")


@dataclass
class JudgeConfig:
    """Where and how to ask the judge. The key itself is never part of it, only the variable's name."""

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 2
    temperature: float = 0.0
    max_prompts: int | None = None

    @classmethod
    def from_dict(cls, raw: dict, source: str) -> JudgeConfig:
        """A checked config from a mapping (a suite's `judge:` without `pairs`); every problem is reported
        at once, as a UserError naming `source` and the key."""
        if not isinstance(raw, dict):
            raise UserError(f"{source}: expected a mapping of judge settings, got {type(raw).__name__}")
        known = [f.name for f in fields(cls)]
        problems: list[str] = []
        values: dict[str, Any] = {}
        for key, value in raw.items():
            key = str(key)
            if key != "api_key_env" and _looks_secret(key):
                # The value is deliberately not echoed: it may be the key.
                problems.append(
                    f"`{key}`: secrets do not belong in a config (it is saved with the results). Put the key "
                    "in an environment variable and name that variable in `api_key_env` "
                    "(default OPENAI_API_KEY)."
                )
            elif key not in known:
                problems.append(f"`{key}`: unknown key{did_you_mean(key, known)} (known: {', '.join(known)})")
            else:
                values[key] = value
        problems += _check(values)
        if problems:
            raise ConfigError(source, problems)
        if "timeout_s" in values:
            values["timeout_s"] = float(values["timeout_s"])
        if "temperature" in values:
            values["temperature"] = float(values["temperature"])
        return cls(**values)

    @property
    def url(self) -> str:
        """The chat completions endpoint (a base_url that already ends in it is taken as is)."""
        base = self.base_url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(values: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("base_url", "model"):
        if key not in values:
            problems.append(f"`{key}`: required")
        elif not isinstance(values[key], str) or not values[key].strip():
            problems.append(f"`{key}`: expected a non-empty string")
    url = values.get("base_url")
    if isinstance(url, str) and url.strip():
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append("`base_url`: expected an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1")
        elif parts.password or parts.username:
            problems.append("`base_url`: credentials do not belong in the URL; use `api_key_env`")
        elif parts.query:
            problems.append("`base_url`: must not carry a query string (a key there would be saved)")
    env = values.get("api_key_env", "OPENAI_API_KEY")
    if env is not None and not (isinstance(env, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env)):
        # Most likely the key was pasted here instead of its variable's name: do not repeat it.
        problems.append(
            "`api_key_env`: must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not the key "
            "itself; use null for an endpoint without a key"
        )
    if "timeout_s" in values and not (_is_number(values["timeout_s"]) and values["timeout_s"] > 0):
        problems.append(f"`timeout_s`: expected a positive number of seconds, got {values['timeout_s']!r}")
    if "max_retries" in values and not (_is_int(values["max_retries"]) and values["max_retries"] >= 0):
        problems.append(f"`max_retries`: expected an integer >= 0, got {values['max_retries']!r}")
    if "temperature" in values and not (_is_number(values["temperature"]) and values["temperature"] >= 0):
        problems.append(f"`temperature`: expected a number >= 0, got {values['temperature']!r}")
    n = values.get("max_prompts")
    if n is not None and not (_is_int(n) and n >= 1):
        problems.append(f"`max_prompts`: expected an integer >= 1 or null, got {n!r}")
    return problems


def _is_local(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _api_key(cfg: JudgeConfig) -> str | None:
    """The key from the environment, or None (fine for a local server, which usually needs none)."""
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env, "").strip()
    if key:
        return key
    if _is_local(cfg.base_url):
        return None
    raise UserError(
        f"the judge at {cfg.base_url} needs an API key: set the environment variable {cfg.api_key_env} "
        "(or change `judge.api_key_env` to the variable that holds it)"
    )


def _redact(text: str, key: str | None) -> str:
    """Belt and braces: a server may echo the key back (in an error body, say); never pass it on."""
    if key:
        text = text.replace(key, "<redacted>")
    return text


# A verdict is the first standalone A, B or TIE. In free text only capital A/B count: a lowercase "a" is
# the English article ("a tie", "a better answer"), which would otherwise read as a vote for A.
_VERDICT_ALONE = re.compile(r"[\s\"'`*\[\](){}.:!]*(a|b|tie)[\s\"'`*\[\](){}.:!]*", re.IGNORECASE)
_VERDICT_IN_TEXT = re.compile(r"(?<![A-Za-z0-9_])(A|B|(?i:tie))(?![A-Za-z0-9_])")
# Reasoning models may put their thinking before the verdict; a letter in there is not a vote.
_THINKING = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)


def parse_verdict(reply: str | None) -> str | None:
    """'A', 'B' or 'TIE' from a judge's reply; None when it names none of them."""
    if not reply:
        return None
    text = _THINKING.sub(" ", reply)
    whole = _VERDICT_ALONE.fullmatch(text)
    if whole:
        return whole.group(1).upper()
    found = _VERDICT_IN_TEXT.search(text)
    return found.group(1).upper() if found else None


class _Client:
    """POSTs chat completions with retries; counts requests and retries for the stats."""

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.url = cfg.url
        self.key = _api_key(cfg)
        self.n_requests = 0
        self.n_retries = 0

    def _fail(self, what: str) -> UserError:
        return UserError(_redact(f"the judge at {self.url} failed: {what}", self.key))

    def complete(self, system: str, user: str) -> str | None:
        """The reply's text (None if the server returned no text)."""
        body = {
            "model": self.cfg.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": self.cfg.temperature,
            "max_tokens": MAX_TOKENS,
        }
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        attempts = self.cfg.max_retries + 1
        for attempt in range(attempts):
            self.n_requests += 1
            retry_after = None
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                    raw = response.read()
                return self._content(raw)
            except urllib.error.HTTPError as err:
                try:
                    detail = _redact(err.read(500).decode("utf-8", "replace").strip(), self.key)
                except (OSError, http.client.HTTPException):
                    detail = ""
                problem = f"HTTP {err.code} {err.reason}" + (f": {detail[:300]}" if detail else "")
                if err.code not in _RETRY_STATUS:
                    hint = ""
                    if err.code in (401, 403) and self.key:
                        hint = f" (check the key in ${self.cfg.api_key_env})"
                    elif err.code in (401, 403):
                        hint = " (no key was sent)"
                    raise self._fail(problem + hint) from None
                retry_after = _retry_after(err.headers.get("Retry-After") if err.headers else None)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                # URLError wraps connection refused / DNS failures; a timeout while reading the body is a
                # bare TimeoutError; http.client's RemoteDisconnected is a ConnectionError.
                reason = getattr(err, "reason", None) or err
                problem = f"{type(reason).__name__}: {reason}"
            except http.client.HTTPException as err:  # a malformed or cut-off response
                problem = f"{type(err).__name__}: {err}"
            if attempt + 1 < attempts:
                wait = retry_after if retry_after is not None else RETRY_BACKOFF_S * 2**attempt
                logger.warning(
                    "judge: %s from %s; retry %d/%d in %.1fs",
                    _redact(problem, self.key)[:200],
                    self.url,
                    attempt + 1,
                    self.cfg.max_retries,
                    wait,
                )
                self.n_retries += 1
                time.sleep(wait)
        raise self._fail(f"{problem} (after {attempts} attempt{'s' if attempts > 1 else ''})")

    def _content(self, raw: bytes) -> str | None:
        try:
            payload = json.loads(raw)
            message = payload["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            # Not an occasional odd verdict but a server that does not speak the chat completions API (a
            # wrong base_url, say): every answer would be a silent tie, so stop here.
            snippet = _redact(raw[:200].decode("utf-8", "replace"), self.key)
            raise self._fail(f"not an OpenAI-compatible chat completion response: {snippet!r}") from None
        content = message.get("content") if isinstance(message, dict) else None
        return content if isinstance(content, str) else None


def _retry_after(value: str | None) -> float | None:
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_CAP_S) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough that the exponential backoff will do


# Scores of a verdict for response `a`, by which response was shown first.
_SCORE_A_FIRST = {"A": 1.0, "B": 0.0, "TIE": 0.5, None: 0.5}
_SCORE_B_FIRST = {"A": 0.0, "B": 1.0, "TIE": 0.5, None: 0.5}


def judge_pairs_with_stats(
    cfg: JudgeConfig, prompts: list[str], a: list[str], b: list[str], *, progress: bool = True
) -> tuple[list[float], dict[str, int]]:
    """`judge_pairs` and its counts: n_prompts (judged), n_disagreements (the two orders gave different
    verdicts, scored as a tie), n_unparseable (replies without a verdict, each scored as a tie), n_identical
    (identical responses: a tie without asking), n_requests (HTTP requests, retries included), n_retries."""
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"prompts, a and b differ in length: {len(prompts)}, {len(a)}, {len(b)}")
    n = len(prompts) if cfg.max_prompts is None else min(cfg.max_prompts, len(prompts))
    stats = {"n_prompts": n, "n_disagreements": 0, "n_unparseable": 0, "n_identical": 0}
    # NaN past max_prompts: "not measured", which the bootstrap (stats.py) leaves out.
    scores = [math.nan] * len(prompts)
    client = _Client(cfg) if n else None
    from tqdm.auto import tqdm

    for i in tqdm(range(n), desc="judge", unit="pair", disable=not progress):
        if a[i] == b[i]:
            # Greedy variants often agree word for word; asking would cost two requests to learn "TIE".
            stats["n_identical"] += 1
            scores[i] = 0.5
            continue
        verdicts = []
        for first, second, table in ((a[i], b[i], _SCORE_A_FIRST), (b[i], a[i], _SCORE_B_FIRST)):
            user = USER_TEMPLATE.format(question=prompts[i], first=first, second=second)
            verdict = parse_verdict(client.complete(SYSTEM_PROMPT, user))
            stats["n_unparseable"] += verdict is None
            verdicts.append(table[verdict])
        if verdicts[0] != verdicts[1]:
            stats["n_disagreements"] += 1
            scores[i] = 0.5
        else:
            scores[i] = verdicts[0]
    stats["n_requests"] = client.n_requests if client else 0
    stats["n_retries"] = client.n_retries if client else 0
    if stats["n_unparseable"]:
        logger.warning("judge: %d replies named no verdict (scored as ties)", stats["n_unparseable"])
    return scores, stats


def judge_pairs(
    cfg: JudgeConfig, prompts: list[str], a: list[str], b: list[str], *, progress: bool = True
) -> list[float]:
    """Per prompt: 1.0 if response a is better, 0.0 if b is, 0.5 for a tie. Each pair is judged in BOTH
    orders (a shown first, then b shown first) to cancel position bias; if the two verdicts disagree it is
    a tie. Prompts past `cfg.max_prompts` are not judged and get NaN, so the list always lines up with
    `prompts`."""
    return judge_pairs_with_stats(cfg, prompts, a, b, progress=progress)[0]
