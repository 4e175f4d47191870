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
import yaml

from hftune import artifacts, modeling
from hftune.config import StageConfig, StageSchema, hftune_field, parse_stage_config
from hftune.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class SFTExtras:
    """What TRL's SFTConfig/ModelConfig lack. Names never clash with TRL's fields."""

    data_recipe: str | None = hftune_field(
        None, "Data recipe: a built-in name (see `hftune data list`) or a path to a recipe YAML. Required."
    )
    data_files: str | None = hftune_field(
        None, "A local json/jsonl/csv/parquet file in the recipe's schema, used instead of its source."
    )
    eval_fraction: float = hftune_field(0.05, "Fraction of rows held out for evaluation (0 disables eval).")
    max_samples: int | None = hftune_field(None, "Use only the first N source rows (quick experiments).")
    data_strict: bool | None = hftune_field(
        None,
        "Fail on the first bad row instead of dropping and counting it (default: the recipe's `strict`).",
    )
    chat_template: str | None = hftune_field(
        None,
        "Chat template for base models that have none, or to replace the tokenizer's: `chatml` (built-in), "
        "a path to a .jinja file, or a Jinja string. Saved with the output.",
    )


def _check(values: dict[str, Any]) -> list[str]:
    problems = []
    if not values.get("model_name_or_path"):
        problems.append("`model_name_or_path`: required (a Hub id, a local folder, or `tiny:llama`)")
    if not values.get("data_recipe"):
        problems.append("`data_recipe`: required (a built-in recipe name or a recipe YAML path)")
    if values.get("load_in_4bit") and values.get("load_in_8bit"):
        problems.append("`load_in_4bit` and `load_in_8bit`: choose one")
    if (values.get("load_in_4bit") or values.get("load_in_8bit")) and not values.get("use_peft"):
        problems.append("`load_in_4bit`/`load_in_8bit` need `use_peft: true` (QLoRA trains an adapter)")
    if values.get("packing") and values.get("packing_strategy") == "wrapped":
        problems.append(
            "`packing_strategy: wrapped` concatenates examples so they attend to each other and splits "
            "turns across rows; use `packing_strategy: bfd` (position-id packing) or `packing: false`"
        )
    fraction = values.get("eval_fraction", 0.0)
    if fraction is not None and not 0.0 <= fraction < 1.0:
        problems.append(f"`eval_fraction`: must be in [0, 1), got {fraction}")
    for key in ("max_length", "lora_r", "per_device_train_batch_size"):
        if values.get(key) is not None and values[key] <= 0:
            problems.append(f"`{key}`: must be positive, got {values[key]}")
    if values.get("learning_rate") is not None and values["learning_rate"] <= 0:
        problems.append(f"`learning_rate`: must be positive, got {values['learning_rate']}")
    if values.get("bf16") and values.get("fp16"):
        problems.append("`bf16` and `fp16`: choose one")
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
            "dtype": "auto",
            "bf16": modeling.bf16_available(),
            "report_to": "none",
            "dataloader_pin_memory": torch.cuda.is_available(),  # pinning without a GPU only warns
            "logging_steps": 10,
            "save_strategy": "steps",
            "save_steps": 100,
            "save_total_limit": 2,
            "eval_strategy": "no",
            "seed": 42,
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


