"""The labelling page's web app (Starlette): the page itself, the next item for a labeller, and submissions.

The page gets an item's completions in an order of their own per labeller (a seeded shuffle that is never
the sampling order), named only by slot letters; the server maps a submitted ranking back to sampling
order, so nothing on the page tells which completion was sampled first. Every model text is sent as JSON
and put on the page as text, never as HTML, and the page runs only its own script (Content-Security-Policy),
loads nothing from elsewhere and works offline. With an access token (serving beyond loopback) every request
must carry it: `?token=` once sets a cookie. Every write, also on loopback, must come from the page this
run served (its write token, JSON, its own origin: `guard`), so a page on another origin cannot label.

A labeller has one current answer per item (`store.current`). Items are served in items.json order: first
those with no answer, then, once every item has one, the skipped ones once more; then the end page. A
different answer to an answered item is refused (undo first), except the second-pass answer to a skip.
"""

from __future__ import annotations

import datetime
import random
import secrets
import shlex
import string
import threading
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from hftune.label import guard
from hftune.label.store import (
    ANSWERS,
    FLAGS,
    RECIPE_FILE,
    Answer,
    LabelStore,
    name_key,
    normalise_name,
    untied_pairs,
)

STATIC = Path(__file__).with_name("static")
TOKEN_SLOT = "__HFTUNE_WRITE_TOKEN__"  # in index.html: where the page served gets this run's write token
TOKEN_COOKIE = "hftune_label_token"
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def shown_order(salt: str, item: str, labeller: str, k: int) -> list[int]:
    """The order a labeller sees an item's completions in: seeded by the item and the labeller (the same
    after a reload), and never the sampling order itself."""
    rng = random.Random(f"{salt}:{item}:{labeller}")
    order = list(range(k))
    while order == sorted(order):
        rng.shuffle(order)
    return order


class BadRequest(ValueError):
    pass


class Conflict(ValueError):
    """The labeller already answered the item otherwise: this answer is not saved, and the page says why."""


def _labeller(value: Any) -> str:
    """The name as sent, normalised (`store.normalise_name`); refused unless 1 to 64 printable characters."""
    sent = value.strip() if isinstance(value, str) else ""
    # A control character inside is refused, never collapsed into a space by the normalising.
    name = "" if any(unicodedata.category(c).startswith("C") for c in sent) else normalise_name(sent)
    if not 1 <= len(name) <= 64:
        raise BadRequest("a labeller name is 1 to 64 printable characters")
    return name


