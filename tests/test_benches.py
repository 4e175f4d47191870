"""The benches compare like with like: both sides of `bench/sft_throughput.py` and of the reference-memory
benches train in one precision (read off each side's model and printed), a mismatch is refused, and a
measured child's memory is its own rather than inherited from the bench that started it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"

# A Qwen2 small enough to train on CPU in seconds; its vocabulary holds the tiny tokenizer's ids.
TINY_QWEN2 = {
    "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
    "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
    "max_position_embeddings": 512, "vocab_size": 1024, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
}  # fmt: skip


def load_common():
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = load_common()


def bench(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout, check=False,
    )  # fmt: skip


def test_dtype_mismatch_names_the_sides_that_differ():
    fp32 = {"weights": "float32", "trainable": "float32", "autocast": "none"}
    assert common.dtype_mismatch({"trl": fp32, "hftune": dict(fp32)}) is None
    bf16 = {"weights": "bfloat16", "trainable": "bfloat16", "autocast": "none"}
    problem = common.dtype_mismatch({"trl": bf16, "hftune": fp32})
    assert "trl bfloat16, autocast none" in problem and "hftune float32, autocast none" in problem
    # The same weights under a different autocast is a different precision too.
    assert common.dtype_mismatch({"trl": fp32, "hftune": {**fp32, "autocast": "bf16"}})


def test_refuse_mismatch_exits_2_with_one_line(capsys):
    common.refuse_mismatch({"a": {"weights": "float32"}, "b": {"weights": "float32"}})  # agrees: returns
    with pytest.raises(SystemExit) as exit_:
        common.refuse_mismatch({"a": {"weights": "float32"}, "b": {"weights": "bfloat16"}})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("refused: ")


def test_parameter_dtypes_reads_the_parameters_not_a_flag():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 2)).to(torch.bfloat16)
    model.requires_grad_(False)
    model[1].to(torch.float32).requires_grad_(True)  # a small float32 trainable part, like a LoRA adapter
    assert common.parameter_dtypes(model) == {"weights": "bfloat16", "trainable": "float32"}
    assert common.describe_dtypes(common.parameter_dtypes(model)) == "bfloat16 (trainable float32)"


def test_header_names_machine_threads_versions_and_sides():
    head = common.header("A vs B, float32")
    assert f"{common.cores()} cores available" in head and "torch threads " in head
    assert "torch " in head and "transformers " in head and head.endswith("compares: A vs B, float32")


@pytest.mark.integration
def test_launched_child_reports_its_own_peak_memory():
    """Linux starts a child's ru_maxrss from its parent's peak: a child started straight from a process
    that once held 300 MiB reports at least that; one started through the launcher, a bare interpreter's."""
    held = bytearray(300 * 2**20)
    held[::4096] = b"\1" * len(held[::4096])  # touch every page so it is resident
    probe = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"
    launched = common.run_launched([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    direct = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    del held
    assert int(launched.stdout) < 100
    assert int(direct.stdout) >= 300  # what the launcher is there for (if this fails, the kernel changed)


@pytest.mark.integration
@pytest.mark.slow(35)
def test_sft_throughput_sides_train_in_one_precision(tmp_path):
    """The CPU smoke run: raw TRL and hftune both report the dtype they trained in, float32 on CPU."""
    architecture = tmp_path / "tiny-qwen2.json"
    architecture.write_text(json.dumps(TINY_QWEN2))
    out = tmp_path / "sft.json"
    done = bench(
        "sft_throughput.py", "--architecture", str(architecture), "--length", "128", "--batch", "2",
        "--steps", "3", "--warmup", "1", "--repeats", "1", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    trl, hftune = result["runs"]["trl"][0]["dtypes"], result["runs"]["hftune"][0]["dtypes"]
    expected = common.hftune_precision()  # float32 on CPU (where the raw side used to train bfloat16)
    assert trl == hftune and trl["weights"] == expected, (trl, hftune)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "torch threads 1" in lines[0]
    assert lines[1] == f"compares: hftune sft vs raw TRL SFTTrainer, both {expected}, full fine-tuning"
    precision = common.describe_dtypes(trl)
    assert f"trained in: trl {precision} | hftune {precision};" in done.stdout


@pytest.mark.integration
@pytest.mark.slow(50)
def test_dpo_reference_memory_runs_are_measured_from_their_own_start():
    """Each run starts from a bare interpreter's RSS and holds its reference in its policy's dtype."""
    done = bench(
        "dpo_reference_memory.py", "--hidden", "64", "--layers", "2", "--steps", "1", "--repeats", "1"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("machine: ")
    starts = [int(m) for m in re.findall(r"RSS at start (\d+) MiB", done.stdout)]
    assert len(starts) == 2 and all(s < 100 for s in starts), done.stdout  # a bare interpreter, not the bench
    expected = common.hftune_precision()
    assert f"policy {expected};" in done.stdout and f"policy {expected}, reference {expected};" in done.stdout