def _count_rows_trl_dropped(trainer, data, args) -> None:
    """SFTTrainer silently filters rows left with no trained token after its own truncation. hftune already
    drops over-long rows, so this should find nothing; if it does, the rows are counted, never lost unseen."""
    if args.packing:
        return  # packed rows no longer map one to one onto examples
    lost = len(data.train) - len(trainer.train_dataset)
    if lost > 0:
        data.dropped["no_trained_tokens_after_truncation"] = (
            data.dropped.get("no_trained_tokens_after_truncation", 0) + lost
        )
        logger.warning("TRL dropped %d training row(s) left with no trained tokens after truncation", lost)
    if len(trainer.train_dataset) == 0:
        raise UserError(
            "no training rows left: every row lost all trained tokens to truncation "
            "(raise `max_length`, check `hftune data preview`)"
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
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    from hftune.data import load_recipe, prepare_dataset

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
    recipe = load_recipe(extras.data_recipe)
    data = prepare_dataset(
        recipe,
        tokenizer=tokenizer,
        max_length=args.max_length,
        strict=extras.data_strict,
        eval_fraction=extras.eval_fraction,
        seed=args.seed,
        data_files=extras.data_files,
        max_rows=extras.max_samples,
    )
    logger.info("data: %s", data.summary())
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
    checkpoint = None
    if resume:
        checkpoint = get_last_checkpoint(str(work)) if work.is_dir() else None
        if checkpoint:
            logger.info("resuming from %s", checkpoint)
        else:
            logger.warning("--resume: no checkpoint in %s; starting from the beginning", work)
    elif work.is_dir() and get_last_checkpoint(str(work)):
        logger.warning("%s holds checkpoints of an interrupted run; pass --resume to continue it", work)

    try:
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=data.train,
            eval_dataset=data.eval,
            processing_class=tokenizer,
            peft_config=modeling.lora_config(model_args),
        )
    except ValueError as err:
        # TRL validates option combinations when the trainer is built; those are config mistakes.
        raise UserError(f"{cfg.source}: TRL refused this combination of settings: {err}") from None
    finally:
        args.output_dir = str(final_dir)  # the resolved config names where the artifact lives
    _count_rows_trl_dropped(trainer, data, args)
    check_loss_masks(trainer.train_dataset, "training")
    if trainer.eval_dataset is not None:
        check_loss_masks(trainer.eval_dataset, "evaluation")
    return Prepared(trainer, data, recipe, tokenizer, checkpoint, final_dir)


def run(cfg: StageConfig, *, resume: bool = False) -> SFTResult:
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
    trainable, total = _parameter_counts(trainer.model)
    metrics.update(trainable_params=trainable, total_params=total)
    trainer.args.output_dir = str(p.final_dir)

    with artifacts.atomic_dir(p.final_dir) as out:
        trainer.save_model(str(out))
        tokenizer.save_pretrained(str(out))
        if hasattr(trainer.model, "generation_config"):
            trainer.model.generation_config.eos_token_id = tokenizer.eos_token_id
            trainer.model.generation_config.pad_token_id = tokenizer.pad_token_id
            trainer.model.generation_config.save_pretrained(str(out))
        for unsafe in list(out.glob("*.bin")) + list(out.glob("*.pt")):
            unsafe.unlink()  # weights ship as safetensors only; training_args.bin is a pickle
        # PEFT's placeholder card ("[More Information Needed]") says nothing true; hftune's cards are
        # generated from the manifests when a model is pushed.
        (out / "README.md").unlink(missing_ok=True)
        (out / "config.hftune.yaml").write_text(yaml.safe_dump(cfg.resolved(), sort_keys=True))
        artifacts.write_json(out / "metrics.json", metrics)
        artifacts.write_json(out / "log_history.json", trainer.state.log_history)
        manifest = artifacts.write_manifest(
            out,
            stage="sft",
            config_hash=cfg.config_hash(),
            parents=[artifacts.parent_ref(cfg.model.model_name_or_path, "base_model")],
            data={
                "recipe": p.recipe.name,
                "source": data_files_or_source(p.recipe, cfg.hftune.data_files),
                "fingerprint": data.fingerprint,
                "n_source_rows": data.n_source_rows,
                "n_train": len(trainer.train_dataset) if not cfg.training.packing else len(data.train),
                "n_eval": len(data.eval) if data.eval is not None else 0,
                "dropped": data.dropped,
            },
            metrics=metrics,
            seed=cfg.training.seed,
            started=started,
        )
    shutil.rmtree(work, ignore_errors=True)
    return SFTResult(p.final_dir, metrics, manifest, trainer)


def data_files_or_source(recipe, data_files: str | None) -> Any:
    return {"path": data_files} if data_files else recipe.source


def _parameter_counts(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
