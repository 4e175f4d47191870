"""Running a stage on several processes (`torchrun --nproc_per_node N -m hftune ...`, `accelerate launch
-m hftune ...`, or a pipeline stage with `num_processes: N`).

The engines are the Trainer's and accelerate's own (DDP, FSDP, DeepSpeed); hftune only has to make sure
that what it does outside the trainer happens once: the main process prepares the data and writes the
artifact, manifest and reports while the others wait, and only the main process logs at INFO.

Everything here reads the launcher's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`), so a plain
single-process run never initialises a process group.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main_process() -> bool:
    """Rank 0 of the whole job: the one process that writes artifacts and logs progress."""
    return int(os.environ.get("RANK", "0")) == 0


def is_local_main_process() -> bool:
    """Rank 0 on this machine: the one that prepares data into this machine's work folder."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def node_rank() -> int:
    return int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", "0")))


def sharding() -> str | None:
    """'FSDP' / 'DeepSpeed' when `accelerate launch` started this process with one (it says so in the
    environment), else None."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "FSDP"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "DeepSpeed"
    return None


# accelerate enables FSDP only for GPU setups: on CPU it either fails inside accelerate on every rank or, with
# the config edited to get past that, trains plain copies while the run looks like FSDP.
FSDP_NEEDS_GPU = (
    "FSDP: this machine has no GPU, and accelerate shards with FSDP only on GPUs (on CPU it would fail or "
    "train unsharded while the run says FSDP). On CPU use DDP: `torchrun --nproc_per_node N -m hftune ...` "
    "or `num_processes: N` in a pipeline; DeepSpeed ZeRO runs on CPU as well"
)


def fsdp_without_gpu(sharding_engine: str | None) -> bool:
    return sharding_engine == "FSDP" and not accelerator_available()


# Without a GPU the stages train in fp32 (`bf16` defaults to false there). A launch that asks for bf16 / fp16
# anyway (every shipped configs/accelerate/*.yaml does: they are for GPUs) either fails inside DeepSpeed on
# every rank or trains under CPU autocast while the stage's config says fp32.
LAUNCH_PRECISION = (
    "this launch asks for {0} mixed precision, and on this machine (no GPU) the stage trains in fp32 (the "
    "shipped configs/accelerate/*.yaml are for GPUs): add `--mixed_precision no` to `accelerate launch` (or "
    "use a copy of the config with `mixed_precision: 'no'`), or set `{0}: true` in the stage's config to "
    "train in {0} on the CPU"
)


def precision_without_gpu(launch_precision: str | None, stage_values: dict) -> bool:
    """True when a launch's mixed precision is one the stage will not train in on this GPU-less machine."""
    precision = str(launch_precision).lower()
    return precision in ("bf16", "fp16") and not stage_values.get(precision) and not accelerator_available()


@contextlib.contextmanager
def full_parameters(model) -> Iterator[None]:
    """The model's whole parameters for a forward pass outside the DeepSpeed engine (before training):
    ZeRO-3 partitions them across the processes as the model loads, and only the engine gathers them on
    its own. Every process must enter (the gathering is collective); elsewhere nothing happens."""
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


def accelerator_available() -> bool:
    import torch

    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def _state():
    # accelerate's PartialState sets up the process group from the launcher's environment and is the same
    # (shared) state the Trainer uses later. Its first initialisation wins, so it gets the Trainer's
    # device choice: `cpu=True` without an accelerator, which is also what makes a CPU run distributed
    # (DDP over gloo) rather than N copies of a single-process run.
    from accelerate import PartialState

    return PartialState(cpu=not accelerator_available())


def barrier() -> None:
    if is_distributed():
        _state().wait_for_everyone()


@contextlib.contextmanager
def local_main_first() -> Iterator[None]:
    """The local main process runs the block first (downloads, data preparation, building `tiny:` models);
    the others run it once it is done, so they read what it wrote instead of racing it."""
    if not is_distributed():
        yield
        return
    with _state().local_main_process_first():
        yield


def broadcast(value):
    """`value` as the main process has it, on every process (a small picklable object)."""
    if not is_distributed():
        return value
    from accelerate.utils import broadcast_object_list

    _state()
    return broadcast_object_list([value], from_process=0)[0]


def gather_lists(values: list) -> list:
    """Every process's `values`, concatenated in rank order, on every process."""
    if not is_distributed():
        return list(values)
    from accelerate.utils import gather_object

    _state()
    return list(gather_object(list(values)))
