"""`hftune label --config FILE`: sample (or reuse) the items, then serve the page until Ctrl-C.

The output folder is new, empty, or one `hftune label` wrote with the same sampling settings, which is
resumed: its items are shown again as they were and every labeller continues where they stopped. A
folder of anything else, or one whose labels rank other samples, is refused and left untouched.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hftune.config import StageConfig, named_function
from hftune.errors import UserError
from hftune.label import items as label_items
from hftune.label.config import LOOPBACK, LabelSettings
from hftune.label.store import LABELS_FILE, TRAIN_FILE, LabelStore

logger = logging.getLogger(__name__)

TOKEN_ENV = "HFTUNE_LABEL_TOKEN"
GUIDELINE_FILES = (".md", ".txt")
FUNCTION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # `module:function`; any other `hint` is the line


def guidelines(value: str | None) -> str | None:
    """The `guidelines` text: the value itself, or the .md / .txt file it names."""
    if value is None or "\n" in value or not value.lower().endswith(GUIDELINE_FILES):
        return value
    path = Path(value)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = "no such file" if isinstance(err, FileNotFoundError) else str(err)
        raise UserError(f"`guidelines`: cannot read {path}: {reason}") from None


def hint_function(value: str | None) -> Callable[[str], str | None] | None:
    """The `hint` key: a fixed line, or a `module:function` imported now (before any sampling)."""
    if value is None:
        return None
    if not FUNCTION.fullmatch(value):
        return lambda _prompt: value
    return named_function("hint", value)


def hints(fn: Callable[[str], str | None] | None, items: list[dict[str, Any]]) -> dict[str, str]:
    """Each item's hint line, from the text of its prompt (its turns, joined by blank lines)."""
    if fn is None:
        return {}
    out = {}
    for item in items:
        text = "\n\n".join(turn["content"] for turn in item["prompt"])
        try:
            line = fn(text)
        except Exception as err:  # the user's own function: any failure is theirs to see, in one line
            raise UserError(f"`hint`: failed on item {item['id']}: {type(err).__name__}: {err}") from None
        if line is not None and not isinstance(line, str):
            raise UserError(f"`hint`: returned {type(line).__name__} for item {item['id']}, not a string")
        if line:
            out[item["id"]] = line
    return out


def prepare(s: LabelSettings) -> tuple[Path, dict[str, Any]]:
    """The output folder with its items (sampled now, or those of an earlier run with the same settings)."""
    out = Path(s.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output_dir {out}: is a file, not a folder; nothing was changed")
    recorded = label_items.read(out) if out.is_dir() else None
    if out.is_dir() and recorded is None and any(out.iterdir()):
        raise UserError(
            f"output_dir {out}: the folder exists and `hftune label` did not write it (no "
            f"{label_items.ITEMS_FILE}). Nothing was changed; choose a new folder."
        )
    now = label_items.sampling(s)
    if recorded is not None:
        changed = label_items.changed(recorded["sampling"], now)
        if not changed:
            logger.info("resuming %s: %d items, sampled before", out, len(recorded["items"]))
            return out, recorded
        if (out / LABELS_FILE).is_file() and (out / LABELS_FILE).stat().st_size:
            raise UserError(
                f"output_dir {out}: its labels rank samples made with other settings ({', '.join(changed)} "
                "changed). Nothing was changed; label into a new folder."
            )
    sampled = label_items.sample(s)  # before the folder exists: a failed sampling leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    return out, label_items.write(out, now, sampled)


def run(cfg: StageConfig) -> None:
    s: LabelSettings = cfg.hftune
    _check_web_extra()  # before minutes of sampling, not after
    text = guidelines(s.guidelines)  # so are the guidelines file and the hint function
    hint = hint_function(s.hint)
    out, data = prepare(s)
    lines = hints(hint, data["items"])
    store = LabelStore(out, s.aggregate)  # (re)writes train.jsonl and recipe.yaml from the labels so far
    remote = s.host not in LOOPBACK
    token = (os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)) if remote else None
    from hftune.label.app import Labelling, create_app

    app = create_app(
        Labelling(data, store, guidelines=text, hints=lines),
        token=token,
        allowed_hosts=None if remote else ["127.0.0.1", "localhost", "[::1]", "::1"],
    )
    sock = _bind(s.host, s.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{port}/" + (
        f"?token={token}" if token and not os.environ.get(TOKEN_ENV) else ""
    )
    done = len(store.rows)
    print(
        f"label: {len(data['items'])} prompts x {s.num_completions} completions, {done} submissions so far\n"
        f"label: open {address}  (Ctrl-C stops; every submission is already saved)",
        flush=True,
    )
    if token and os.environ.get(TOKEN_ENV):
        print(f"label: serving beyond loopback; open it with ?token=<{TOKEN_ENV}>", flush=True)
    try:
        _serve(app, sock)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a labelling session ends: uvicorn has shut down cleanly and re-raised it
    finally:
        store.close()
    print(summary(out, store), flush=True)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listening before the address is printed: a browser that opens it at once waits in the backlog
        # until uvicorn accepts, instead of being refused while the server starts.
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise UserError(
            f"cannot serve on {host}:{port}: {err.strerror or err} (try another `port`)"
        ) from None
    return sock


def _check_web_extra() -> None:
    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"hftune label needs its web extra ({', '.join(missing)}): pip install 'hftune[label]'"
        )


def _serve(app, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def summary(out: Path, store: LabelStore) -> str:
    from hftune.label.app import next_commands

    t = store.training
    stats, reward = next_commands(out, store.model or "MODEL")
    return (
        f"{len(store.rows)} rows by {len(store.labellers())} labeller(s) in {out / LABELS_FILE}\n"
        f"training data ({t['aggregate']}): {t['rankings']} current rankings -> {t['rows']} rows, "
        f"{t['pairs']} pairs in {out / TRAIN_FILE}\n"
        f"agreement and counts: {stats}\n"
        f"train a reward model on them: {reward}"
    )
