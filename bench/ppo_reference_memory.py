"""Peak memory of a PPO run whose reference policy is the policy with its LoRA adapter switched off
(hftune's default) vs one that holds a separate reference copy, measured in one run of this script.

    python bench/ppo_reference_memory.py [--hidden 512 --layers 8 --steps 2]

Builds a small local model (random weights are fine for memory), a reward model on it (one step), then
runs `hftune ppo` in fresh processes, identical but for the reference, alternating, `--repeats` times each,
and prints the median process's peak resident memory (and the part above the process's memory once the
libraries are imported) and their ratio. Every loaded model's weights are copied into memory of their own:
transformers memory-maps safetensors, so on CPU a second copy of the same file would otherwise cost
nothing. CUDA peak memory is reported too when a GPU is present.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Both memory benches' children start with this. transformers memory-maps safetensors: on CPU a second load of
# the same file shares its pages and a separate reference's cost never shows. Every model hftune loads, and
# any the child builds itself (`own_memory`), gets weights in memory of its own, as a GPU gives them when it
# moves them to the device.
OWN_COPIES = r"""
import functools, json, resource, sys
import torch
from hftune.models import loading
def own_memory(model):
    for p in model.parameters():
        p.data = p.data.clone()
    return model
_load = loading.load_model
loading.load_model = lambda *args, **kwargs: own_memory(_load(*args, **kwargs))
"""

CHILD = (
    OWN_COPIES
    + r"""
from hftune.stages import ppo as rl
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[2] == "separate":
    rl._ppo_trainer = functools.partial(rl._ppo_trainer, separate_reference=True)
cfg = rl.parse(None, json.loads(sys.argv[1]))
rl.run(cfg)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
print(json.dumps({"peak_kb": peak, "baseline_kb": baseline, "cuda_peak": cuda}))
"""
)


def measure(argv: list[str], mode: str, child: str = CHILD) -> dict:
    """Run `child` (a script printing its peak memory as JSON) in a fresh process; its last line, parsed."""
    out = subprocess.run(
        [sys.executable, "-c", child, json.dumps(argv), mode], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating")
    ns = parser.parse_args()

    from hftune.models.tiny import build_tiny_model
    from hftune.stages import reward

    with tempfile.TemporaryDirectory() as tmp:
        base = build_tiny_model(Path(tmp) / "base", hidden_size=ns.hidden, num_layers=ns.layers)
        rm = Path(tmp) / "rm"
        reward_argv = [
            "--model_name_or_path",
            str(base),
            "--output_dir",
            str(rm),
            "--max_steps",
            "1",
            "--max_samples",
            "40",
        ]
        reward.run(reward.parse(str(REPO / "configs/tiny/reward.yaml"), reward_argv))
        argv = [
            "--model_name_or_path",
            str(base),
            "--reward_model_path",
            str(rm),
            "--data_recipe",
            "tiny_alpaca",
            "--max_samples",
            "64",
            "--max_steps",
            str(ns.steps),
            "--per_device_train_batch_size",
            "8",
            "--response_length",
            "16",
            "--heldout_every",
            "0",
            "--output_dir",
            str(Path(tmp) / "ppo"),
            "--use_peft",
            "true",
            "--lora_target_modules",
            "all-linear",
            "--normalize_rewards",
            "false",
        ]
        runs: dict[str, list[dict]] = {"shared": [], "separate": []}
        for _ in range(ns.repeats):  # alternating, each in a fresh process
            for mode in runs:
                runs[mode].append(measure(argv, mode))
        # The median run of each side by peak memory (its own numbers kept together).
        shared, separate = (sorted(rs, key=lambda r: r["peak_kb"])[len(rs) // 2] for rs in runs.values())

    def mib(kb: int) -> float:
        return kb / 1024

    params = ns.hidden * ns.hidden * 12 * ns.layers / 1e6  # rough: 4 attention + 3 MLP (2x) matrices a layer
    print(f"model: hidden {ns.hidden}, {ns.layers} layers (~{params:.0f}M parameters in the blocks), fp32")
    for name, r in (("shared LoRA reference", shared), ("separate reference copy", separate)):
        extra = f", CUDA peak {r['cuda_peak'] / 2**20:.0f} MiB" if r["cuda_peak"] else ""
        print(
            f"{name:24s} peak RSS {mib(r['peak_kb']):7.0f} MiB "
            f"(above imports {mib(r['peak_kb'] - r['baseline_kb']):6.0f} MiB){extra}"
        )
    ratio = shared["peak_kb"] / separate["peak_kb"]
    above = (shared["peak_kb"] - shared["baseline_kb"]) / (separate["peak_kb"] - separate["baseline_kb"])
    print(f"peak memory ratio shared / separate: {ratio:.3f} (above imports: {above:.3f})")
    if shared["cuda_peak"] and separate["cuda_peak"]:
        print(f"CUDA peak ratio shared / separate: {shared['cuda_peak'] / separate['cuda_peak']:.3f}")


if __name__ == "__main__":
    main()
