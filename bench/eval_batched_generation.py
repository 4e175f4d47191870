"""Batched generation vs one prompt at a time, as `hftune eval` generates, on the same model and prompts,
measured in one run of this script.

    python bench/eval_batched_generation.py [--model tiny:llama --prompts 64 --batch_size 16 --tokens 32]

Greedy replies: left-padded batches of prompts (`generation.generate`). Sampled replies: K samples a
prompt, each prompt with its own seed; one at a time is one `generate` call a prompt under its seed (what
the eval did before), batched is `generation.sample_seeded` (each prompt's tokens drawn from its own
generator). Checks that both give the same replies (fp32) and prints prompts/s of each and their ratio.
Run it with OMP_NUM_THREADS=1 for a stable ratio on a shared 2-core machine.
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
    parser.add_argument("--samples", type=int, default=4, help="samples a prompt (sampled replies)")
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

    from hftune.evaluation.variants import prompt_seed

    seeds = [prompt_seed(0, ids) for ids in encoded]
    k = args.samples
    start = time.perf_counter()
    one = [
        generation.generate(model, tok, [ids], args.tokens, temperature=1.0, seed=s, num_return_sequences=k)
        for ids, s in zip(encoded, seeds, strict=True)
    ]
    t_one = time.perf_counter() - start
    start = time.perf_counter()
    batched = generation.sample_seeded(
        model, tok, encoded, args.tokens, temperature=1.0, seeds=seeds, num_return_sequences=k,
        batch_size=args.batch_size * k,
    )  # fmt: skip
    t_batch = time.perf_counter() - start
    same = sum([r.ids for r in a] == [r.ids for r in b] for a, b in zip(one, batched, strict=True))
    print(f"sampled, {k} a prompt, each prompt its own seed:")
    print(f"{'one at a time':16s} {t_one:7.2f} s  {len(encoded) / t_one:7.1f} prompts/s")
    print(f"{'batched':16s} {t_batch:7.2f} s  {len(encoded) / t_batch:7.1f} prompts/s")
    print(f"identical samples: {same}/{len(encoded)} prompts")
    print(f"batched / one-at-a-time throughput: {t_one / t_batch:.2f}x")


if __name__ == "__main__":
    main()
