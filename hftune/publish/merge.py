"""Merging a LoRA adapter (or a chain of them) into its base: one full model, no PEFT needed to load it.

    hftune merge runs/tiny/sft runs/tiny/sft-merged [--dtype float32|bfloat16|float16]
    hftune merge runs/tiny/ppo runs/tiny/ppo-merged          # base -> SFT adapter -> PPO adapter
    hftune merge runs/tiny/reward runs/tiny/reward-merged    # a reward adapter -> a sequence classifier

The adapter folder is loaded exactly as every stage loads it (`hftune.models.loading`: inner adapters
merged, the last one attached), then PEFT's `merge_and_unload` folds it in. The merge always runs in full
precision (float32); `--dtype` is the dtype the merged weights are saved in (float32 by default). The merged
model's logits on a probe prompt are compared with the adapter model's before saving, and the difference is
recorded in the manifest. The output holds safetensors weights, the tokenizer with its chat template, the
generation config and a manifest (stage `merge`, the adapter folder as parent), written atomically.

An adapter trained on a 4-bit or 8-bit base (QLoRA) learnt corrections to the quantized weights: merged
into the full-precision base it computes something else, and merged into quantized weights it loses
precision. Such adapters are refused unless `--from-full-precision` asks for the unquantized base anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftune import artifacts
from hftune.errors import UserError
from hftune.models import loading
from hftune.models.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
_PROBE = [
    {"role": "user", "content": "What is 12 + 30?"},
    {"role": "assistant", "content": "12 + 30 = 42."},
]


@dataclass
class MergeResult:
    output_dir: Path
    is_reward_model: bool
    merged_adapters: int
    max_abs_logit_diff: float


def _check_source(src: Path, from_full_precision: bool) -> loading.ModelSource:
    if not src.is_dir():
        raise UserError(f"{src}: no such folder")
    if not artifacts.is_complete(src):
        raise UserError(f"{src} has no manifest.json: it is not a finished hftune stage; finish it first")
    if not (src / "adapter_config.json").is_file():
        raise UserError(f"{src} is not a LoRA adapter folder (no adapter_config.json): nothing to merge")
    source = loading.resolve_source(str(src))
    base_config = Path(source.base) / "config.json"
    if base_config.is_file() and json.loads(base_config.read_text()).get("quantization_config"):
        raise UserError(
            f"the base model {source.base} is saved quantized (its config.json has a quantization_config); "
            "merging into quantized weights loses precision. Merge onto the original full-precision base."
        )
    for folder in source.adapters:
        bits = loading.quantized_training(Path(folder))
        if bits and not from_full_precision:
            raise UserError(
                f"{folder} was trained on a {bits} quantized base (QLoRA: load_in_{bits[0]}bit in its "
                "config): merged into the full-precision base it no longer reproduces the trained model, and "
                f"merged into {bits} weights it loses precision. Serve it as an adapter on the {bits} base, "
                "or pass --from-full-precision to merge into the unquantized base anyway (an approximation)."
            )
        if bits:
            logger.warning(
                "%s was trained on a %s base; merging into the unquantized base (approximate)", folder, bits
            )
    return source


def _probe_ids(tokenizer):
    import torch

    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(_PROBE, tokenize=False)
    else:
        text = " ".join(turn["content"] for turn in _PROBE)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def _outputs(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids.to(model.device)).logits.float().cpu()


def _save_kwargs(model) -> dict[str, Any]:
    """transformers 5 writes safetensors only and has no `safe_serialization`; 4.x needs it said."""
    import inspect

    return (
        {"safe_serialization": True}
        if "safe_serialization" in inspect.signature(model.save_pretrained).parameters
        else {}
    )


def merge(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str = "float32",
    from_full_precision: bool = False,
    overwrite: bool = False,
) -> MergeResult:
    """Merge the adapter folder `src` into its base in float32; save the full model to `out` in `dtype`.
    `out` must be new, empty or an hftune output unless `overwrite`."""
    import torch
    from trl import ModelConfig

    started = time.time()
    src, out = Path(src), Path(out)
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise UserError(f"{out}: the merged model must go to a new folder outside {src}")
    source = _check_source(src, from_full_precision)
    inputs = [str(src), source.base, *source.adapters]
    artifacts.check_output(out, overwrite=overwrite, what="OUT", inputs=inputs)
    reward = source.is_reward_model
    load = loading.load_reward_model if reward else loading.load_model
    logger.info("loading %s (base %s + %d adapter(s)) in float32", src, source.base, len(source.adapters))
    # The merge itself always runs in float32, never quantized: W + BA rounded once, at the end, to `dtype`.
    model = load(str(src), ModelConfig(dtype="float32"), for_training=False).eval()
    # Adapters saved in bf16 (QLoRA) are loaded in bf16; upcasting them is exact and keeps one dtype.
    model = model.to(torch.float32)
    tokenizer = load_tokenizer(str(src))
    ids = _probe_ids(tokenizer)
    before = _outputs(model, ids)
    merged = model.merge_and_unload().eval()
    diff = (before - _outputs(merged, ids)).abs().max().item()
    logger.info("merged: max |logit difference| vs the adapter model on a probe prompt = %.3g", diff)
    merged = merged.to(getattr(torch, dtype))

    with artifacts.atomic_dir(out, overwrite=overwrite, what="OUT") as tmp:
        merged.save_pretrained(str(tmp), **_save_kwargs(merged))
        tokenizer.save_pretrained(str(tmp))
        if (src / "generation_config.json").is_file():
            # The stage's generation config stops at the end-of-turn token the model was trained to emit.
            shutil.copyfile(src / "generation_config.json", tmp / "generation_config.json")
        for unsafe in [*tmp.glob("*.bin"), *tmp.glob("*.pt"), tmp / "README.md"]:
            unsafe.unlink(missing_ok=True)
        options = {
            "dtype": dtype,
            "from_full_precision": from_full_precision,
            "adapters": list(source.adapters),
        }
        parent = artifacts.read_manifest(src) or {}
        artifacts.write_manifest(
            tmp,
            stage="merge",
            config_hash=hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest(),
            parents=[artifacts.parent_ref(str(src), "adapter")],
            data={},
            metrics={
                "dtype": dtype,
                "merged_adapters": len(source.adapters),
                "base_model": source.base,
                "reward_model": reward,
                "max_abs_logit_diff": diff,
                "from_full_precision": from_full_precision,
            },
            seed=int(parent.get("seed") or 0),
            started=started,
        )
    logger.info("wrote %s", out)
    return MergeResult(out, reward, len(source.adapters), diff)


def summary(result: MergeResult) -> str:
    kind = "reward model (sequence classifier)" if result.is_reward_model else "causal LM"
    return (
        f"merged {result.merged_adapters} adapter(s) into a full {kind}: {result.output_dir} "
        f"(max |logit difference| on a probe prompt {result.max_abs_logit_diff:.2g})"
    )
