"""Padded vs packed vs length-grouped batches for `hftune sft` on rows of different lengths, on this
machine, measured in one run: trained tokens per second of each and the ratios to padded.

    OMP_NUM_THREADS=1 python bench/sft_packing.py [--model tiny:llama --steps 30 --repeats 2]

The rows are the tiny UltraChat fixture's multi-turn chats (20 to 150 tokens); every side trains the same
LoRA config (configs/tiny/sft.yaml) for `--steps` steps of 8 rows. "packed" is TRL's BFD packing
(`packing: true`: rows concatenated up to `max_length`, padding-free, kept apart by position ids, which the
packing probe checks on the loaded model); "grouped" is length-grouped sampling (padded, but rows of similar
length share a batch: `train_sampling_strategy: group_by_length`). The sides alternate, `--repeats` times;
tokens are TRL's `num_tokens` (padding excluded) over the training time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIDES = {
    "padded": [],
    "packed": ["--packing", "true"],
    "grouped": ["--train_sampling_strategy", "group_by_length"],
}


def run(model: str, steps: int, out: str, extra: list[str]) -> float:
    from hftune.stages import sft

    argv = [
        "--model_name_or_path", model, "--data_recipe", "tiny_ultrachat", "--eval_fraction", "0",
        "--max_steps", str(steps), "--output_dir", out, "--save_strategy", "no", "--logging_steps", "1",
        "--max_length", "256", *extra,
    ]  # fmt: skip
    result = sft.run(sft.parse(str(REPO / "configs/tiny/sft.yaml"), argv))
    tokens = max(float(e.get("num_tokens", 0)) for e in result.trainer.state.log_history)
    return tokens / result.metrics["train_runtime"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny:llama")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    ns = parser.parse_args()
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(ns.repeats):
            for side, extra in SIDES.items():
                rates[side].append(run(ns.model, ns.steps, str(Path(tmp) / f"{side}-{i}"), extra))
    padded = statistics.median(rates["padded"])
    for side, values in rates.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{side:8s} {median:9,.0f} tokens/s (runs: {runs}); {median / padded:.2f}x padded")


if __name__ == "__main__":
    main()