def next_commands(out: Path, model: str) -> list[str]:
    """What to run once labelling is done, runnable as shown: counts and agreement, then a reward model
    trained on the derived data, starting from the model that was labelled."""
    reward_dir = f"{out}-reward"
    return [
        f"hftune label stats {shlex.quote(str(out))}",
        f"hftune reward --model_name_or_path {shlex.quote(model)} --data_recipe "
        f"{shlex.quote(str(out / RECIPE_FILE))} --output_dir {shlex.quote(reward_dir)}",
    ]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class Labelling:
    """The items, the store and the rules of a submission; the routes below are thin."""

    def __init__(
        self,
        data: dict[str, Any],
        store: LabelStore,
        *,
        guidelines: str | None = None,
        hints: dict[str, str] | None = None,
    ):
        self.items = data["items"]
        self.by_id = {item["id"]: i for i, item in enumerate(self.items)}
        self.salt = data["order_salt"]
        self.sampling = data["sampling"]
        self.store = store
        self.guidelines = guidelines
        self.hints = hints or {}
        self.next = next_commands(store.out, self.sampling["model"])
        # Deciding whether an answer may be written and writing it are one step: two tabs of one labeller
        # cannot both pass the check.
        self._lock = threading.Lock()

    def _todo(self, answers: dict[str, Answer]) -> tuple[int | None, bool]:
        """The index of the item to serve (None: all done), and whether the first pass is still on."""
        unanswered = [i for i, item in enumerate(self.items) if item["id"] not in answers]
        if unanswered:
            return unanswered[0], True
        again = (i for i, item in enumerate(self.items) if not answers[item["id"]].final)
        return next(again, None), False

    def next_for(self, name: str) -> dict[str, Any]:
        labeller = self.store.display(name)
        answers = {k: a for k, a in self.store.answers(labeller).items() if k in self.by_id}
        todo, first_pass = self._todo(answers)
        statuses = Counter(a.row["status"] for a in answers.values())
        counts = {status: statuses[status] for status in ANSWERS}
        page: dict[str, Any] = {
            "labeller": labeller,
            "done": sum(a.final for a in answers.values()),
            "total": len(self.items),
            "counts": counts,
            "pass": "first" if first_pass else "skipped",
            "can_undo": bool(answers),
            "guidelines": self.guidelines,
            "item": None,
            "end": None,
        }
        if todo is None:
            pairs = sum(untied_pairs(a.row["ranks"]) for a in answers.values() if a.row["status"] == "ranked")
            page["end"] = {**counts, "pairs": pairs, "next": self.next}
            return page
        item = self.items[todo]
        k = len(item["completions"])
        order = shown_order(self.salt, item["id"], name_key(labeller), k)
        ended = item.get("ended") or [True] * k  # items.json files from before `ended` was recorded
        page["item"] = {
            "id": item["id"],
            "number": todo + 1,
            "prompt": item["prompt"],
            "hint": self.hints.get(item["id"]),
            "completions": [
                {"slot": string.ascii_uppercase[j], "text": item["completions"][i], "truncated": not ended[i]}
                for j, i in enumerate(order)
            ],
        }
        return page

    def submit(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("expected a JSON object")
        labeller = self.store.display(_labeller(body.get("labeller")))
        if not isinstance(body.get("item"), str) or body["item"] not in self.by_id:
            raise BadRequest("unknown item")
        item = self.items[self.by_id[body["item"]]]
        k = len(item["completions"])
        action = body.get("action")
        row: dict[str, Any] = {"prompt": item["prompt"], "completions": item["completions"], "ranks": None}
        order = shown_order(self.salt, item["id"], name_key(labeller), k)
        if action == "rank":
            shown = body.get("ranks")
            if not (
                isinstance(shown, list)
                and len(shown) == k
                and all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= k for r in shown)
            ):
                raise BadRequest(f"give every one of the {k} completions a rank from 1 (best) to {k}")
            if len(set(shown)) == 1:
                raise BadRequest("all completions tied: nothing to learn from; rank them or skip the item")
            ranks = [0] * k
            for j, i in enumerate(order):
                ranks[i] = shown[j]
            row.update(ranks=ranks, status="ranked")
        elif action == "skip":
            row["status"] = "skipped"
        elif action == "flag":
            if body.get("flag") not in FLAGS:
                raise BadRequest(f"a flag is one of {', '.join(FLAGS)}")
            row.update(status="flagged", flag=body["flag"])
        else:
            raise BadRequest("action must be rank, skip or flag")
        row.update(
            labeller=labeller,
            item=item["id"],
            model=self.sampling["model"],
            sampling=self.sampling,
            shown=order,
            time=_now(),
        )
        with self._lock:
            if self._may_write(labeller, row):
                self.store.append(row)
        # Saved now, or the same answer was already (a submit sent twice): either way it is on disk.
        return {**self.next_for(labeller), "saved": True}

    def _may_write(self, labeller: str, row: dict[str, Any]) -> bool:
        """Whether `row` is a new answer to write (False: the same answer stands already, a submit sent
        twice); Conflict when the labeller's current answer is another one."""
        answers = self.store.answers(labeller)
        earlier = answers.get(row["item"])
        if earlier is None:
            return True
        todo, first_pass = self._todo(answers)
        # The second pass answers a skip: the item comes back once every item has an answer. A skip sent
        # again is that answer only when it is the item served now; otherwise it is a resent first skip.
        second_pass = not earlier.final and not first_pass
        if _answer(earlier.row) == _answer(row):
            return second_pass and todo == self.by_id[row["item"]]
        if second_pass:
            return True
        # One current answer a labeller an item (stats and training count each once). Only this run's page
        # can write, so the earlier answer is the labeller's own, from another tab or an earlier visit; the
        # page must keep this one on screen and say so, never move on as if it were saved.
        later = "" if earlier.final else "; skipped prompts come back once every prompt has an answer"
        raise Conflict(
            f"not saved: {labeller} already answered this prompt ({earlier.row['status']}, "
            f"{earlier.row.get('time', 'earlier')}); undo it to answer again, or reload the page for the "
            f"next one{later}"
        )

    def undo(self, body: Any) -> dict[str, Any]:
        """Take back the labeller's most recent answer still standing, by appending a retraction row; that
        item is then served again."""
        if not isinstance(body, dict):
            raise BadRequest("expected a JSON object")
        labeller = self.store.display(_labeller(body.get("labeller")))
        with self._lock:
            latest = self.store.latest(labeller)
            if latest is None:
                raise BadRequest(f"nothing to undo: {labeller} has no answer standing")
            self.store.append(
                {
                    "status": "retracted",
                    "labeller": labeller,
                    "item": latest.row["item"],
                    "retracts": {
                        "line": latest.line,
                        "time": latest.row.get("time"),
                        "status": latest.row["status"],
                    },
                    "time": _now(),
                }
            )
        return {**self.next_for(labeller), "undone": latest.row["item"]}


