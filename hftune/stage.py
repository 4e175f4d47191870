"""What every training stage shares: its data options and checks, the work folder that holds checkpoints,
and the files every finished artifact carries. Each stage module (`sft.py`, `reward.py`, ...) reads top
to bottom and calls these for the parts that are the same everywhere."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hftune import artifacts, distributed
from hftune.config import StageConfig, hftune_field
from hftune.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class DataExtras:
    """hftune options every training stage has: where its data comes from and how it is split."""

    data_recipe: str | None = hftune_field(
        None, "Data recipe: a built-in name (see `hftune data list`) or a path to a recipe YAML. Required."
    )
    data_files: str | None = hftune_field(
        None, "A local json/jsonl/csv/parquet/txt file in the recipe's schema, used instead of its source."
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


def training_defaults() -> dict[str, Any]:
    """hftune's defaults shared by every training stage where they differ from TRL's: precision picked for
    the hardware (never fail because a default assumed a GPU), no surprise experiment trackers, bounded
    checkpoints, and a fixed seed."""
    import torch

    from hftune.modeling import bf16_available

    return {
        "dtype": "auto",
        "bf16": bf16_available(),
        # Without a GPU the Trainer runs torchrun / accelerate processes as DDP over gloo only when told
        # it is on CPU; otherwise each process would train alone on all the data.
        "use_cpu": not distributed.accelerator_available(),
        "report_to": "none",
        "dataloader_pin_memory": torch.cuda.is_available(),  # pinning without a GPU only warns
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": 100,
        "save_total_limit": 2,
        "eval_strategy": "no",
        "seed": 42,
    }


TOKENIZER_KEYS = ("pad_token", "eos_token", "chat_template_path")


def common_checks(values: dict[str, Any], *, needs_model: bool = True) -> list[str]:
    """Cross-field rules that hold for every stage; each stage adds its own. `needs_model=False` for a
    stage that can build its model instead (pretraining from scratch)."""
    problems = []
    if needs_model and not values.get("model_name_or_path"):
        problems.append("`model_name_or_path`: required (a Hub id, a local folder, or `tiny:llama`)")
    if not values.get("data_recipe"):
        problems.append("`data_recipe`: required (a built-in recipe name or a recipe YAML path)")
    if values.get("load_in_4bit") and values.get("load_in_8bit"):
        problems.append("`load_in_4bit` and `load_in_8bit`: choose one")
    if (values.get("load_in_4bit") or values.get("load_in_8bit")) and not values.get("use_peft"):
        problems.append("`load_in_4bit`/`load_in_8bit` need `use_peft: true` (QLoRA trains an adapter)")
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
    for key in TOKENIZER_KEYS:
        if values.get(key):
            # TRL would change the tokenizer after hftune checked it, and every later stage (reward,
            # RL, eval) would then read text differently from how this stage trained.
            problems.append(
                f"`{key}`: hftune takes eos, pad and the chat template from the model's tokenizer (end of "
                "turn as eos, a pad distinct from it); set `chat_template` at the SFT stage instead"
            )
    return problems


def load_data(cfg: StageConfig, tokenizer):
    """The stage's recipe and its prepared rows: every data problem surfaces before any weights load.

    In a multi-process run the data is prepared once per machine: the local main process prepares it and
    saves it in the stage's work folder, and every process (that one included) reads it back from there.
    Rows read from disk are memory-mapped Arrow, so the trainers' own tokenization is cached beside them
    and also done once (TRL tokenizes with the main process first).
    """
    from hftune.data import load_prepared, load_recipe, prepare_dataset, save_prepared

    extras = cfg.hftune
    recipe = load_recipe(extras.data_recipe)

    def prepare():
        return prepare_dataset(
            recipe,
            tokenizer=tokenizer,
            max_length=getattr(cfg.training, "max_length", None),
            strict=extras.data_strict,
            eval_fraction=extras.eval_fraction,
            seed=cfg.training.seed,
            data_files=extras.data_files,
            max_rows=extras.max_samples,
        )

    if not distributed.is_distributed():
        data = prepare()
    else:
        folder = artifacts.work_dir(cfg.training.output_dir) / f"prepared-data-node{distributed.node_rank()}"
        with distributed.local_main_first():
            if distributed.is_local_main_process():
                save_prepared(prepare(), folder)
        data = load_prepared(folder)
    logger.info("data: %s", data.summary())
    return recipe, data


def last_complete_checkpoint(work: Path) -> str | None:
    """The newest checkpoint in `work` that was written to the end. The Trainer writes trainer_state.json
    last, so a folder without it was cut off mid-write (a `kill -9` while saving): it is removed, and the
    checkpoint before it is the one to resume."""
    steps = sorted(
        (int(p.name.split("-")[-1]), p) for p in work.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
    )
    for _, folder in reversed(steps):
        if (folder / "trainer_state.json").is_file():
            return str(folder)
        logger.warning("removing %s: the run was interrupted while writing it", folder)
        shutil.rmtree(folder, ignore_errors=True)
    return None


def checkpoint_step(checkpoint: str | None) -> int:
    """The global step a checkpoint was saved at (0 for none)."""
    if not checkpoint:
        return 0
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text()).get("global_step", 0))


def checkpoint_to_resume(work: Path, resume: bool) -> str | None:
    """The last checkpoint of an interrupted run in `work`, when the user asked to resume."""
    last = last_complete_checkpoint(work) if work.is_dir() else None
    if resume:
        if last:
            logger.info("resuming from %s", last)
        else:
            logger.warning("--resume: no checkpoint in %s; starting from the beginning", work)
        return last
    if last:
        logger.warning("%s holds checkpoints of an interrupted run; pass --resume to continue it", work)
    return None


@contextlib.contextmanager
def trl_settings_are_user_errors(source: str) -> Iterator[None]:
    """TRL validates option combinations when a trainer is built; those are config mistakes."""
    try:
        yield
    except ValueError as err:
        raise UserError(f"{source}: TRL refused this combination of settings: {err}") from None


def count_rows_trl_dropped(trainer, data, args, reason: str = "no_trained_tokens_after_truncation") -> None:
    """TRL's trainers silently filter rows after their own truncation (SFT: rows left with no trained
    token; reward: pairs over max_length). hftune already drops over-long rows, so this should find nothing;
    if it does, the rows are counted under `reason`, never lost unseen."""
    if getattr(args, "packing", False):
        return  # packed rows no longer map one to one onto examples
    lost = len(data.train) - len(trainer.train_dataset)
    if lost > 0:
        data.dropped[reason] = data.dropped.get(reason, 0) + lost
        logger.warning("TRL dropped %d training row(s) after truncation (%s)", lost, reason)
    if len(trainer.train_dataset) == 0:
        raise UserError(
            f"no training rows left: TRL dropped them all after truncation ({reason}); raise `max_length` "
            "and check `hftune data preview`"
        )


def save_common(
    out: Path, cfg: StageConfig, trainer, tokenizer, metrics: dict[str, Any], *, save_model: bool = True
) -> None:
    """Model, tokenizer (with its chat template), resolved config, metrics and logs; no pickles."""
    if save_model:
        trainer.save_model(str(out))  # every process: a sharded (FSDP / ZeRO-3) model is gathered to save
    if not distributed.is_main_process():
        return
    tokenizer.save_pretrained(str(out))
    for unsafe in list(out.glob("*.bin")) + list(out.glob("*.pt")):
        unsafe.unlink()  # weights ship as safetensors only; training_args.bin is a pickle
    # PEFT's placeholder card ("[More Information Needed]") says nothing true; hftune's cards are
    # generated from the manifests when a model is pushed.
    (out / "README.md").unlink(missing_ok=True)
    (out / "config.hftune.yaml").write_text(yaml.safe_dump(cfg.resolved(), sort_keys=True))
    artifacts.write_json(out / "metrics.json", metrics)
    artifacts.write_json(out / "log_history.json", trainer.state.log_history)


def save_generation_config(model, tokenizer, out: Path) -> None:
    if hasattr(model, "generation_config"):
        # Generation must stop at the end-of-turn token the model was trained to emit.
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.save_pretrained(str(out))


def data_manifest(recipe, data, data_files: str | None, n_train: int) -> dict[str, Any]:
    info = {
        "recipe": recipe.name,
        "source": {"path": data_files} if data_files else recipe.source,
        "fingerprint": data.fingerprint,
        "n_source_rows": data.n_source_rows,
        "n_train": n_train,
        "n_eval": len(data.eval) if data.eval is not None else 0,
        "dropped": data.dropped,
    }
    if getattr(data, "dropped_pairs", None):
        info["dropped_pairs"] = data.dropped_pairs
    return info


def parameter_counts(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total}
