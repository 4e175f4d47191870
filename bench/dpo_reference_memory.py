"""Peak memory of a LoRA DPO run whose reference is the policy with its adapter switched off (hftune's
default) vs the same run holding a separate reference copy, measured in one run of this script.

    python bench/dpo_reference_memory.py [--hidden 512 --layers 8 --steps 2 --repeats 2]

Builds a small local model (random weights are fine for memory), then runs `hftune dpo` in fresh
processes, identical but for the reference, alternating the two sides `--repeats` times, and prints each
process's peak resident memory (and the part above the process's memory once the libraries are imported),
and the ratio of the medians. Every model's weights are copied into memory of their own (see
`ppo_reference_memory.OWN_COPIES`: on CPU a memory-mapped second copy would cost nothing). CUDA peak memory
is reported too when a GPU is present.

Each measured process is started through a small launcher (`_common.LAUNCHER`), so that its peak RSS and
its baseline are its own and not this script's (Linux starts a child's peak RSS from its parent's). The
separate reference is loaded in the dtype hftune loads the policy in, and each run reports the dtypes of
its policy and reference weights; the script refuses (exit 2) when they differ. The first lines printed
name the machine, cores, torch threads and library versions.
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
sys.path.insert(0, str(REPO / "bench"))
from _common import header, hftune_precision  # noqa: E402
from ppo_reference_memory import OWN_COPIES, check_dtypes, describe_run, measure  # noqa: E402 (the same)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHILD = (
    OWN_COPIES
    + r"""
from hftune.stages import dpo as po
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
argv, mode = json.loads(sys.argv[1]), sys.argv[2]
if mode == "separate":
    from transformers import AutoModelForCausalLM
    trainer_class = po._trainer_class
    def with_reference(algorithm):
        # What a run without LoRA's switch does: a second, frozen copy of the weights as the reference, in
        # the dtype hftune loads the policy in (the reported dtypes check that they agree).
        path = argv[argv.index("--model_name_or_path") + 1]
        dtype = loading.auto_dtype(None)
        reference = own_memory(AutoModelForCausalLM.from_pretrained(path, dtype=dtype))
        cls = trainer_class(algorithm)
        return lambda **kwargs: cls(ref_model=reference.eval().requires_grad_(False), **kwargs)
    po._trainer_class = with_reference
trainer = po.run(po.parse(None, argv)).trainer
assert (trainer.ref_model is None) == (mode == "shared")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
dtypes = {
    "policy": parameter_dtypes(trainer.model),
    "reference": parameter_dtypes(trainer.ref_model) if trainer.ref_model is not None else None,
}
print(json.dumps({
    "peak_kb": peak, "baseline_kb": baseline, "start_kb": start_kb, "cuda_peak": cuda, "dtypes": dtypes,
    "threads": torch.get_num_threads(),
}))
"""
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    ns = parser.parse_args()

    from hftune.models.tiny import build_tiny_model

    compares = (
        "hftune dpo, LoRA policy, its reference = the policy with the adapter off (shared) vs a separate "
        f"frozen copy, both {hftune_precision()}; each run's own peak RSS (started through a small launcher)"
    )
    print(header(compares), flush=True)
    runs: dict[str, list[dict]] = {"shared": [], "separate": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = build_tiny_model(Path(tmp) / "base", hidden_size=ns.hidden, num_layers=ns.layers)
        for k in range(ns.repeats):
            for mode in ("shared", "separate") if k % 2 == 0 else ("separate", "shared"):
                argv = [
                    "--model_name_or_path", str(base), "--data_recipe", "tiny_preferences",
                    "--max_samples", "64", "--max_steps", str(ns.steps), "--per_device_train_batch_size", "8",
                    "--max_length", "128", "--output_dir", str(Path(tmp) / f"dpo-{mode}-{k}"),
                    "--use_peft", "true", "--lora_target_modules", "all-linear",
                ]  # fmt: skip
                runs[mode].append(measure(argv, mode, CHILD))
    for pair in zip(runs["shared"], runs["separate"], strict=True):
        check_dtypes(*pair)

    def mib(kb: float) -> float:
        return kb / 1024

    params = ns.hidden * ns.hidden * 12 * ns.layers / 1e6  # rough: 4 attention + 3 MLP (2x) matrices a layer
    dtype = runs["shared"][0]["dtypes"]["policy"]["weights"]
    print(f"model: hidden {ns.hidden}, {ns.layers} layers (~{params:.0f}M parameters in the blocks), {dtype}")
    medians = {}
    for mode, name in (("shared", "adapter-off reference"), ("separate", "separate reference copy")):
        peaks = [r["peak_kb"] for r in runs[mode]]
        above = [r["peak_kb"] - r["baseline_kb"] for r in runs[mode]]
        medians[mode] = (statistics.median(peaks), statistics.median(above))
        cuda = [r["cuda_peak"] for r in runs[mode] if r["cuda_peak"]]
        extra = f", CUDA peak {statistics.median(cuda) / 2**20:.0f} MiB" if cuda else ""
        print(
            f"{name:24s} peak RSS {', '.join(f'{mib(p):.0f}' for p in peaks)} MiB "
            f"(above imports {', '.join(f'{mib(a):.0f}' for a in above)} MiB){extra}; "
            f"{describe_run(runs[mode][0])}"
        )
    (shared, shared_above), (separate, separate_above) = medians["shared"], medians["separate"]
    print(
        f"peak memory ratio adapter-off / separate (medians): {shared / separate:.3f} "
        f"(above imports: {shared_above / separate_above:.3f})"
    )


if __name__ == "__main__":
    main()
