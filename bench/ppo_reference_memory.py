"""Peak memory of a PPO run whose reference policy is the policy with its LoRA adapter switched off
(hftune's default) vs one that holds a separate reference copy, measured in one run of this script.

    python bench/ppo_reference_memory.py [--hidden 512 --layers 8 --steps 2]

Builds a small local model (random weights are fine for memory), a reward model on it (one step), then
runs `hftune ppo` in fresh processes, identical but for the reference, alternating, `--repeats` times each,
and prints the median process's peak resident memory (and the part above the process's memory once the
libraries are imported) and their ratio. Every loaded model's weights are copied into memory of their own:
transformers memory-maps safetensors, so on CPU a second copy of the same file would otherwise cost
nothing. CUDA peak memory is reported too when a GPU is present.

Each measured process is started through a small launcher (`_common.LAUNCHER`): Linux starts a child's
peak RSS from its parent's, and this script's own peak (it trains the reward model) was larger than a
run's, so runs started from it directly reported this script's peak as theirs and as their baseline.
Each run also reports its peak RSS at its very start (a bare interpreter's, when the launcher did its
work) and the dtypes of its policy and reference weights, printed beside its figures; the script refuses
(exit 2) when they differ between the sides. The first lines printed name the machine, cores, torch
threads and library versions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))
from _common import describe_dtypes, header, refuse_mismatch, run_launched  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Both memory benches' children start with this. transformers memory-maps safetensors: on CPU a second load of
# the same file shares its pages and a separate reference's cost never shows. Every model hftune loads, and
# any the child builds itself (`own_memory`), gets weights in memory of its own, as a GPU gives them when it
# moves them to the device. `start_kb`, the peak RSS before anything is imported, shows that the process's
# figures are its own (a bare interpreter's ~10 MiB, not its parent's peak); argv[3] is bench/, for _common.
OWN_COPIES = r"""
import functools, json, resource, sys
start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sys.path.insert(0, sys.argv[3])
import torch
from _common import parameter_dtypes
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
trainer = rl.run(cfg).trainer
assert (trainer.reference is None) == (sys.argv[2] == "shared")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
dtypes = {
    "policy": parameter_dtypes(rl.trained_policy(trainer)),
    "reference": parameter_dtypes(trainer.reference) if trainer.reference is not None else None,
}
print(json.dumps({
    "peak_kb": peak, "baseline_kb": baseline, "start_kb": start_kb, "cuda_peak": cuda, "dtypes": dtypes,
    "threads": torch.get_num_threads(),
}))
"""
)


def measure(argv: list[str], mode: str, child: str = CHILD) -> dict:
    """Run `child` (a script printing its peak memory as JSON) in a fresh process started through the
    small launcher, so that the memory it reports is its own; its last line, parsed."""
    out = run_launched(
        [sys.executable, "-c", child, json.dumps(argv), mode, str(BENCH)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_dtypes(shared: dict, separate: dict) -> None:
    """Refuse (exit 2) unless both sides trained their policy in one dtype and the separate reference is
    held in the policy's: a reference in another dtype would change the memory it costs."""
    policy, reference = separate["dtypes"]["policy"], separate["dtypes"]["reference"]
    refuse_mismatch({"shared policy": shared["dtypes"]["policy"], "separate policy": policy})
    if reference is not None:
        refuse_mismatch(
            {"policy weights": {"weights": policy["weights"]}, "reference": {"weights": reference["weights"]}}
        )


def describe_run(r: dict) -> str:
    """The dtypes, threads and start RSS a run reported, for its line."""
    reference = r["dtypes"]["reference"]
    ref = f", reference {describe_dtypes(reference)}" if reference else ""
    return (
        f"policy {describe_dtypes(r['dtypes']['policy'])}{ref}; "
        f"{r['threads']} torch threads; RSS at start {r['start_kb'] / 1024:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating")
    ns = parser.parse_args()

    from _common import hftune_precision

    from hftune.models.tiny import build_tiny_model
    from hftune.stages import reward

    compares = (
        "hftune ppo, LoRA policy, its reference = the policy with the adapter off (shared) vs a separate "
        f"frozen copy, both {hftune_precision()}; each run's own peak RSS (started through a small launcher)"
    )
    print(header(compares), flush=True)
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
    for rs in zip(runs["shared"], runs["separate"], strict=True):
        check_dtypes(*rs)

    def mib(kb: int) -> float:
        return kb / 1024

    params = ns.hidden * ns.hidden * 12 * ns.layers / 1e6  # rough: 4 attention + 3 MLP (2x) matrices a layer
    dtype = shared["dtypes"]["policy"]["weights"]
    print(f"model: hidden {ns.hidden}, {ns.layers} layers (~{params:.0f}M parameters in the blocks), {dtype}")
    for name, r in (("shared LoRA reference", shared), ("separate reference copy", separate)):
        extra = f", CUDA peak {r['cuda_peak'] / 2**20:.0f} MiB" if r["cuda_peak"] else ""
        print(
            f"{name:24s} peak RSS {mib(r['peak_kb']):7.0f} MiB "
            f"(above imports {mib(r['peak_kb'] - r['baseline_kb']):6.0f} MiB){extra}; {describe_run(r)}"
        )
    ratio = shared["peak_kb"] / separate["peak_kb"]
    above = (shared["peak_kb"] - shared["baseline_kb"]) / (separate["peak_kb"] - separate["baseline_kb"])
    print(f"peak memory ratio shared / separate: {ratio:.3f} (above imports: {above:.3f})")
    if shared["cuda_peak"] and separate["cuda_peak"]:
        print(f"CUDA peak ratio shared / separate: {shared['cuda_peak'] / separate['cuda_peak']:.3f}")


if __name__ == "__main__":
    main()
