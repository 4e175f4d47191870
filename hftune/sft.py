"""Supervised fine-tuning: TRL's SFTTrainer with LoRA/QLoRA and assistant-only loss by default.

    hftune sft --config configs/tiny/sft.yaml [--learning_rate 1e-3 ...] [--resume]

Reads top to bottom: parse the config, load the tokenizer and data (all checks before any weights
load), load the model, train, then write adapter + tokenizer + resolved config + metrics + manifest
atomically to `output_dir`.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hftune import artifacts, distributed, modeling, stage
from hftune.config import StageConfig, StageSchema, parse_stage_config
from hftune.errors import UserError
from hftune.stage import DataExtras, common_checks

logger = logging.getLogger(__name__)


SFT_FORMATS = ("conversational", "prompt_completion", "language_modeling")


@dataclass
class SFTExtras(DataExtras):
    """What TRL's SFTConfig/ModelConfig lack (the data options every stage shares). Names never clash
    with TRL's."""


def _check(values: dict[str, Any]) -> list[str]:
    problems = common_checks(values)
    if values.get("packing") and values.get("packing_strategy") == "wrapped":
        problems.append(
            "`packing_strategy: wrapped` concatenates examples so they attend to each other and splits "
            "turns across rows; use `packing_strategy: bfd` (position-id packing) or `packing: false`"
        )
    return problems


def schema() -> StageSchema:
    from trl import ModelConfig, SFTConfig

    return StageSchema(
        name="sft",
        classes={"training": SFTConfig, "model": ModelConfig, "hftune": SFTExtras},
        # hftune's defaults where they differ from TRL's: LoRA on all linear layers, assistant-only loss,
        # precision picked for the hardware, no surprise experiment trackers.
        defaults={
            "output_dir": "runs/sft",
            "use_peft": True,
            "lora_target_modules": "all-linear",
            "assistant_only_loss": True,
            **stage.training_defaults(),
        },
        check=_check,
    )


def parse(config_path: str | None, argv: list[str] | None = None) -> StageConfig:
    return parse_stage_config(schema(), config_path, argv)


@dataclass
class SFTResult:
    output_dir: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    trainer: Any  # the TRL trainer, for tests and callers that keep working with the model


