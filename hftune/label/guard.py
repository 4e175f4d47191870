"""What a request must carry before the label server acts on it, and the one way a request body is read.

- Beyond loopback, every request carries the access token (`?token=` once, then a cookie).
- Every write (any method but GET and HEAD: a write is whatever changes labels.jsonl), also on loopback,
  carries this run's write token in the `X-Hftune-Token` header, sends `Content-Type: application/json`,
  and, when its browser names an `Origin`, comes from the server's own. Why all three: a cookie is no
  proof on loopback, since SameSite counts every port of localhost as one site, so a page on another
  port gets the labeller's cookies sent with its forged POST. The token is written only into the page
  this server serves, which a page of another origin cannot read (the same-origin policy counts ports);
  a form or a `no-cors` fetch can send neither a custom header nor `application/json`, and a CORS request
  that tries has to ask first (a preflight), which this server never grants.
- A body is at most `MAX_BODY` bytes of UTF-8 JSON; anything else is a 400 naming what was wrong, never a
  500 with a traceback in the log.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

WRITE_HEADER = "X-Hftune-Token"
READ_METHODS = ("GET", "HEAD")
MAX_BODY = 64 * 1024  # a submission is under a kilobyte: a name, an item id and at most 26 ranks


class Refused(Exception):
    """A request answered with `status` and a one-line JSON error; nothing was changed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def same_token(given: str | None, expected: str, what: str) -> bool:
    """Whether `given` is `expected` (in constant time). A token hftune could not have made (not printable
    ASCII: what a header or cookie decodes to from stray bytes) is refused as malformed."""
    if given is None:
        return False
    if not (given.isascii() and given.isprintable()):
        raise Refused(400, f"malformed {what}: not printable ASCII")
    return hmac.compare_digest(given.encode(), expected.encode())


def check_write(headers: Any, own_origin: str, write_token: str) -> None:
    """Refuse a write that did not come from this run's page (see the module's docstring for why)."""
    origin = headers.get("origin")
    if origin is not None and origin.lower() != own_origin.lower():
        raise Refused(403, "refused: a write from another origin")
    if not same_token(headers.get(WRITE_HEADER), write_token, "write token"):
        raise Refused(403, "refused: not from this run's page (reload the page and submit again)")
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise Refused(415, "refused: a write is sent as Content-Type: application/json")


async def json_body(request: Any) -> Any:
    """The request's body as JSON: at most MAX_BODY bytes, UTF-8, nested no deeper than Python can parse."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise Refused(400, f"request body over {MAX_BODY // 1024} KiB")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Refused(400, f"request body over {MAX_BODY // 1024} KiB")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise Refused(400, "request body is not UTF-8") from None
    except ValueError:
        raise Refused(400, "request body is not JSON") from None
    except RecursionError:
        raise Refused(400, "request body is JSON nested too deeply") from None
