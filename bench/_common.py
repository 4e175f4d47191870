"""What every bench shares: the header naming the machine, threads, library versions and the two sides
compared (a figure means nothing without them), the dtypes a side actually trained in (read from the
model's parameters, not from the flags that should have set them), and a measurement of a child process's
own peak memory.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections import Counter
from importlib import metadata

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")

# Started between the bench and each measured child so that the child's memory figures are its own.
# Linux keeps a process's peak RSS (ru_maxrss) across execve and starts a forked child's from its parent's
# peak, so a child started straight from the bench (which built models and imported everything) reports at
# least the bench's own peak, both as its peak and as its "after imports" baseline. This launcher's peak is
# that of a bare interpreter, so the child it starts begins from that.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), or what `platform` knows elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    """The cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def versions() -> str:
    """`torch 2.x, transformers 5.x, ...` for the libraries installed."""
    found = []
    for name in LIBRARIES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def header(compares: str) -> str:
    """Two lines naming where and what a bench measures: machine, cores, threads and versions, then the
    two sides compared."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    return (
        f"machine: {platform.node()}; CPU {cpu_name()}; GPU {gpu}; {cores()} cores available; "
        f"torch threads {torch.get_num_threads()} (OMP_NUM_THREADS={omp}); "
        f"python {platform.python_version()}; {versions()}\ncompares: {compares}"
    )


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def hftune_precision() -> str:
    """The dtype hftune trains in on this machine by default (bfloat16 on a GPU that has it, else float32)."""
    from hftune.models.loading import auto_dtype

    return dtype_name(auto_dtype(None))


def parameter_dtypes(model) -> dict[str, str | None]:
    """The dtype holding most of the model's parameters ("weights") and of those it trains ("trainable",
    None when nothing trains), by element count: the precision the model was really trained in, whatever
    a flag asked for (a LoRA adapter may sit in float32 on bfloat16 weights)."""
    weights: Counter[str] = Counter()
    trainable: Counter[str] = Counter()
    for p in model.parameters():
        weights[dtype_name(p.dtype)] += p.numel()
        if p.requires_grad:
            trainable[dtype_name(p.dtype)] += p.numel()
    return {
        "weights": weights.most_common(1)[0][0] if weights else None,
        "trainable": trainable.most_common(1)[0][0] if trainable else None,
    }


def describe_dtypes(dtypes: dict[str, str | None]) -> str:
    """`float32` or `bfloat16 (trainable float32)`, plus the autocast precision when one is given."""
    out = str(dtypes["weights"])
    if dtypes.get("trainable") not in (None, dtypes["weights"]):
        out += f" (trainable {dtypes['trainable']})"
    if dtypes.get("autocast"):
        out += f", autocast {dtypes['autocast']}"
    return out


def dtype_mismatch(sides: dict[str, dict[str, str | None]]) -> str | None:
    """One line naming how the sides' dtypes differ, or None when they all match: a speed or memory ratio
    between runs in different precisions measures the precision, not the code."""
    distinct = {json.dumps(d, sort_keys=True) for d in sides.values()}
    if len(distinct) <= 1:
        return None
    named = "; ".join(f"{side} {describe_dtypes(d)}" for side, d in sides.items())
    return f"the sides trained in different precisions ({named}): their figures do not compare"


def refuse_mismatch(sides: dict[str, dict[str, str | None]]) -> None:
    """Exit 2 with one line when the sides' dtypes differ."""
    problem = dtype_mismatch(sides)
    if problem:
        print(f"refused: {problem}", file=sys.stderr)
        sys.exit(2)


def run_launched(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run(argv)` through `LAUNCHER`, so the child's ru_maxrss starts from a bare
    interpreter's and not from this process's peak."""
    return subprocess.run([sys.executable, "-c", LAUNCHER, *argv], **kwargs)
