"""What `hftune sft` and `hftune pretrain` share (the same causal-LM training on TRL's SFTTrainer, on
conversations or on plain text): plain functions each stage calls in order, in its own file, where it builds
its trainer. Not a stage: neither stage imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftune.errors import UserError
from hftune.stages import common

TRL_CONFIGS = ("SFTConfig", "ModelConfig")


def trl_classes() -> dict[str, type]:
    from trl import ModelConfig, SFTConfig

    return {"training": SFTConfig, "model": ModelConfig}


def check_packing_isolation(model, tokenizer, what: str = "packing") -> None:
    """Refuse packing (or padding-free batching, `what`: the same flattened rows) when the attention
    implementation lets packed examples see each other.

    TRL's BFD packing relies on position ids resetting at each example; only some attention kernels
    honour that. One tiny forward pass on the real model settles it instead of a list of kernel names. It
    runs as training does, without the KV cache: with the cache on, transformers builds a plain causal
    mask and ignores the resets, so the probe refused sdpa, which keeps packed rows apart in training
    (max difference 2e-6 on the tiny models).
    """
    import torch

    ids = tokenizer("one two three four five six seven", add_special_tokens=False)["input_ids"][:6]
    a = torch.tensor([ids[:3]], device=model.device)
    b = torch.tensor([ids[3:6]], device=model.device)
    packed = torch.cat([a, b], dim=1)
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]], device=model.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        alone = model(input_ids=b, use_cache=False).logits.float()
        together = model(input_ids=packed, position_ids=positions, use_cache=False).logits[:, 3:].float()
    model.train(was_training)
    if not torch.allclose(alone, together, atol=1e-2, rtol=1e-2):
        impl = getattr(model.config, "_attn_implementation", "?")
        raise UserError(
            f"{what}: with attn_implementation={impl!r} packed examples attend to each other on this model "
            "(checked with a forward pass), which would corrupt training. Use `attn_implementation: "
            f"flash_attention_2` on a GPU, or set `{what}: false`."
        )


def check_loss_masks(dataset, name: str) -> None:
    """Every example must train on something: an empty mask means a template or truncation bug."""
    if "labels" not in dataset.column_names:
        return
    empty = [i for i, labels in enumerate(dataset["labels"]) if all(x == -100 for x in labels)]
    if empty:
        raise UserError(
            f"{len(empty)} {name} example(s) have no trained tokens (rows {empty[:5]}): the chat template "
            "marks no assistant tokens or truncation removed them. Check `hftune data preview`."
        )


def conversational(dataset) -> bool:
    return "messages" in dataset.column_names or (
        "prompt" in dataset.column_names and isinstance(dataset[0]["prompt"], list)
    )


def check_format(recipe, formats: tuple[str, ...], what: str) -> None:
    """The stage trains on `formats` rows only."""
    if recipe.format not in formats:
        raise UserError(
            f"data_recipe {recipe.name}: format `{recipe.format}` is not {what} data; {what} trains on "
            f"{', '.join(formats)} rows (preference data is for `hftune reward` and `hftune dpo`, prompts "
            "for `hftune ppo`)"
        )


def check_trainer(trainer, data, args, *, masks: bool = True) -> None:
    """After TRL's trainer is built: the loss off full logits where they are small, the stop at the first
    non-finite loss, rows TRL dropped counted, and (`masks`) every row training on some token."""
    from hftune.stages.finite import StopOnNonFinite
    from hftune.stages.full_logits import use_full_logits

    use_full_logits(trainer)  # small logits: cheaper than TRL's chunked head
    trainer.add_callback(StopOnNonFinite())  # a diverged run stops at once, naming the step
    common.count_rows_trl_dropped(trainer, data, args)
    if masks:
        check_loss_masks(trainer.train_dataset, "training")
        if trainer.eval_dataset is not None:
            check_loss_masks(trainer.eval_dataset, "evaluation")


@dataclass
class Result:
    output_dir: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    trainer: Any  # the TRL trainer, for tests and callers that keep working with the model


def train(trainer, checkpoint: str | None) -> dict[str, Any]:
    """Train, and the metrics: held-out loss before and after (with held-out rows), loss, steps, sizes."""
    metrics: dict[str, Any] = {}
    train_out, before = common.train_evaluating_first(trainer, checkpoint)
    if before is not None:
        metrics["eval_loss_before"] = before["eval_loss"]
    metrics.update(common.train_metrics(trainer, train_out))
    if trainer.eval_dataset is not None:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    return metrics


def summary(result: Result) -> str:
    """What `hftune sft` / `hftune pretrain` print when they finish."""
    m = result.metrics
    lines = []
    if "eval_loss_before" in m:
        lines.append(f"held-out loss: {m['eval_loss_before']:.4f} -> {m['eval_loss']:.4f}")
    return "\n".join(lines + common.train_summary(m, result.output_dir))
