"""SFT throughput, model FLOPs utilisation (MFU) and peak memory of `hftune sft` vs the same training
written directly against TRL, on a GPU, measured in one run: the ratio hftune / raw TRL.

    python bench/sft_throughput.py                         # Qwen2.5-0.5B architecture, bf16, full FT
    python bench/sft_throughput.py --lora                  # the same with LoRA (r 16, all linear layers)
    python bench/sft_throughput.py --hftune-flags "--use_liger_kernel false"   # a lever off, to see its part
    python bench/sft_throughput.py --num-layers 2 --length 128 --batch 2 --steps 6 --warmup 2   # CPU smoke

Each side runs in a fresh process, alternating, `--repeats` times, started through a small launcher so
that its peak memory is its own (`_common.LAUNCHER`: on CPU a child started from this script would inherit
its peak RSS): "trl" is what a user writes by hand (`AutoModelForCausalLM` loaded in the dtype hftune
trains in on this machine, `SFTConfig` with the same batch, length, learning rate and bf16,
`assistant_only_loss`, TRL's defaults for everything else, a PEFT `LoraConfig` with --lora); "hftune" is
`hftune sft` with its defaults on this machine (on a CUDA GPU with liger-kernel installed: Liger's fused
kernels) plus `--hftune-flags`. Both train in the precision hftune picks (bf16 on a GPU that has it, fp32
otherwise; the model is saved in bf16, as released checkpoints are). Each side reports the dtype its
model's parameters were in after training and whether it autocast, and the script refuses (exit 2) when
the two differ: a ratio across precisions measures the precision. The first lines printed name the
machine, cores, torch threads and library versions; the medians and their ratios are printed last
(`--json PATH` writes them all).

Where the time goes (reading TRL 1.12's SFTTrainer and transformers 5.24, 0.5B x 1024 x 16, bf16): the
output head is the largest single matmul (896 x 151,936, over a quarter of the model's matmul FLOPs) and
its logits the largest activation (16 x 1024 x 151,936 in fp32 is 9.3 GiB). TRL's default `chunked_nll`
loss computes the head on non-ignored tokens only, in checkpointed chunks, which saves that memory but
runs the head's forward twice (once again in backward) and computes per-token entropy and accuracy over
the full vocabulary in every chunk for its logs. Liger's fused linear cross-entropy computes the head, the
loss and its gradient chunk by chunk in one Triton kernel with no second forward and no logits, and its
fused RMSNorm / RoPE / SwiGLU kernels cut the elementwise launches of every layer. The remaining gap to a
compiled plain loop is torch.compile (`torch_compile: true`, off by default until measured here) and
padding: rows of different lengths are padded to the batch's longest unless packed (`packing: true`, BFD
packing, padding-free, kept apart by position ids; attention honours that only with flash attention on a GPU
and, as training runs without the KV cache, with sdpa: the packing probe checks it on the loaded model).
None of this has been measured on a GPU in this project yet: run this script on one.

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
sys.path.insert(0, str(REPO / "bench"))
from _common import (  # noqa: E402
    describe_dtypes,
    header,
    hftune_precision,
    parameter_dtypes,
    refuse_mismatch,
    run_launched,
)

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
                if " " not in messages[-1]["content"]:  # nothing left to trim: it would loop forever
                    sys.exit(f"--length {length} is too short for a chat of four turns; raise it")
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


def child(ns) -> None:
    """One measured run of one side; prints its numbers as JSON on the last line."""
    import resource

    import torch
    from transformers import AutoConfig

    tmp = Path(ns.workdir)
    if ns.child == "hftune":
        from hftune.stages import sft

        argv = [
            "--model_name_or_path", str(tmp / "model"), "--data_recipe", "ultrachat",
            "--data_files", str(tmp / "chats.jsonl"), "--output_dir", str(tmp / "sft-hftune"),
            "--chat_template", "chatml", "--eval_fraction", "0", "--max_length", str(ns.length),
            "--per_device_train_batch_size", str(ns.batch), "--max_steps", str(ns.steps),
            "--learning_rate", "1e-5", "--warmup_steps", "0", "--logging_steps", "1",
            "--save_strategy", "no", "--gradient_checkpointing", str(ns.gradient_checkpointing).lower(),
            "--data_cache", "false",
        ]  # fmt: skip
        argv += (
            ["--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32"]
            if ns.lora
            else ["--use_peft", "false"]
        )
        argv += ns.hftune_flags.split()
        cfg = sft.parse(None, argv)
        trainer = sft.prepare(cfg).trainer
    else:
        from datasets import load_dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        from hftune.models.loading import auto_dtype

        # The precision hftune picks here (bf16 on a GPU that has it, fp32 otherwise), named explicitly: with
        # dtype="auto" the raw side would train the saved bf16 weights on a CPU where hftune trains fp32.
        dtype = auto_dtype(None)
        tokenizer = AutoTokenizer.from_pretrained(tmp / "model")
        args = SFTConfig(
            output_dir=str(tmp / "sft-trl"), per_device_train_batch_size=ns.batch, max_steps=ns.steps,
            learning_rate=1e-5, warmup_steps=0, logging_steps=1, save_strategy="no", max_length=ns.length,
            bf16=dtype == torch.bfloat16, report_to="none", gradient_checkpointing=ns.gradient_checkpointing,
            assistant_only_loss=True,
        )  # fmt: skip
        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(tmp / "model", dtype=dtype),
            args=args,
            train_dataset=load_dataset("json", data_files=str(tmp / "chats.jsonl"), split="train"),
            processing_class=tokenizer,
            peft_config=lora if ns.lora else None,
        )
    clock = StepClock()
    trainer.add_callback(clock.callback)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    marks = [m for m in clock.marks if m[0] >= ns.warmup]
    (s0, t0, n0), (s1, t1, n1) = marks[0], marks[-1]
    tokens_per_s = (n1 - n0) / (t1 - t0)
    config = AutoConfig.from_pretrained(tmp / "model")
    params = json.loads((tmp / "params.json").read_text())["params"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    peak = ns.peak_tflops or next((p for name, p in PEAKS if name in device), None)
    achieved = tokens_per_s * flops_per_token(config, params, ns.length)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    memory = (
        torch.cuda.max_memory_allocated() / 2**30
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    # What the model really trained in, read off its parameters after training, and the autocast around it.
    dtypes = {**parameter_dtypes(trainer.model), "autocast": autocast(trainer.args)}
    print(
        json.dumps(
            {
                "tokens_per_s": tokens_per_s, "tflops": achieved / 1e12,
                "mfu": achieved / (peak * 1e12) if peak else None, "peak_gib": memory, "device": device,
                "dtypes": dtypes, "threads": torch.get_num_threads(), "steps": [s0, s1],
                "loss_first": losses[0], "loss_last": losses[-1],
                "liger": bool(getattr(trainer.args, "use_liger_kernel", False)),
            }
        )
    )  # fmt: skip


def autocast(args) -> str:
    """The mixed precision the Trainer autocasts to ("none" when it trains in the weights' own dtype)."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "none"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--architecture", default=str(REPO / "hftune/architectures/Qwen--Qwen2.5-0.5B.json"))
    parser.add_argument("--num-layers", type=int, default=None, help="fewer layers (smoke runs)")
    parser.add_argument("--length", type=int, default=1024, help="tokens a row (rows fill 95-100%% of it)")
    parser.add_argument("--batch", type=int, default=16, help="per_device_train_batch_size")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the measurement")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--lora", action="store_true", help="LoRA r 16 on all linear layers (both sides)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--hftune-flags", default="", help="extra `hftune sft` flags (levers on or off)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak")
    parser.add_argument("--json", default=None, help="also write the header, every run and the medians here")
    parser.add_argument("--child", choices=("hftune", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        child(ns)
        return

    import statistics

    kind = "LoRA r 16" if ns.lora else "full fine-tuning"
    head = header(f"hftune sft vs raw TRL SFTTrainer, both {hftune_precision()}, {kind}")
    print(head, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        params, tokenizer = build_model(work / "model", Path(ns.architecture), ns.num_layers)
        (work / "params.json").write_text(json.dumps({"params": params}))
        write_chats(work / "chats.jsonl", tokenizer, rows=ns.batch * ns.steps + 8, length=ns.length)
        forwarded = [a for a in sys.argv[1:] if a not in ("--child", "--workdir")]
        runs: dict[str, list[dict]] = {"trl": [], "hftune": []}
        for i in range(ns.repeats):
            for side in ("trl", "hftune"):
                runs[side].append(run_side(side, forwarded, work))
                print(f"run {i + 1} {side:6s}: {run_line(runs[side][-1])}", flush=True)
            refuse_mismatch({side: rs[-1]["dtypes"] for side, rs in runs.items()})
    first = runs["hftune"][0]
    dtypes = " | ".join(f"{side} {describe_dtypes(rs[0]['dtypes'])}" for side, rs in runs.items())
    threads = ", ".join(f"{side} {rs[0]['threads']}" for side, rs in runs.items())
    print(f"device: {first['device']}; trained in: {dtypes}; torch threads: {threads}")
    print(f"{params / 1e6:.1f}M parameters; {kind}; batch {ns.batch} x length {ns.length}")
    med = {
        side: {k: statistics.median(r[k] for r in rs) for k in ("tokens_per_s", "peak_gib")}
        for side, rs in runs.items()
    }
    for side in ("trl", "hftune"):
        mfus = [r["mfu"] for r in runs[side] if r["mfu"] is not None]
        mfu = f", MFU {statistics.median(mfus):.1%}" if mfus else ""
        tokens, peak = med[side]["tokens_per_s"], med[side]["peak_gib"]
        print(f"{side:6s} median: {tokens:,.0f} tokens/s{mfu}, peak {peak:.2f} GiB")
    print(
        f"hftune / raw TRL: tokens/s {med['hftune']['tokens_per_s'] / med['trl']['tokens_per_s']:.2f}x, "
        f"peak memory {med['hftune']['peak_gib'] / med['trl']['peak_gib']:.2f}x"
    )
    if ns.json:
        Path(ns.json).write_text(json.dumps({"header": head, "runs": runs, "medians": med}, indent=1))


def run_side(side: str, forwarded: list[str], work: Path) -> dict:
    """One measured run of `side` in a fresh process started through the small launcher; its JSON line."""
    done = run_launched(
        [sys.executable, __file__, *forwarded, "--child", side, "--workdir", str(work)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"{side} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_line(got: dict) -> str:
    """One run's figures and the precision it trained in."""
    mfu = f", MFU {got['mfu']:.1%}" if got["mfu"] is not None else ""
    return (
        f"{got['tokens_per_s']:,.0f} tokens/s, {got['tflops']:.1f} TFLOP/s{mfu}, "
        f"peak {got['peak_gib']:.2f} GiB, loss {got['loss_first']:.3f} -> {got['loss_last']:.3f}; "
        f"trained in {describe_dtypes(got['dtypes'])}" + (" (liger)" if got["liger"] else "")
    )


if __name__ == "__main__":
    main()