def _answer(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["status"], row.get("ranks"), row.get("flag")


def create_app(labelling: Labelling, *, token: str | None = None, allowed_hosts: list[str] | None = None):
    """The app. `token`: the access token every request needs (serving beyond loopback). Every write needs
    this run's write token, made here and written only into the page served at `/`."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    write_token = secrets.token_urlsafe(32)
    index = (STATIC / "index.html").read_text(encoding="utf-8")
    index = index.replace(TOKEN_SLOT, write_token)

    def refuse(status: int, message: str) -> Response:
        return JSONResponse({"error": message}, status, headers=HEADERS)

    async def check(request: Request, call_next):
        try:
            if token is not None:
                given = request.query_params.get("token")
                if guard.same_token(given, token, "access token"):
                    # Trade the token in the address for a cookie, and drop it from the address bar.
                    response: Response = RedirectResponse(
                        request.url.remove_query_params("token"), status_code=303
                    )
                    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                    return response
                if not guard.same_token(request.cookies.get(TOKEN_COOKIE), token, "access token"):
                    return refuse(401, "access token required: open the address hftune label printed")
            if request.method not in guard.READ_METHODS:
                own_origin = f"{request.url.scheme}://{request.url.netloc}"  # netloc: the Host header
                guard.check_write(request.headers, own_origin, write_token)
        except guard.Refused as err:
            return refuse(err.status, str(err))
        response = await call_next(request)
        response.headers.update(HEADERS)
        return response

    async def page(request: Request):
        return HTMLResponse(index)

    async def next_item(request: Request):
        try:
            return JSONResponse(labelling.next_for(_labeller(request.query_params.get("labeller"))))
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, 400)

    def writer(action):
        async def write(request: Request):
            try:
                body = await guard.json_body(request)
                # The fsync runs in a worker thread, so one labeller's save does not stall the others' pages.
                from starlette.concurrency import run_in_threadpool

                return JSONResponse(await run_in_threadpool(action, body))
            except guard.Refused as err:
                return JSONResponse({"error": str(err)}, err.status)
            except BadRequest as err:
                return JSONResponse({"error": str(err)}, 400)
            except Conflict as err:
                return JSONResponse({"error": str(err), "saved": False}, 409)

        return write

    async def labellers(request: Request):
        return JSONResponse({"labellers": labelling.store.labellers()})

    middleware = [Middleware(BaseHTTPMiddleware, dispatch=check)]
    if allowed_hosts:
        # On loopback only the loopback names: a page elsewhere cannot reach the server by DNS rebinding.
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    routes = [
        Route("/", page),
        Route("/api/next", next_item),
        Route("/api/submit", writer(labelling.submit), methods=["POST"]),
        Route("/api/undo", writer(labelling.undo), methods=["POST"]),
        Route("/api/labellers", labellers),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    return Starlette(routes=routes, middleware=middleware)
