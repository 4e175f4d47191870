"""Per-process memory estimates for a stage, printed by `hftune pipeline --dry-run` before anything runs.

The model is built from its config on PyTorch's `meta` device (no weights are read or allocated), so the
parameter and LoRA counts are exact; the rest is the usual arithmetic, to tell whether a stage fits a GPU:

- weights: parameters x bytes per parameter (4 fp32, 2 bf16/fp16); bitsandbytes quantizes only the
  linear layers inside the blocks (~0.55 bytes each in 4-bit NF4, 1 in 8-bit), embeddings, norms and the
  output head stay in the compute precision;
- trainable state: gradients (4 bytes) and AdamW's two moments (8 bytes) per trainable parameter, plus an
  fp32 master copy (4 bytes) when all weights train in 16-bit;
- activations: per layer ~34 x batch x length x hidden bytes in 16-bit (Korthikanti et al., 2022, without
  recomputation; twice that in fp32), or only the layer inputs (2 x batch x length x hidden) with
  gradient checkpointing, which a config that leaves `gradient_checkpointing` unset (`auto`) turns on only
  where the estimate without it exceeds 80% of the memory the stage trains in (`decide_checkpointing`);
- logits: batch x length x vocabulary in fp32 (the loss upcasts them), which dominates activations for
  large vocabularies at short lengths; a reward model's one score needs none.

PPO holds the policy (its reference is the same weights with the LoRA adapter off), a value model that
trains in full (from the reward model) and the frozen reward model; RLOO/GRPO drop the value model. The
preference stages (DPO, KTO, ORPO, SimPO) run every pair's two replies through the model, doubling the
activations and logits; DPO and KTO without LoRA also hold a frozen reference copy. These
are estimates for one process without sharding: FSDP/ZeRO-3 divide weights and trainable state by the
number of processes.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 1024**3
# The share of the device's memory the estimate without gradient checkpointing may take before `auto` turns
# it on: the estimate leaves out the CUDA context, allocator fragmentation and temporaries (~10-20%).
CHECKPOINTING_SHARE = 0.8


@dataclass(frozen=True)
class Checkpointing:
    """Whether a stage trains with gradient checkpointing, and why (for the plan and the stage's log)."""

    on: bool
    why: str

    def describe(self) -> str:
        return f"gradient checkpointing {'on' if self.on else 'off'} ({self.why})"


@dataclass
class Estimate:
    params: int
    trainable: int
    weights: float  # bytes
    trainable_state: float
    activations: float
    logits: float
    extra: dict[str, float]  # other models the stage holds (value, reward), bytes
    dtype: str
    checkpointing: Checkpointing | None = None  # None: the activations assume none, with no decision made

    @property
    def total(self) -> float:
        return self.weights + self.trainable_state + self.activations + self.logits + sum(self.extra.values())

    def describe(self) -> str:
        parts = [
            f"{_count(self.params)} params in {self.dtype}",
            f"weights {_size(self.weights)}",
            f"{_count(self.trainable)} trainable -> grads+optimizer {_size(self.trainable_state)}",
            f"activations {_size(self.activations)}",
            *([f"logits {_size(self.logits)}"] if self.logits else []),
            *(f"{name} {_size(size)}" for name, size in self.extra.items()),
            *([self.checkpointing.describe()] if self.checkpointing else []),
        ]
        return f"~{_size(self.total)} per process ({'; '.join(parts)})"


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def meta_model(config, *, sequence_classification: bool = False):
    """The model a config describes, on the meta device: shapes without memory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForCausalLM
    if sequence_classification:
        config = copy.deepcopy(config)
        config.num_labels = 1  # a reward model's one score
        cls = AutoModelForSequenceClassification
    with torch.device("meta"):
        return cls.from_config(config)


def lora_parameters(model, r: int, target_modules: Any) -> int:
    """LoRA's A and B for every targeted linear layer: r x (in + out) each ("all-linear": every linear
    layer but the output head, as PEFT does)."""
    import torch

    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.split(".")[-1] in ("lm_head", "score"):
            continue
        leaf = name.split(".")[-1]
        if target_modules in (None, "all-linear") or leaf in (target_modules or []):
            total += r * (module.in_features + module.out_features)
    return total


def _compute_precision(training_args) -> tuple[float, str]:
    if getattr(training_args, "bf16", False) or getattr(training_args, "fp16", False):
        return 2.0, "bf16" if training_args.bf16 else "fp16"
    return 4.0, "fp32"


def _quantized_parameters(model) -> int:
    """Parameters bitsandbytes quantizes: the weights of linear layers, but not the output head (transformers
    keeps it, like the embeddings and norms, in the compute precision)."""
    import torch

    heads = {id(model.get_output_embeddings())}
    heads.add(id(getattr(model, "score", None)))  # a reward model's one-score head
    return sum(
        module.weight.numel()
        for module in model.modules()
        if isinstance(module, torch.nn.Linear) and id(module) not in heads
    )


def weight_bytes(model, model_args, training_args) -> tuple[float, str]:
    """Bytes the frozen or trained weights take, and the precision's name."""
    params = sum(p.numel() for p in model.parameters())
    per_param, dtype = _compute_precision(training_args)
    bits = next((b for b in (4, 8) if getattr(model_args, f"load_in_{b}bit", False)), 0)
    if not bits:
        return params * per_param, dtype
    quantized = _quantized_parameters(model)
    per_quantized = 0.55 if bits == 4 else 1.0  # NF4 packs two per byte, plus absmax scales
    name = "4-bit NF4" if bits == 4 else "8-bit"
    return quantized * per_quantized + (params - quantized) * per_param, f"{name} (rest {dtype})"