def check_packing_isolation(model, tokenizer) -> None:
    """Refuse packing when the attention implementation lets packed examples see each other.

    TRL's BFD packing relies on position ids resetting at each example; only some attention kernels
    honour that. One tiny forward pass on the real model settles it instead of a list of kernel names.
    """
    ids = tokenizer("one two three four five six seven", add_special_tokens=False)["input_ids"][:6]
    a = torch.tensor([ids[:3]], device=model.device)
    b = torch.tensor([ids[3:6]], device=model.device)
    packed = torch.cat([a, b], dim=1)
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]], device=model.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        alone = model(input_ids=b).logits.float()
        together = model(input_ids=packed, position_ids=positions).logits[:, 3:].float()
    model.train(was_training)
    if not torch.allclose(alone, together, atol=1e-2, rtol=1e-2):
        impl = getattr(model.config, "_attn_implementation", "?")
        raise UserError(
            f"packing: with attn_implementation={impl!r} packed examples attend to each other on this model "
            "(checked with a forward pass), which would corrupt training. Use `attn_implementation: "
            "flash_attention_2` on a GPU, or set `packing: false`."
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
class Prepared:
    """Everything `run` trains with, built and checked but not yet trained."""

    trainer: Any
    data: Any
    recipe: Any
    tokenizer: Any
    checkpoint: str | None
    final_dir: Path


def prepare(cfg: StageConfig, *, resume: bool = False) -> Prepared:
    from trl import SFTTrainer

    args, model_args, extras = cfg.training, cfg.model, cfg.hftune
    final_dir = Path(args.output_dir)
    trust = bool(args.trust_remote_code)

    # Tokenizer, template and data first: every data problem surfaces before minutes of weight loading.
    tokenizer = modeling.load_tokenizer(
        model_args.model_name_or_path,
        chat_template=extras.chat_template,
        trust_remote_code=trust,
        revision=model_args.model_revision,
    )
    recipe, data = stage.load_data(cfg, tokenizer)
    if recipe.format not in SFT_FORMATS:
        raise UserError(
            f"data_recipe {recipe.name}: format `{recipe.format}` is not SFT data; SFT trains on "
            f"{', '.join(SFT_FORMATS)} rows (preference data is for `hftune reward`, prompts for "
            "`hftune ppo`)"
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

    model = modeling.load_model(
        model_args.model_name_or_path,
        model_args,
        trust_remote_code=trust,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    if args.packing:
        check_packing_isolation(model, tokenizer)

    work = artifacts.work_dir(final_dir)
    args.output_dir = str(work)
    checkpoint = stage.checkpoint_to_resume(work, resume)
    try:
        with stage.trl_settings_are_user_errors(cfg.source):
            trainer = SFTTrainer(
                model=model,
                args=args,
                train_dataset=data.train,
                eval_dataset=data.eval,
                processing_class=tokenizer,
                peft_config=modeling.lora_config(model_args),
            )
    finally:
        args.output_dir = str(final_dir)  # the resolved config names where the artifact lives
    stage.count_rows_trl_dropped(trainer, data, args)
    check_loss_masks(trainer.train_dataset, "training")
    if trainer.eval_dataset is not None:
        check_loss_masks(trainer.eval_dataset, "evaluation")
    return Prepared(trainer, data, recipe, tokenizer, checkpoint, final_dir)


def run(
    cfg: StageConfig,
    *,
    resume: bool = False,
    stage_name: str = "sft",
    parents: list[dict[str, Any]] | None = None,
) -> SFTResult:
    """Train and save; `stage_name` / `parents` let `hftune pretrain` (the same training on plain text)
    record itself in the manifest."""
    started = time.time()
    p = prepare(cfg, resume=resume)
    trainer, data, tokenizer = p.trainer, p.data, p.tokenizer
    work = artifacts.work_dir(p.final_dir)
    trainer.args.output_dir = str(work)  # checkpoints go to the work dir, never into the artifact

    metrics: dict[str, Any] = {}
    if data.eval is not None:
        metrics["eval_loss_before"] = trainer.evaluate()["eval_loss"]
    train_out = trainer.train(resume_from_checkpoint=p.checkpoint)
    metrics.update({k: v for k, v in train_out.metrics.items() if isinstance(v, int | float)})
    metrics["global_step"] = trainer.state.global_step
    if data.eval is not None:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    metrics.update(stage.parameter_counts(trainer.model))
    trainer.args.output_dir = str(p.final_dir)

    manifest: dict[str, Any] = {}
    with artifacts.atomic_dir(p.final_dir, collective=True) as out:
        stage.save_common(out, cfg, trainer, tokenizer, metrics)
        if distributed.is_main_process():
            stage.save_generation_config(trainer.model, tokenizer, out)
            n_train = len(trainer.train_dataset) if not cfg.training.packing else len(data.train)
            manifest = artifacts.write_manifest(
                out,
                stage=stage_name,
                config_hash=cfg.config_hash(),
                parents=parents or [artifacts.parent_ref(cfg.model.model_name_or_path, "base_model")],
                data=stage.data_manifest(p.recipe, data, cfg.hftune.data_files, n_train),
                metrics=metrics,
                seed=cfg.training.seed,
                started=started,
            )
    if distributed.is_main_process():
        shutil.rmtree(work, ignore_errors=True)
    return SFTResult(p.final_dir, metrics, manifest, trainer)


def summary(result: SFTResult) -> str:
    """What `hftune sft` prints when it finishes."""
    m = result.metrics
    lines = []
    if "eval_loss_before" in m:
        lines.append(f"held-out loss: {m['eval_loss_before']:.4f} -> {m['eval_loss']:.4f}")
    lines.append(
        f"train loss {m.get('train_loss', float('nan')):.4f} over {m.get('global_step')} steps "
        f"({m.get('train_steps_per_second', float('nan')):.2f} steps/s)"
    )
    lines.append(f"saved: {result.output_dir}")
    return "\n".join(lines)
