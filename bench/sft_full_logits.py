"""SFT on full logits (hftune's default where a batch's logits are small, `hftune/stages/full_logits.py`) vs
TRL's chunked log-prob head (TRL >= 1.15), in one run of this script.

    python bench/sft_full_logits.py [--steps 150] [--repeats 2]

The model and data are the quickstart's SFT (`configs/biased/sft.yaml`: full fine-tuning, batch 32, vocabulary
1024) on an untrained tiny llama of the same shape, in fp32 on CPU on both sides. The sides alternate
`--repeats` times with one torch thread, after one untimed warm-up run; each prints its training time
(the Trainer's `train_runtime`) and its loss after `--steps` steps, and the script prints the median of each
side and the ratio. The chunked side is the same code with the budget set to 0 bytes, so nothing but the
head differs.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run(side: str, steps: int, base: str, root: Path) -> tuple[float, float]:
    from hftune.stages import full_logits, sft

    full_logits.LOGITS_BUDGET = {"full": 64 * 2**20, "chunked": 0}[side]
    out = Path(tempfile.mkdtemp(dir=root)) / "sft"
    argv = ["--model_name_or_path", base, "--output_dir", str(out), "--max_steps", str(steps)]
    argv += ["--eval_fraction", "0", "--logging_steps", str(steps), "--save_strategy", "no"]
    result = sft.run(sft.parse(str(REPO / "configs/biased/sft.yaml"), argv))
    loss = [e["loss"] for e in result.trainer.state.log_history if "loss" in e][-1]
    return result.metrics["train_runtime"], loss


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    import torch
    import trl

    from hftune.models.tiny import build_tiny_model

    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} thread), "
        f"TRL {trl.__version__}; fp32 on both sides"
    )
    root = Path(tempfile.mkdtemp(prefix="bench-full-logits-"))
    base = root / "base"
    build_tiny_model(base, arch="llama", hidden_size=128, num_layers=2)
    run("full", 5, str(base), root)  # warm-up: imports, first allocations
    times: dict[str, list[float]] = {"chunked": [], "full": []}
    for repeat in range(args.repeats):
        for side in ("chunked", "full") if repeat % 2 == 0 else ("full", "chunked"):
            seconds, loss = run(side, args.steps, str(base), root)
            times[side].append(seconds)
            print(f"  {side:8s} {seconds:6.1f} s for {args.steps} steps, loss at the end {loss:.4f}")
    chunked, full = (statistics.median(times[s]) for s in ("chunked", "full"))
    print(f"median: chunked head {chunked:.1f} s, full logits {full:.1f} s: {full / chunked:.2f}x the time")


if __name__ == "__main__":
    main()