PREFERENCE_STAGES = ("dpo", "kto", "orpo", "simpo")


def estimate(stage: str, cfg, model_config, *, device: tuple[float | None, str] | None = None) -> Estimate:
    """Memory of one training process of `stage` (sft, pretrain, reward, ppo, rloo, grpo, or a preference
    stage: dpo, kto, orpo, simpo) for a model with `model_config` (a transformers config) and the stage's
    parsed config, with gradient checkpointing as the config sets it or, left `auto`, as
    `decide_checkpointing` decides for `device` (bytes and what they are, as `device_memory()` answers;
    default: this machine's)."""
    requested = requested_checkpointing(cfg)
    est = _estimate(stage, cfg, model_config, checkpointing=bool(requested))
    if requested is not None:
        est.checkpointing = Checkpointing(requested, "set in the config")
        return est
    memory, where = device if device is not None else device_memory()
    decision = decide_checkpointing(est.total, memory, where)
    if decision.on:
        est = _estimate(stage, cfg, model_config, checkpointing=True)
    est.checkpointing = decision
    return est


def requested_checkpointing(cfg) -> bool | None:
    """The config's own choice of gradient checkpointing, None where it leaves it to hftune: hftune's key
    `gradient_checkpointing` (`auto` when unset), or transformers' newer name for it,
    `activation_checkpointing`, when the config sets that instead."""
    value = getattr(cfg.hftune, "gradient_checkpointing", "auto")
    if isinstance(value, bool):
        return value
    if (
        "activation_checkpointing" in cfg.given
        and getattr(cfg.training, "activation_checkpointing", None) is not None
    ):
        return bool(cfg.training.activation_checkpointing)
    return None


def decide_checkpointing(without: float, memory: float | None, where: str) -> Checkpointing:
    """On when `without` (bytes: the estimate without gradient checkpointing) exceeds CHECKPOINTING_SHARE of
    `memory` (bytes one training process has, `where`: `device_memory()`), else off: recomputing the forward
    pass costs ~20% of a step, worth paying only where the memory is needed. Unknown memory: on, the side
    that fits."""
    share = f"{CHECKPOINTING_SHARE:.0%}"
    if memory is None:
        return Checkpointing(True, f"the size of {where} is unknown")
    if without > CHECKPOINTING_SHARE * memory:
        return Checkpointing(
            True, f"needed: {_size(without)} without it is over {share} of {_size(memory)}, {where}"
        )
    return Checkpointing(
        False, f"not needed: {_size(without)} without it fits {share} of {_size(memory)}, {where}"
    )


