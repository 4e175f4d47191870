"""A cache of what models compute (generations, rewards, log-probabilities), so that adding a variant to an
eval (or re-rendering a report, or restarting a labelling session's sampling) does not regenerate or rescore
the others.

Keys are hashes of everything the value depends on: the model's fingerprint (the files it loads, not its
name), the exact prompt tokens, the decoding settings and the seed. One SQLite file: writes are atomic and
an interrupted eval leaves a usable cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

# Files larger than this are fingerprinted by size and modification time instead of content (hashing a
# 15 GB checkpoint for every eval would cost minutes); artifacts written by hftune also carry a manifest.
_HASH_LIMIT = 64 * 1024 * 1024
_MODEL_FILES = ("*.safetensors", "*.json", "*.jinja", "*.model", "*.txt")


def key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(path: str) -> str:
    """What a model is: the content of its folder (weights, configs, tokenizer), or a Hub id."""
    folder = Path(path)
    if not folder.is_dir():
        return key("hub", path)
    digest = hashlib.sha256()
    files = sorted({f for pattern in _MODEL_FILES for f in folder.glob(pattern) if f.is_file()})
    for f in files:
        digest.update(f.name.encode())
        stat = f.stat()
        if stat.st_size > _HASH_LIMIT:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            digest.update(hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


def default_dir() -> Path:
    return Path(os.environ.get("HFTUNE_CACHE", Path.home() / ".cache" / "hftune")) / "eval"


class Cache:
    """Key -> JSON value, in `<dir>/eval-cache.sqlite`; counts hits and misses per kind for the log."""

    def __init__(self, directory: str | os.PathLike | None):
        directory = Path(directory) if directory else default_dir()
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "eval-cache.sqlite"
        self.db = sqlite3.connect(self.path)
        self.db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.commit()
        self.hits: dict[str, int] = {}
        self.misses: dict[str, int] = {}

    def get_many(self, kind: str, keys: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT key, value FROM entries WHERE key IN ({marks})", chunk)
            found.update((k, json.loads(v)) for k, v in rows)
        self.hits[kind] = self.hits.get(kind, 0) + len(found)
        self.misses[kind] = self.misses.get(kind, 0) + len(set(keys)) - len(found)
        return found

    def put_many(self, items: dict[str, Any]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO entries (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in items.items()],
            )

    def get_or_compute(self, kind: str, keys: list[str], compute) -> list[Any]:
        """The value of every key: cached ones read, the rest from `compute(missing positions)` (a list of
        values in that order) and stored."""
        found = self.get_many(kind, keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            new = dict(zip([keys[i] for i in missing], compute(missing), strict=True))
            self.put_many(new)
            found.update(new)
        return [found[k] for k in keys]

    def close(self) -> None:
        self.db.close()
