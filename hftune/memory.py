"""Per-process memory estimates for a stage, printed by `hftune pipeline --dry-run` before anything runs.

The model is built from its config on PyTorch's `meta` device (no weights are read or allocated), so the
parameter and LoRA counts are exact; the rest is the usual arithmetic, to tell whether a stage fits a GPU:

- weights: parameters x bytes per parameter (4 fp32, 2 bf16/fp16, ~0.55 for bitsandbytes 4-bit NF4);
- trainable state: gradients (4 bytes) and AdamW's two moments (8 bytes) per trainable parameter, plus an
  fp32 master copy (4 bytes) when all weights train in 16-bit;
- activations: per layer ~34 x batch x length x hidden bytes in 16-bit (Korthikanti et al., 2022, without
  recomputation; twice that in fp32), or only the layer inputs (2 x batch x length x hidden) with
  gradient checkpointing.

PPO holds the policy (its reference is the same weights with the LoRA adapter off), a value model that
trains in full (from the reward model) and the frozen reward model; RLOO/GRPO drop the value model. These
are estimates for one process without sharding: FSDP/ZeRO-3 divide weights and trainable state by the
number of processes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

GIB = 1024**3


@dataclass
class Estimate:
    params: int
    trainable: int
    weights: float  # bytes
    trainable_state: float
    activations: float
    extra: dict[str, float]  # other models the stage holds (value, reward), bytes
    dtype: str

    @property
    def total(self) -> float:
        return self.weights + self.trainable_state + self.activations + sum(self.extra.values())

    def describe(self) -> str:
        parts = [
            f"{_count(self.params)} params in {self.dtype}",
            f"weights {_size(self.weights)}",
            f"{_count(self.trainable)} trainable -> grads+optimizer {_size(self.trainable_state)}",
            f"activations {_size(self.activations)}",
            *(f"{name} {_size(size)}" for name, size in self.extra.items()),
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


def _bytes_per_param(model_args, training_args) -> tuple[float, str]:
    if getattr(model_args, "load_in_4bit", False):
        return 0.55, "4-bit NF4"
    if getattr(model_args, "load_in_8bit", False):
        return 1.0, "8-bit"
    if getattr(training_args, "bf16", False) or getattr(training_args, "fp16", False):
        return 2.0, "bf16" if training_args.bf16 else "fp16"
    return 4.0, "fp32"


def estimate(stage: str, cfg, model_config) -> Estimate:
    """Memory of one training process of `stage` (sft, pretrain, reward, ppo, rloo, grpo) for a model with
    `model_config` (a transformers config) and the stage's parsed config."""
    args, model_args = cfg.training, cfg.model
    classifier = stage == "reward"
    model = meta_model(model_config, sequence_classification=classifier)
    params = sum(p.numel() for p in model.parameters())
    per_param, dtype = _bytes_per_param(model_args, args)
    if model_args.use_peft:
        trainable = lora_parameters(model, model_args.lora_r, model_args.lora_target_modules)
        if classifier:
            trainable += model_config.hidden_size  # the score head, saved with the adapter
        state = trainable * (4 + 4 + 8)  # LoRA weights stay fp32 next to 16-bit bases: weight, grad, Adam
    else:
        trainable = params
        state = trainable * (4 + 8 + (4 if per_param < 4 else 0))
    hidden = model_config.hidden_size
    layers = model_config.num_hidden_layers
    batch = args.per_device_train_batch_size
    length = _sequence_length(stage, cfg)
    # Bytes per (token x hidden unit x layer) in 16-bit, doubled for fp32 activations.
    per_unit = 2 if getattr(args, "gradient_checkpointing", False) else 34
    activations = per_unit * (1 if per_param < 4 else 2) * batch * length * hidden * layers
    if classifier:
        activations *= 2  # chosen and rejected replies of every pair
    extra: dict[str, float] = {}
    if stage in ("ppo", "rloo", "grpo"):
        full = params * (2 if per_param < 4 else 4)
        extra["reward model"] = full
        if stage == "ppo":
            extra["value model (trains in full)"] = full + params * (4 + 8)
    return Estimate(params, trainable, params * per_param, state, activations, extra, dtype)


def _sequence_length(stage: str, cfg) -> int:
    extras = cfg.hftune
    if stage in ("ppo", "rloo", "grpo"):
        # Prompt plus reply; prompts are not length-limited by the RL trainers, so assume as long again.
        return 2 * getattr(extras, "response_length", 64)
    return getattr(cfg.training, "max_length", None) or 1024