def device_memory() -> tuple[float | None, str]:
    """The memory one training process on this machine has, in bytes (None: unknown), and what it is: a CUDA
    GPU's total memory (each process trains on a GPU of its own), else the host memory available to new
    processes (MemAvailable), split between the processes a launcher starts on the machine
    (LOCAL_WORLD_SIZE)."""
    import torch

    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        return float(torch.cuda.get_device_properties(index).total_memory), f"the memory of the GPU ({name})"
    available = host_available_memory()
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    if available is None or processes == 1:
        return available, "the host memory available"
    return available / processes, f"1/{processes} of the host memory available (a share for each process)"


def host_available_memory() -> float | None:
    """Bytes of host memory free for new processes (the kernel's MemAvailable), None where unknown."""
    try:
        import psutil  # comes with accelerate

        return float(psutil.virtual_memory().available)
    except ImportError:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
        except OSError:
            pass
    return None


def _estimate(stage: str, cfg, model_config, *, checkpointing: bool) -> Estimate:
    """`estimate` with gradient checkpointing on or off."""
    args, model_args = cfg.training, cfg.model
    classifier = stage == "reward"
    model = meta_model(model_config, sequence_classification=classifier)
    params = sum(p.numel() for p in model.parameters())
    weights, dtype = weight_bytes(model, model_args, args)
    per_param = _compute_precision(args)[0]
    sixteen_bit = per_param < 4
    if model_args.use_peft:
        trainable = lora_parameters(model, model_args.lora_r, model_args.lora_target_modules)
        if classifier:
            trainable += model_config.hidden_size  # the score head, saved with the adapter
        state = trainable * (4 + 4 + 8)  # LoRA weights stay fp32 next to 16-bit bases: weight, grad, Adam
    else:
        trainable = params
        state = trainable * (4 + 8 + (4 if sixteen_bit else 0))
    hidden = model_config.hidden_size
    layers = model_config.num_hidden_layers
    batch = args.per_device_train_batch_size
    length = _sequence_length(stage, cfg)
    # Bytes per (token x hidden unit x layer) in 16-bit, doubled for fp32 activations.
    per_unit = 2 if checkpointing else 34
    activations = per_unit * (1 if sixteen_bit else 2) * batch * length * hidden * layers
    logits = 0 if classifier else 4 * batch * length * model_config.vocab_size
    if classifier or stage in PREFERENCE_STAGES:
        # Chosen and rejected replies of every pair (KTO: each completion and its mismatched KL twin).
        activations *= 2
        logits *= 2
    extra: dict[str, float] = {}
    if stage in ("dpo", "kto") and not model_args.use_peft:
        # Full fine-tuning keeps a frozen reference copy; with LoRA the reference is the adapter switched off.
        extra["reference model (frozen copy)"] = params * per_param
    if stage in ("ppo", "rloo", "grpo"):
        # The reward (and value) model: the same backbone with a one-score head instead of the LM head,
        # loaded in the compute precision.
        scorer = sum(p.numel() for p in meta_model(model_config, sequence_classification=True).parameters())
        extra["reward model"] = scorer * per_param
        if stage == "ppo":
            extra["value model (trains in full)"] = scorer * (per_param + 4 + 8)
    return Estimate(params, trainable, weights, state, activations, logits, extra, dtype)


def _sequence_length(stage: str, cfg) -> int:
    extras = cfg.hftune
    if stage in ("ppo", "rloo", "grpo"):
        # Prompt plus reply; prompts are not length-limited by the RL trainers, so assume as long again.
        return 2 * getattr(extras, "response_length", 64)
    return getattr(cfg.training, "max_length", None) or 1024
