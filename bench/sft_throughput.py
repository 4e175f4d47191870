"""SFT throughput and model FLOPs utilisation (MFU) of `hftune sft` on a GPU, measured in one run.

    python bench/sft_throughput.py                         # Qwen2.5-0.5B architecture, bf16, full FT
    python bench/sft_throughput.py --num-layers 2 --length 128 --batch 2 --steps 6   # a CPU smoke run

The model is built from its architecture (hftune's copy of Qwen2.5-0.5B's config.json, ~0.49B parameters)
with random weights, so nothing is downloaded; the tokenizer is hftune's tiny BPE one (its ids are a
subset of the model's vocabulary, so the embedding and output head keep their real size and cost). The
data are synthetic multi-turn chats in UltraChat's schema, long enough that every row fills `--length`
tokens. Training goes through `hftune sft` itself (parse, prepare, TRL's SFTTrainer), full fine-tuning
in the precision hftune picks (bf16 on a GPU that has it), assistant-only loss.

Throughput counts the tokens TRL reports (`num_tokens`: prompts and replies, padding excluded) between
the end of the warm-up steps and the last step, over the wall time between them (each logged step ends
in a GPU sync). MFU = achieved model FLOP/s / the GPU's dense bf16 peak, with the PaLM appendix B count
per token: 6 x N + 12 x layers x hidden x length, N the parameters that do matrix work (everything but
the input embedding; a tied output head counts once, as a matmul). The peak is looked up from the GPU's name
(H100/H200 SXM 989 TFLOP/s, H100 PCIe 756, A100 312) or given with --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched on the device name.
PEAKS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4), ("A100", 312.0))


def build_model(folder: Path, architecture: Path, num_layers: int | None):
    """Random weights of the architecture (optionally fewer layers) + the tiny tokenizer; the model's
    parameter count and the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hftune.models.tiny import default_corpus, train_tokenizer
    from hftune.models.tokenizer import load_tokenizer

    values = json.loads(architecture.read_text())
    if num_layers:  # before the config derives per-layer settings from the count
        values.update(num_hidden_layers=num_layers, max_window_layers=num_layers)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    tokenizer = train_tokenizer(default_corpus(), 1024)
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    config.bos_token_id = None
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    # Sized with the tokenizer as hftune loads it (transformers picks the tokenizer class by model type).
    return sum(p.numel() for p in model.parameters()), load_tokenizer(str(folder), chat_template="chatml")


def write_chats(path: Path, tokenizer, rows: int, length: int, seed: int = 0) -> None:
    """Multi-turn chats in UltraChat's schema that each fill `length` tokens (95-100% of it, rendered with
    the chat template): hftune drops rows over `max_length` rather than cutting them."""
    from hftune.models.tiny import default_corpus

    rng = random.Random(seed)
    words = sorted({w for line in default_corpus() for w in line.split()})

    def size(messages) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    def chat(n: int) -> list[dict[str, str]]:
        return [
            {"role": "user" if turn % 2 == 0 else "assistant", "content": " ".join(rng.choices(words, k=n))}
            for turn in range(4)
        ]

    per_word = size(chat(200)) / 800
    with path.open("w") as f:
        for _ in range(rows):
            messages = chat(max(4, int(length / (4 * per_word))))
            while size(messages) > length:  # trim the last reply until the chat fits
                messages[-1]["content"] = messages[-1]["content"].rsplit(" ", 8)[0]
            f.write(json.dumps({"messages": messages}) + "\n")


class StepClock:
    """Wall time and TRL's cumulative trained-token count at every logged step."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "num_tokens" in logs:
                    clock.marks.append((state.global_step, time.perf_counter(), float(logs["num_tokens"])))

        self.marks: list[tuple[int, float, float]] = []
        self.callback = Callback()


def flops_per_token(model_config, params: int, length: int) -> float:
    embedding = model_config.vocab_size * model_config.hidden_size
    matmul_params = params - embedding
    if getattr(model_config, "tie_word_embeddings", False):
        matmul_params += embedding  # the tied output head is a matmul even though its weights are shared
    return 6 * matmul_params + 12 * model_config.num_hidden_layers * model_config.hidden_size * length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--architecture", default=str(REPO / "hftune/architectures/Qwen--Qwen2.5-0.5B.json"))
    parser.add_argument("--num-layers", type=int, default=None, help="fewer layers (smoke runs)")
    parser.add_argument("--length", type=int, default=1024, help="tokens a row (rows are truncated to it)")
    parser.add_argument("--batch", type=int, default=16, help="per_device_train_batch_size")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the measurement")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak")
    ns = parser.parse_args()

    import torch
    from transformers import AutoConfig

    from hftune.stages import sft

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params, tokenizer = build_model(tmp / "model", Path(ns.architecture), ns.num_layers)
        write_chats(tmp / "chats.jsonl", tokenizer, rows=ns.batch * ns.steps + 8, length=ns.length)
        argv = [
            "--model_name_or_path", str(tmp / "model"), "--data_recipe", "ultrachat",
            "--data_files", str(tmp / "chats.jsonl"), "--output_dir", str(tmp / "sft"),
            "--chat_template", "chatml", "--use_peft", "false", "--eval_fraction", "0",
            "--max_length", str(ns.length),
            "--per_device_train_batch_size", str(ns.batch), "--max_steps", str(ns.steps),
            "--learning_rate", "1e-5", "--warmup_steps", "0", "--logging_steps", "1",
            "--save_strategy", "no", "--gradient_checkpointing", str(ns.gradient_checkpointing).lower(),
        ]  # fmt: skip
        cfg = sft.parse(None, argv)
        prepared = sft.prepare(cfg)
        clock = StepClock()
        prepared.trainer.add_callback(clock.callback)
        prepared.trainer.train()
        config = AutoConfig.from_pretrained(tmp / "model")

    marks = [m for m in clock.marks if m[0] >= ns.warmup]
    (s0, t0, n0), (s1, t1, n1) = marks[0], marks[-1]
    tokens_per_s = (n1 - n0) / (t1 - t0)
    achieved = tokens_per_s * flops_per_token(config, params, ns.length)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    peak = ns.peak_tflops or next((p for name, p in PEAKS if name in device), None)
    print(f"device: {device}; precision: {'bf16' if cfg.training.bf16 else 'fp32'}")
    print(f"model: {params / 1e6:.1f}M parameters ({config.num_hidden_layers} layers), full fine-tuning")
    print(
        f"batch {ns.batch} x length {ns.length}; measured steps {s0}..{s1} ({s1 - s0} steps, {t1 - t0:.2f} s)"
    )
    print(f"throughput: {tokens_per_s:,.0f} tokens/s (prompts and replies, padding excluded)")
    print(f"model FLOPs: {achieved / 1e12:.1f} TFLOP/s")
    if peak:
        print(f"MFU: {achieved / (peak * 1e12):.1%} of {peak:.0f} TFLOP/s dense bf16 peak")
    else:
        print("MFU: n/a (no known peak for this device; pass --peak-tflops)")


if __name__ == "__main__":
    main()
