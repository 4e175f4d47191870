"""The labelling page's web app (Starlette): the page itself, the next item for a labeller, and submissions.

The page gets an item's completions in an order of their own per labeller (a seeded shuffle that is never
the sampling order), named only by slot letters; the server maps a submitted ranking back to sampling
order, so nothing on the page tells which completion was sampled first. Every model text is sent as JSON
and put on the page as text, never as HTML, and the page runs only its own script (Content-Security-Policy),
loads nothing from elsewhere and works offline. With an access token (serving beyond loopback) every request
must carry it: `?token=` once sets a cookie. Every write, also on loopback, must come from the page this
run served (its write token, JSON, its own origin: `guard`), so a page on another origin cannot label.
"""

from __future__ import annotations

import datetime
import random
import secrets
import string
import unicodedata
from pathlib import Path
from typing import Any

from hftune.label import guard
from hftune.label.store import FLAGS, LabelStore

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
    name = value.strip() if isinstance(value, str) else ""
    if not 1 <= len(name) <= 64 or any(unicodedata.category(c).startswith("C") for c in name):
        raise BadRequest("a labeller name is 1 to 64 printable characters")
    return name


class Labelling:
    """The items, the store and the rules of a submission; the routes below are thin."""

    def __init__(self, data: dict[str, Any], store: LabelStore):
        self.items = data["items"]
        self.by_id = {item["id"]: i for i, item in enumerate(self.items)}
        self.salt = data["order_salt"]
        self.sampling = data["sampling"]
        self.store = store

    def next_for(self, labeller: str) -> dict[str, Any]:
        done = self.store.done(labeller)
        todo = next((i for i, item in enumerate(self.items) if item["id"] not in done), None)
        page: dict[str, Any] = {"done": len(done), "total": len(self.items), "item": None}
        if todo is not None:
            item = self.items[todo]
            order = shown_order(self.salt, item["id"], labeller, len(item["completions"]))
            page["item"] = {
                "id": item["id"],
                "number": todo + 1,
                "prompt": item["prompt"],
                "completions": [
                    {"slot": string.ascii_uppercase[j], "text": item["completions"][i]}
                    for j, i in enumerate(order)
                ],
            }
        return page

    def submit(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("expected a JSON object")
        labeller = _labeller(body.get("labeller"))
        if not isinstance(body.get("item"), str) or body["item"] not in self.by_id:
            raise BadRequest("unknown item")
        item = self.items[self.by_id[body["item"]]]
        k = len(item["completions"])
        action = body.get("action")
        row: dict[str, Any] = {"prompt": item["prompt"], "completions": item["completions"], "ranks": None}
        order = shown_order(self.salt, item["id"], labeller, k)
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
            time=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        earlier = self.store.append(row)
        if earlier is not None and _answer(earlier) != _answer(row):
            # One answer a labeller an item (stats and training count each once). Only this run's page can
            # write, so the earlier answer is the labeller's own, from another tab or an earlier visit; the
            # page must keep this one on screen and say so, never move on as if it were saved.
            raise Conflict(
                f"not saved: {labeller} already answered this prompt ({earlier['status']}, "
                f"{earlier.get('time', 'earlier')}); reload the page for the next one"
            )
        # Saved now, or the same answer was already (a submit sent twice): either way it is on disk.
        return {**self.next_for(labeller), "saved": True}


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

    async def submit(request: Request):
        try:
            body = await guard.json_body(request)
            # The fsync runs in a worker thread, so one labeller's save does not stall the others' pages.
            from starlette.concurrency import run_in_threadpool

            return JSONResponse(await run_in_threadpool(labelling.submit, body))
        except guard.Refused as err:
            return JSONResponse({"error": str(err)}, err.status)
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, 400)
        except Conflict as err:
            return JSONResponse({"error": str(err), "saved": False}, 409)

    middleware = [Middleware(BaseHTTPMiddleware, dispatch=check)]
    if allowed_hosts:
        # On loopback only the loopback names: a page elsewhere cannot reach the server by DNS rebinding.
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    routes = [
        Route("/", page),
        Route("/api/next", next_item),
        Route("/api/submit", submit, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    return Starlette(routes=routes, middleware=middleware)
