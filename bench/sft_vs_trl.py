"""hftune sft vs the same training written directly against TRL: steps/s ratio, measured in one run.

    python bench/sft_vs_trl.py [--steps 40] [--repeats 2]

Both train the same tiny local Llama (LoRA r=8 on all linear layers, assistant-only loss) on the same
synthetic alpaca-style rows with the same hyper-parameters; each is run `--repeats` times,
alternating, and the best steps/s of each is compared (TRL's own `train_steps_per_second`, so model
loading and data preparation are excluded on both sides).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

COMMON = dict(
    max_length=256,
    per_device_train_batch_size=8,
    learning_rate=5e-3,
    warmup_steps=0,
    logging_steps=10,
    seed=42,
    report_to="none",
    save_strategy="no",
    bf16=False,
)


def raw_trl(model_path: str, rows: list[dict], steps: int, out: str) -> tuple[float, int]:
    """What a user writes by hand with TRL + PEFT."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    messages = []
    for r in rows:
        user = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        messages.append(
            {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]}
        )
    args = SFTConfig(output_dir=out, max_steps=steps, assistant_only_loss=True, **COMMON)
    peft = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(messages),
        processing_class=tokenizer,
        peft_config=peft,
    )
    steps_per_s = trainer.train().metrics["train_steps_per_second"]
    return steps_per_s, _tokens_seen(trainer.state.log_history)


def hftune_sft(model_path: str, data_file: str, steps: int, out: str) -> tuple[float, int]:
    from hftune.stages import sft

    argv = [
        "--model_name_or_path",
        model_path,
        "--data_recipe",
        "tiny_alpaca",
        "--data_files",
        data_file,
        "--eval_fraction",
        "0",
        "--max_steps",
        str(steps),
        "--output_dir",
        out,
        "--save_strategy",
        "no",
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
        "--lora_dropout",
        "0",
    ]
    for key, value in COMMON.items():
        argv += [f"--{key}", str(value)]
    result = sft.run(sft.parse(None, argv))
    return result.metrics["train_steps_per_second"], _tokens_seen(result.trainer.state.log_history)


def _tokens_seen(log_history: list[dict]) -> int:
    """Tokens trained on, from TRL's logs: equal on both sides means both did the same work."""
    return max(int(entry.get("num_tokens", 0)) for entry in log_history)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    ns = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from hftune.models.tiny import resolve_tiny

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model_path = resolve_tiny("tiny:llama")
    data_file = str(REPO / "data_recipes/fixtures/alpaca.jsonl")
    rows = [json.loads(line) for line in Path(data_file).read_text().splitlines()]
    results: dict[str, list[float]] = {"trl": [], "hftune": []}
    tokens: dict[str, set[int]] = {"trl": set(), "hftune": set()}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(ns.repeats):
            for name, fn, source in (("trl", raw_trl, rows), ("hftune", hftune_sft, data_file)):
                steps_per_s, n_tokens = fn(model_path, source, ns.steps, f"{tmp}/{name}{i}")
                results[name].append(round(steps_per_s, 3))
                tokens[name].add(n_tokens)
    best = {k: max(v) for k, v in results.items()}
    median = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
    print(f"tokens trained per run  raw TRL: {sorted(tokens['trl'])}  hftune: {sorted(tokens['hftune'])}")
    print(f"steps/s runs  raw TRL: {results['trl']}  hftune: {results['hftune']}")
    print(
        f"hftune / raw TRL steps-per-second ratio: best {best['hftune'] / best['trl']:.3f}, "
        f"median {median['hftune'] / median['trl']:.3f}"
    )


if __name__ == "__main__":
    main()
