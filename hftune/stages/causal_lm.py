"""Causal-LM training with TRL's SFTTrainer, shared by `hftune sft` and `hftune pretrain` (the same training,
on conversations or on plain text). Not a stage itself: the two stage modules parse their configs and call
`train`, so neither imports the other.

Reads top to bottom: load the tokenizer and data (all checks before any weights load), load the model,
build TRL's trainer, check packing and loss masks, train, then write the model + tokenizer + resolved
config + metrics + manifest atomically (`common.save_artifact`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftune import artifacts
from hftune.config import StageConfig
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


def _conversational(dataset) -> bool:
    return "messages" in dataset.column_names or (
        "prompt" in dataset.column_names and isinstance(dataset[0]["prompt"], list)
    )


@dataclass
class Result:
    output_dir: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    trainer: Any  # the TRL trainer, for tests and callers that keep working with the model


def prepare(
    cfg: StageConfig,
    *,
    formats: tuple[str, ...],
    resume: bool = False,
    dirs: common.RunDirs | None = None,
    load_data: Callable[..., tuple[Any, Any]] | None = None,
) -> common.Prepared:
    """`load_data(cfg, tokenizer, dirs)` gives the recipe and its rows (pretraining passes its own: how long
    documents are kept, or a stream)."""
    from transformers import set_seed
    from trl import SFTTrainer

    from hftune.models import loading

    args, model_args = cfg.training, cfg.model
    dirs = dirs or common.run_dirs(cfg, resume)
    trust = bool(args.trust_remote_code)

    # Tokenizer, template and data first: every data problem surfaces before minutes of weight loading.
    tokenizer = common.load_stage_tokenizer(cfg)
    if load_data is None:
        # SFT: the rows come tokenized in TRL's layout by the rendering that measures them (`tokenize_once`).
        sft_tokens = None
        if getattr(cfg.hftune, "tokenize_once", False):
            from hftune.data.tokens import training_template

            masked = bool(args.assistant_only_loss)
            sft_tokens = {
                "assistant_only_loss": masked,
                "chat_template": training_template(tokenizer, masked),
            }
        recipe, data = common.load_data(cfg, tokenizer, dirs, sft_tokens=sft_tokens)
    else:
        recipe, data = load_data(cfg, tokenizer, dirs)
    if recipe.format not in formats:
        what = {"sft": "SFT"}.get(cfg.stage, cfg.stage)
        raise UserError(
            f"data_recipe {recipe.name}: format `{recipe.format}` is not {what} data; {what} trains on "
            f"{', '.join(formats)} rows (preference data is for `hftune reward`, prompts for `hftune ppo`; "
            "unpaired preferences are KTO data, not yet a stage)"
        )
    if _conversational(data.train):
        if not tokenizer.chat_template:
            raise UserError(
                f"{model_args.model_name_or_path} has no chat template and the data is conversational: "
                "set `chat_template: chatml` (or a Jinja string / .jinja file) in the config"
            )
    elif args.assistant_only_loss:
        # Prompt-completion data is masked by TRL's completion-only loss instead.
        args.assistant_only_loss = False

    # Seeded before any weight is made: a `tiny:` model's weights are drawn as it loads, and SFTTrainer
    # before TRL 1.15 creates the LoRA adapter (randomly initialised) before its own `set_seed`, so without
    # this the adapter depended on whatever drew random numbers earlier (1.15 seeds before the adapter).
    set_seed(args.seed)
    model = loading.load_model(
        model_args.model_name_or_path,
        model_args,
        trust_remote_code=trust,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    common.ignore_bias_buffers(model, cfg)
    wrapped = args.packing and args.packing_strategy == "wrapped"
    if (args.packing or args.padding_free) and not wrapped:
        # (Wrapped packing, for pretraining only (SFT refuses it), lets a block span documents on purpose.)
        # Padding-free batches are rows laid end to end with position-id resets, exactly as packed ones.
        check_packing_isolation(model, tokenizer, "packing" if args.packing else "padding_free")

    checkpoint = common.checkpoint_to_resume(dirs, cfg, resume, data)
    with common.trl_settings_are_user_errors(cfg.source):
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=data.train,
            eval_dataset=data.eval,
            processing_class=tokenizer,
            peft_config=loading.lora_config(model_args),
        )
    from hftune.stages.finite import StopOnNonFinite
    from hftune.stages.full_logits import use_full_logits

    use_full_logits(trainer)  # small logits: cheaper than TRL's chunked head
    trainer.add_callback(StopOnNonFinite())  # a diverged run stops at once, naming the step
    common.count_rows_trl_dropped(trainer, data, args)
    if not wrapped:  # wrapped blocks are plain text, every token a label (and may be a stream, unscannable)
        check_loss_masks(trainer.train_dataset, "training")
        if trainer.eval_dataset is not None:
            check_loss_masks(trainer.eval_dataset, "evaluation")
    return common.Prepared(trainer, data, recipe, tokenizer, checkpoint, dirs)


def train(
    cfg: StageConfig,
    *,
    formats: tuple[str, ...],
    parents: list[dict[str, Any]] | None = None,
    resume: bool = False,
    dirs: common.RunDirs | None = None,
) -> Result:
    """Prepare, train and save; `cfg.stage` (sft / pretrain) is what the manifest records."""
    return finish(cfg, prepare(cfg, formats=formats, resume=resume, dirs=dirs), parents=parents)


def finish(
    cfg: StageConfig,
    p: common.Prepared,
    *,
    parents: list[dict[str, Any]] | None = None,
    n_train: int | None = None,
    report: Callable[[Any], tuple[dict[str, Any], dict[str, Any]]] | None = None,
) -> Result:
    """Train what `prepare` built and save it. `n_train` overrides the training-row count the manifest
    records; `report(trainer)`, called after training, gives (metrics, data-manifest entries) to add."""
    trainer, data, tokenizer = p.trainer, p.data, p.tokenizer

    metrics: dict[str, Any] = {}
    train_out, before = common.train_evaluating_first(trainer, p.checkpoint)
    if before is not None:
        metrics["eval_loss_before"] = before["eval_loss"]
    metrics.update(common.train_metrics(trainer, train_out))
    if data.eval is not None:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    extra_metrics, extra_data = report(trainer) if report is not None else ({}, {})
    metrics.update(extra_metrics)

    if n_train is None:
        n_train = len(trainer.train_dataset) if not cfg.training.packing else len(data.train)
    manifest = common.save_artifact(
        p.dirs,
        cfg,
        stage=cfg.stage,
        trainer=trainer,
        tokenizer=tokenizer,
        metrics=metrics,
        parents=parents or [artifacts.parent_ref(cfg.model.model_name_or_path, "base_model")],
        data={**common.data_manifest(p.recipe, data, cfg.hftune.data_files, n_train), **extra_data},
        prepared=data,
        write_extra=lambda out: common.save_generation_config(trainer.model, tokenizer, out),
    )
    return Result(p.dirs.final, metrics, manifest, trainer)


def summary(result: Result) -> str:
    """What `hftune sft` / `hftune pretrain` print when they finish."""
    m = result.metrics
    lines = []
    if "eval_loss_before" in m:
        lines.append(f"held-out loss: {m['eval_loss_before']:.4f} -> {m['eval_loss']:.4f}")
    return "\n".join(lines + common.train_summary(m, result.output_dir))
