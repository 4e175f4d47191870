"""A first run of `hftune sft` up to a ready trainer: rows tokenized once by hftune and handed to TRL
(`tokenize_once: true`) vs measured by hftune and tokenized again by TRL (`tokenize_once: false`), in one run
of this script.

    python bench/sft_tokenize_once.py [--rows 20000] [--repeats 2]

The rows are the tiny UltraChat fixture's multi-turn chats, made distinct (as in `data_prepare_cache.py`);
the model is an untrained tiny llama, the tokenizer its byte-level BPE with the ChatML template, `max_length`
256, assistant-only loss. Each side is `sft.prepare` (load, convert, check, measure every row, split, then
TRL's SFTTrainer preparing the dataset: labels, truncation) with the data cache off, so every run is a first
run. After one untimed warm-up run, the sides alternate `--repeats` times with one torch thread; the script
checks that both hand the trainer the same input_ids and labels, and prints the median of each and the
ratio.
"""

from __future__ import annotations

import argparse
import logging
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

from bench.data_prepare_cache import write_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    ns = parser.parse_args()
    logging.disable(logging.WARNING)  # TRL's and datasets' progress chatter is not what is measured
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HFTUNE_CACHE"] = str(Path(tmp) / "cache")
        from hftune.models.tiny import build_tiny_model
        from hftune.stages import sft

        data_file = Path(tmp) / "chats.jsonl"
        write_rows(data_file, ns.rows)
        model = build_tiny_model(Path(tmp) / "model")

        def run(once: bool):
            argv = [
                "--model_name_or_path", str(model), "--data_recipe", "tiny_ultrachat",
                "--data_files", str(data_file), "--output_dir", str(Path(tmp) / f"out-{once}"),
                "--max_length", "256", "--eval_fraction", "0.05", "--data_cache", "false",
                "--tokenize_once", str(once).lower(), "--report_to", "none",
            ]  # fmt: skip
            start = time.perf_counter()
            trainer = sft.prepare(sft.parse(None, argv)).trainer
            return time.perf_counter() - start, trainer

        run(True)  # untimed: the imports and the first model load are paid by neither side
        times: dict[bool, list[float]] = {True: [], False: []}
        labels: dict[bool, list] = {}
        for _ in range(ns.repeats):
            for once in (False, True):
                seconds, trainer = run(once)
                times[once].append(seconds)
                labels[once] = (trainer.train_dataset["input_ids"], trainer.train_dataset["labels"])
        n_train = len(labels[True][0])
        same = labels[True] == labels[False]
        on, off = statistics.median(times[True]), statistics.median(times[False])
        print(f"{ns.rows} rows, {n_train} training rows, first runs (data cache off)")
        print(f"TRL tokenizes again (tokenize_once=false): {off:.2f} s (runs: {_runs(times[False])})")
        print(f"hftune's tokens handed over (tokenize_once=true): {on:.2f} s (runs: {_runs(times[True])})")
        print(f"ratio on/off: {on / off:.2f}; the same input_ids and labels: {same}")


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
