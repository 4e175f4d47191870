"""A rerun of data preparation on 100k chats: prepared afresh (what every run did before) vs read back from
hftune's content-addressed data cache, measured in one run of this script.

    python bench/data_prepare_cache.py [--rows 100000] [--repeats 2]

The rows are the tiny UltraChat fixture's multi-turn chats, repeated with a counter in every turn so each row
is its own prompt, written to a JSONL file in a temporary folder; the tokenizer is the tiny models' byte-level
BPE with its ChatML template, and `max_length` 256 (each row is rendered through the template to be measured).
"Afresh" is `prepare_parts` as a stage calls it; "cached" is the same call through `hftune.data.cache` after a
first run filled the cache. Both sides run `--repeats` times, alternating, with one torch thread; the script
checks that both give the same rows (their content fingerprint) and prints the median of each and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_rows(path: Path, n: int) -> None:
    fixture = [json.loads(line) for line in (REPO / "data_recipes/fixtures/ultrachat.jsonl").open()]
    with path.open("w") as f:
        for i in range(n):
            row = fixture[i % len(fixture)]
            messages = [
                {**m, "content": f"{m['content']} ({i})"} if m["role"] != "system" else m
                for m in row["messages"]
            ]
            f.write(json.dumps({"messages": messages}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HFTUNE_CACHE"] = str(Path(tmp) / "cache")
        from hftune.data import cache, load_recipe
        from hftune.data.mixture import Part, prepare_parts
        from hftune.models.tiny import default_corpus, train_tokenizer

        data_file = Path(tmp) / "chats.jsonl"
        write_rows(data_file, ns.rows)
        tokenizer = train_tokenizer(default_corpus(), 1024)
        parts = [Part(load_recipe("tiny_ultrachat"), str(data_file))]
        settings = dict(max_length=256, strict=False, eval_fraction=0.05, seed=42, too_long="drop")

        def afresh():
            return prepare_parts(parts, tokenizer=tokenizer, exclude=frozenset(), formats=None, **settings)

        def through_cache():
            key = cache.key(parts, tokenizer, {**settings, "exclude": frozenset(), "formats": None})
            return cache.cached(key, afresh)

        start = time.perf_counter()
        first = through_cache()  # fills the cache (prepares, then saves)
        fill = time.perf_counter() - start
        times: dict[str, list[float]] = {"afresh": [], "cached": []}
        fingerprints = {first.fingerprint}
        for _ in range(ns.repeats):
            for name, run in (("afresh", afresh), ("cached", through_cache)):
                start = time.perf_counter()
                data = run()
                times[name].append(time.perf_counter() - start)
                fingerprints.add(data.fingerprint)
        a, c = statistics.median(times["afresh"]), statistics.median(times["cached"])
        print(f"{ns.rows} rows, {len(first.train)} training rows; first run, filling the cache: {fill:.1f} s")
        print(f"prepared afresh: {a:.2f} s (runs: {', '.join(f'{t:.2f}' for t in times['afresh'])})")
        print(f"read from cache: {c:.2f} s (runs: {', '.join(f'{t:.2f}' for t in times['cached'])})")
        print(f"rerun speed-up: {a / c:.1f}x; same rows on every run: {len(fingerprints) == 1}")


if __name__ == "__main__":
    main()
