"""Batched generation (what `hftune eval` does for greedy replies: left-padded batches of prompts) vs one
prompt at a time, on the same model and prompts, measured in one run of this script.

    python bench/eval_batched_generation.py [--model tiny:llama --prompts 64 --batch_size 16 --tokens 32]

Checks that both give the same replies (greedy, fp32) and prints prompts/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:llama", help="model folder, Hub id or tiny:ARCH")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32, help="max new tokens")
    args = parser.parse_args()

    import torch
    from trl import ModelConfig

    from hftune.data import prepare_dataset
    from hftune.models import generation, loading
    from hftune.models.tokenizer import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(args.model, chat_template="chatml")
    model = loading.load_model(args.model, ModelConfig(dtype="auto"), for_training=False).eval()
    rows = list(prepare_dataset("tiny_alpaca").train)[: args.prompts]
    encoded = [
        tok.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, return_dict=True)["input_ids"]
        for r in rows
    ]
    generation.generate(model, tok, encoded[:2], args.tokens, batch_size=2)  # warm-up

    timings = {}
    for name, batch_size in (("one at a time", 1), (f"batched ({args.batch_size})", args.batch_size)):
        start = time.perf_counter()
        replies = generation.generate(model, tok, encoded, args.tokens, batch_size=batch_size)
        timings[name] = (time.perf_counter() - start, replies)
    (t_one, one), (t_batch, batched) = timings.values()
    same = sum(a.text == b.text for a, b in zip(one, batched, strict=True))
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"model {args.model}, {len(encoded)} prompts, {args.tokens} new tokens max, {device}")
    for name, (seconds, _) in timings.items():
        print(f"{name:16s} {seconds:7.2f} s  {len(encoded) / seconds:7.1f} prompts/s")
    print(f"identical replies: {same}/{len(encoded)}")
    print(f"batched / one-at-a-time throughput: {t_one / t_batch:.2f}x")


if __name__ == "__main__":
    main()
