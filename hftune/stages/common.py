"""What every training stage shares: its data options and checks, where it writes (the artifact's folder
and the work folder that holds checkpoints, computed once), resuming, and the one save path that writes
every finished artifact's files and manifest. Each stage module (`sft.py`, `reward.py`, ...) reads top to
bottom and calls these for the parts that are the same everywhere."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from hftune import artifacts, distributed
from hftune.config import StageConfig, hftune_field, show
from hftune.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class DataExtras:
    """hftune options every training stage has: where its data comes from and how it is split, and whether
    it recomputes activations (`gradient_checkpointing`, which hftune owns: OWNED_TRAINING_KEYS)."""

    gradient_checkpointing: bool | Literal["auto"] = hftune_field(
        "auto",
        "Recompute each layer's forward pass during the backward pass instead of keeping its activations: "
        "far less activation memory, ~20% slower steps. `auto`: on only where the stage's memory estimate "
        "without it (the one `hftune pipeline --dry-run` prints) exceeds 80% of the memory one process "
        "trains in (a CUDA GPU's total memory, else the host memory available), decided as the stage "
        "starts and logged; true / false: always / never (TRL's default is always). TRL's "
        "`activation_checkpointing` (transformers' newer name) is honoured where a config sets it instead.",
    )

    data_recipe: str | list | None = hftune_field(
        None,
        "Data recipe: a built-in name (see `hftune data list`) or a path to a recipe YAML; or a mixture, a "
        "list of them, each a name or {recipe, data_files, max_samples, weight}. Required unless TRL's "
        "`dataset_name` names data already in a TRL format (its layout is then detected).",
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
    data_cache: bool = hftune_field(
        True,
        "Reuse the rows an earlier run prepared from the same local data, tokenizer and settings (kept in "
        "$HFTUNE_CACHE/data, memory-mapped, so the trainer's tokenization of them is cached too); false: "
        "prepare them again. Hub datasets and streamed corpora are always read afresh.",
    )


# hftune's defaults shared by every training stage where they differ from TRL's: no surprise experiment
# trackers, bounded checkpoints, and a fixed seed.
TRAINING_DEFAULTS: dict[str, Any] = {
    "dtype": "auto",
    "report_to": "none",
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 100,
    "save_total_limit": 2,
    "eval_strategy": "no",
    "seed": 42,
    # A diverged step logs its NaN loss (transformers' default filter would log 0.0 and hide it).
    "logging_nan_inf_filter": False,
}
# The stages that train a LoRA adapter on an SFT model by default (RL, preference optimisation).
ADAPTER_STAGE_DEFAULTS: dict[str, Any] = {
    "use_peft": True,
    "lora_target_modules": "all-linear",
    "eval_fraction": 0.1,
    **TRAINING_DEFAULTS,
}
# Defaults picked for the machine a stage runs on (never fail because a default assumed a GPU), as `--help`
# describes them without importing torch.
HARDWARE_DEFAULTS: dict[str, str] = {
    "bf16": "true on a GPU that supports bf16, else false (fp32 on CPU)",
    "use_cpu": "true when no GPU is visible (so torchrun / accelerate run DDP over gloo)",
    "dataloader_pin_memory": "true only with a CUDA GPU",
    "use_liger_kernel": "sft, pretrain, reward: true with a CUDA GPU when liger-kernel is installed "
    "(`pip install 'hftune[gpu]'`): fused linear cross-entropy, RMSNorm, RoPE and SwiGLU, the same loss "
    "without the full logits",
    "gradient_checkpointing": "`auto`: on only where the stage's memory estimate without it exceeds 80% of "
    "the memory one process trains in (a CUDA GPU's total, else the host memory available), else off; "
    "decided as the stage starts, logged, and shown in the pipeline plan (TRL's default: always on)",
}
# TRL fields hftune declares in its own section (DataExtras) with a different meaning of unset: the stage
# sets TRL's field on the trainer's copy of the config (`trainer_args`).
OWNED_TRAINING_KEYS = frozenset({"gradient_checkpointing"})


def hardware_defaults(*, liger: bool = False) -> dict[str, Any]:
    """The values behind HARDWARE_DEFAULTS on this machine. `liger`: the stage trains a plain causal LM or
    reward model forward, where Liger's kernels are a drop-in (not the RL and preference trainers)."""
    import torch

    from hftune.models.loading import bf16_available

    return {
        "bf16": bf16_available(),
        # Without a GPU the Trainer runs torchrun / accelerate processes as DDP over gloo only when told
        # it is on CPU; otherwise each process would train alone on all the data.
        "use_cpu": not distributed.accelerator_available(),
        "dataloader_pin_memory": torch.cuda.is_available(),  # pinning without a GPU only warns
        # Liger's Triton kernels need a GPU; where they run they give TRL's loss without materialising the
        # vocabulary-wide logits (the largest activation at 152k vocabulary).
        "use_liger_kernel": liger
        and torch.cuda.is_available()
        and importlib.util.find_spec("liger_kernel") is not None,
    }


def pair_key_hint(key: str) -> str | None:
    """Why SFT's `too_long` is not a key of the stages that train on pairs (reward, dpo): its `truncate` cuts
    one reply, and a pair cut to fit could lose the very tokens where its replies differ."""
    if key == "too_long":
        return (
            "pairs longer than `max_length` are always dropped and counted (`too_long` in the manifest), "
            "never cut (never truncated to fit): a cut pair may lose where its replies differ; raise "
            "`max_length`, or see the lengths with `hftune data preview`"
        )
    return None


TOKENIZER_KEYS = ("pad_token", "eos_token", "chat_template_path")


def common_checks(values: dict[str, Any], *, needs_model: bool = True, streams: bool = False) -> list[str]:
    """Cross-field rules that hold for every stage; each stage adds its own. `needs_model=False` for a
    stage that can build its model instead (pretraining from scratch); `streams=True` for one that can
    read its data as a stream (`dataset_streaming`)."""
    from hftune.data.mixture import mixture_problems

    problems = []
    if distributed.fsdp_without_gpu(distributed.sharding()):  # `accelerate launch` with an FSDP config
        problems.append(distributed.FSDP_NEEDS_GPU)
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION")  # what `accelerate launch` asked for
    if distributed.precision_without_gpu(precision, values):
        problems.append(distributed.LAUNCH_PRECISION.format(precision))
    if needs_model and not values.get("model_name_or_path"):
        problems.append("`model_name_or_path`: required (a Hub id, a local folder, or `tiny:llama`)")
    if not values.get("data_recipe") and not values.get("dataset_name"):
        problems.append(
            "`data_recipe`: required (a built-in recipe name, a recipe YAML path or a list of them), "
            "or TRL's `dataset_name` for data in a TRL format"
        )
    problems.extend(mixture_problems(values.get("data_recipe")))
    if values.get("dataset_streaming") and not streams:
        problems.append(
            "`dataset_streaming`: only `hftune pretrain` streams its corpus; this stage reads its data whole"
        )
    if values.get("load_in_4bit") and values.get("load_in_8bit"):
        problems.append("`load_in_4bit` and `load_in_8bit`: choose one")
    if (values.get("load_in_4bit") or values.get("load_in_8bit")) and not values.get("use_peft"):
        problems.append("`load_in_4bit`/`load_in_8bit` need `use_peft: true` (QLoRA trains an adapter)")
    if values.get("bf16") and values.get("fp16"):
        problems.append("`bf16` and `fp16`: choose one")
    if (
        isinstance(values.get("gradient_checkpointing"), bool)
        and values.get("activation_checkpointing") is not None
    ):
        problems.append(
            "`gradient_checkpointing` and `activation_checkpointing` are one setting (the second is "
            "transformers' newer name for it): set one"
        )
    for key in TOKENIZER_KEYS:
        if values.get(key):
            # TRL would change the tokenizer after hftune checked it, and every later stage (reward,
            # RL, eval) would then read text differently from how this stage trained.
            problems.append(
                f"`{key}`: hftune takes eos, pad and the chat template from the model's tokenizer (end of "
                "turn as eos, a pad distinct from it); set `chat_template` at the SFT stage instead"
            )
    return problems


@dataclass
class RunDirs:
    final: Path  # the finished artifact (replaced atomically at the end)
    work: Path  # checkpoints, prepared data, logs: kept after a crash so `--resume` can continue
    started: float  # wall-clock start, for the manifest


def run_dirs(cfg: StageConfig, resume: bool = False) -> RunDirs:
    """Where this run writes: the artifact's folder (`output_dir`) and the work folder beside it, where the
    trainer writes checkpoints (`trainer_args`), so nothing half-written ever lands in the artifact's folder.

    Checks, before any work, that finishing the run loses nothing the user made: the artifact folder and its
    work folder must be new, empty or hftune's (or `--overwrite` was given), and must not hold one of the
    run's inputs; checkpoints of an interrupted run are not thrown away unless asked (`--resume` continues
    them, `--overwrite` discards them)."""
    final = Path(cfg.training.output_dir)
    work = artifacts.work_dir(final)
    if distributed.is_main_process():
        artifacts.check_output(final, overwrite=cfg.overwrite, inputs=run_inputs(cfg), work=True)
        if not resume and not cfg.overwrite and checkpoint_folders(work):
            raise UserError(
                f"{work} holds checkpoints of an interrupted run ({checkpoint_folders(work)[-1].name}): pass "
                "--resume to continue it, or --overwrite to discard them and start over"
            )
    return RunDirs(final, work, time.time())


def trainer_args(cfg: StageConfig, dirs: RunDirs, *, model_path: str | None = None, **changes: Any):
    """The TRL config a trainer gets: a copy of the parsed one that writes to the work folder, with gradient
    checkpointing decided (`gradient_checkpointing`, for the model at `model_path`, by default
    `model_name_or_path`) and the stage's own `changes`. The parsed config is never changed (trainers and
    PEFT change what they are given), so the config saved beside the artifact is the one parsed."""
    args = copy.deepcopy(cfg.training)
    args.output_dir = str(dirs.work)
    on = gradient_checkpointing(cfg, model_path or cfg.model.model_name_or_path)
    # TRL's trainers read `gradient_checkpointing`; transformers >= 5.x reads its new name for it.
    args.gradient_checkpointing = on
    if hasattr(args, "activation_checkpointing"):
        args.activation_checkpointing = on
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def gradient_checkpointing(cfg: StageConfig, model_path: str) -> bool:
    """Whether the stage trains with gradient checkpointing: as its config sets it, else (`auto`) as the
    stage's memory estimate for the model at `model_path` on this machine decides
    (`memory.decide_checkpointing`), logged with the reason. Every process of a launch takes the main
    process's decision, so they train alike (the host memory available changes from moment to moment)."""
    from hftune.stages import memory

    requested = memory.requested_checkpointing(cfg)
    if requested is not None:
        return requested
    decision = _checkpointing_decision(cfg, model_path)
    decision = distributed.broadcast(decision)
    logger.info("%s", decision.describe())
    return decision.on


def _checkpointing_decision(cfg: StageConfig, model_path: str):
    from transformers import AutoConfig

    from hftune.models.loading import resolve_source
    from hftune.stages import memory

    try:
        # Only config.json (a base model's, under adapters): the estimate builds the model on `meta`.
        config = AutoConfig.from_pretrained(
            resolve_source(model_path).base,
            revision=cfg.model.model_revision,
            trust_remote_code=bool(cfg.training.trust_remote_code),
        )
        return memory.estimate(cfg.stage, cfg, config).checkpointing
    except (OSError, UserError, AttributeError, KeyError, TypeError, ValueError) as err:
        # A config the estimate cannot read (an architecture without `hidden_size`, say): the side that fits.
        logger.warning("gradient checkpointing: no memory estimate for %s (%s)", model_path, err)
        return memory.Checkpointing(True, "the memory estimate could not be made")


def model_args(cfg: StageConfig, **changes: Any):
    """A copy of the parsed ModelConfig for loading and LoRA (loading sets `dtype`, PEFT extends
    `lora_modules_to_save` in place), with the stage's own `changes`."""
    model = copy.deepcopy(cfg.model)
    for key, value in changes.items():
        setattr(model, key, value)
    return model


def run_inputs(cfg: StageConfig) -> list[str]:
    """The paths a run reads (its config, data and input models), which its output must never replace."""
    found = [cfg.source if cfg.source != "command line" else None]
    keys = (
        "model_name_or_path",
        "reward_model_path",
        "sft_model_path",
        "data_files",
        "data_recipe",
        "dataset_name",
    )
    for section in cfg.sections.values():
        for key in keys:
            value = getattr(section, key, None)
            # A mixture's parts each name a recipe and maybe a data file.
            values = value if isinstance(value, list) else [value]
            for item in values:
                named = [item.get("recipe"), item.get("data_files")] if isinstance(item, dict) else [item]
                found += [v for v in named if isinstance(v, str) and Path(v).exists()]
    return found


@dataclass
class Prepared:
    """A training stage's trainer and data, built and checked but not yet trained (causal-LM stages and
    preference optimisation; the reward stage keeps its encoded held-out pairs too)."""

    trainer: Any
    data: Any
    recipe: Any
    tokenizer: Any
    checkpoint: str | None
    dirs: RunDirs


def load_stage_tokenizer(cfg: StageConfig, path: str | None = None):
    """The tokenizer of the stage's model (or of `path`), with the config's chat template (loaded before the
    data, so every data problem surfaces before minutes of weight loading)."""
    from hftune.models.tokenizer import load_tokenizer

    model_args = cfg.model
    return load_tokenizer(
        path or model_args.model_name_or_path,
        chat_template=cfg.hftune.chat_template,
        trust_remote_code=bool(cfg.training.trust_remote_code),
        revision=model_args.model_revision,
    )


def load_data(
    cfg: StageConfig,
    tokenizer,
    dirs: RunDirs,
    *,
    too_long: str | None = None,
    formats: tuple[str, ...] | None = None,
    sft_tokens: dict[str, Any] | None = None,
):
    """The stage's recipe and its prepared rows: every data problem surfaces before any weights load.

    The rows come from `data_recipe` (one recipe or a mixture) or TRL's `dataset_name` (`data.mixture`);
    `formats` are the TRL formats the stage trains on (data in a TRL format is read in the first that
    fits), `too_long` what happens to rows over `max_length` (default: the stage's `too_long` option, else
    "drop"), `sft_tokens` whether the rows come tokenized for TRL's SFTTrainer (`prepare_dataset`). The
    recipe returned is the one the rows were read with (for a mixture, its first part's,
    named for all parts; for `dataset_name`, with the detected converter and format).

    In a multi-process run the data is prepared once per machine: the local main process prepares it and
    saves it in the stage's work folder, and every process (that one included) reads it back from there.
    Rows read from disk are memory-mapped Arrow, so the trainers' own tokenization is cached beside them
    and also done once (TRL tokenizes with the main process first).
    """
    from hftune.data import load_prepared, save_prepared
    from hftune.data.mixture import data_parts, read_as
    from hftune.data.prompt_keys import held_out_upstream

    parts = data_parts(cfg.hftune, cfg.sections.get("script"))
    # The stage says what it trains on, so `dataset_name` data is read in a layout it can take.
    formats = formats or stage_formats(cfg.stage)

    def prepare():
        from hftune.data import cache

        # Prompts an artifact behind this stage's model held out are what the eval measures: never train on
        # them.
        upstream = held_out_upstream(getattr(cfg.model, "model_name_or_path", None))

        def compute():
            settings = dict(too_long=too_long, formats=formats, exclude=upstream, sft_tokens=sft_tokens)
            return prepare_rows(cfg, parts, tokenizer, **settings)

        if not cfg.hftune.data_cache:
            return compute()
        settings = {
            **row_settings(cfg, too_long=too_long),
            "exclude": upstream,
            "formats": formats,
            "sft_tokens": sft_tokens,
        }
        return cache.cached(cache.key(parts, tokenizer, settings), compute)

    if not distributed.is_distributed():
        data = prepare()
    else:
        folder = dirs.work / f"prepared-data-node{distributed.node_rank()}"
        with distributed.local_main_first():
            if distributed.is_local_main_process():
                save_prepared(prepare(), folder)
        data = load_prepared(folder)
    logger.info("data: %s", data.summary())
    return read_as(parts, data), data


def stage_formats(stage: str) -> tuple[str, ...] | None:
    """The TRL formats stage `stage` trains on (`registry.StageSpec.formats`); None where it names none."""
    from hftune.stages import registry

    spec = registry.STAGES.get(stage)
    return (spec.formats or None) if spec is not None else None


def prepare_rows(
    cfg: StageConfig,
    parts,
    tokenizer,
    *,
    max_length: int | None = None,
    too_long: str | None = None,
    formats: tuple[str, ...] | None = None,
    exclude: frozenset[str] | set[str] = frozenset(),
    sft_tokens: dict[str, Any] | None = None,
):
    """The stage's data parts prepared with its settings (max_length, strictness, held-out split, seed, how
    long rows are handled): what `load_data` trains on and `hftune data preview --config` shows."""
    from hftune.data.mixture import prepare_parts

    settings = row_settings(cfg, max_length=max_length, too_long=too_long)
    return prepare_parts(
        parts, tokenizer=tokenizer, exclude=exclude, formats=formats, sft_tokens=sft_tokens, **settings
    )


def row_settings(
    cfg: StageConfig, *, max_length: int | None = None, too_long: str | None = None
) -> dict[str, Any]:
    """The stage's settings that decide which rows it trains on and how they are cut."""
    extras = cfg.hftune
    return {
        "max_length": max_length or getattr(cfg.training, "max_length", None),
        "strict": extras.data_strict,
        "eval_fraction": extras.eval_fraction,
        "seed": cfg.training.seed,
        "too_long": too_long or getattr(extras, "too_long", "drop"),
    }


def checkpoint_folders(work: Path) -> list[Path]:
    """The checkpoint folders in `work`, oldest first (complete or not)."""
    if not work.is_dir():
        return []
    found = [p for p in work.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def last_complete_checkpoint(work: Path) -> str | None:
    """The newest checkpoint in `work` that was written to the end. The Trainer writes trainer_state.json
    last, so a folder without it was cut off mid-write (a `kill -9` while saving): it is removed, and the
    checkpoint before it is the one to resume."""
    for folder in reversed(checkpoint_folders(work)):
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


def checkpoint_to_resume(dirs: RunDirs, cfg: StageConfig, resume: bool, data=None) -> str | None:
    """The last checkpoint of an interrupted run in the work folder, when the user asked to resume, and
    only if that run had this very config and data: resuming another run's checkpoints would train a model
    the saved config misreports. Records this run's config and data in the work folder for the next
    `--resume` (and as the mark that the folder is hftune's)."""
    work = dirs.work
    last = last_complete_checkpoint(work) if resume else None
    record = {
        "config": {k: v for k, v in cfg.resolved().items() if k not in _RUN_PATHS},
        "data_fingerprint": getattr(data, "fingerprint", None),
    }
    if resume and last:
        _check_same_run(work, record, last)
        logger.info("resuming from %s", last)
    elif resume:
        logger.warning("--resume: no checkpoint in %s; starting from the beginning", work)
    if distributed.is_main_process():
        if not resume:
            for old in checkpoint_folders(work):  # only there with --overwrite (run_dirs refuses otherwise)
                logger.warning("--overwrite: removing %s, a checkpoint of an earlier run", old)
                shutil.rmtree(old, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        artifacts.write_json(work / artifacts.RUN_RECORD, record)
    return last


_RUN_PATHS = ("output_dir", "logging_dir", "run_name")  # where a run writes does not change what it trains


def _check_same_run(work: Path, record: dict[str, Any], checkpoint: str) -> None:
    path = work / artifacts.RUN_RECORD
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("--resume: %s does not record the config it was made with; resuming it as is", work)
        return
    old, new = before.get("config", {}), record["config"]
    changed = [
        f"{key}: {show(old.get(key))} -> {show(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    if before.get("data_fingerprint") != record["data_fingerprint"]:
        changed.append("the training data (its rows differ)")
    if changed:
        raise UserError(
            f"--resume: {checkpoint} was made with a different config, so resuming it would train a model "
            f"this config does not describe. Changed: {'; '.join(changed)}. Run with the config it was "
            f"made with, or without --resume to start over (the old checkpoints in {work} are then replaced)."
        )


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


def save_artifact(
    dirs: RunDirs,
    cfg: StageConfig,
    *,
    stage: str,
    tokenizer,
    metrics: dict[str, Any],
    parents: list[dict[str, Any]],
    data: dict[str, Any],
    trainer=None,
    save_model: Callable[[Path], None] | None = None,
    write_extra: Callable[[Path], None] | None = None,
    manifest_metrics: dict[str, Any] | None = None,
    prepared=None,
) -> dict[str, Any]:
    """The one way a training stage finishes: weights, tokenizer (with its chat template), resolved config,
    metrics, log history, anything stage-specific (`write_extra`), the prompt keys of `prepared` (the
    stage's PreparedData) and the manifest, written to a temporary
    folder that replaces the artifact only when complete; then the work folder goes. No pickles.

    Weights come from `save_model(out)` when given (the RL policy adapter), else `trainer.save_model`, which
    every process calls (a sharded FSDP / ZeRO-3 model is gathered to save). Returns the manifest (empty on
    the other processes)."""
    from hftune.data.prompt_keys import write_prompts

    if trainer is not None:  # a diverged run leaves no artifact (PPO: the policy it saves, after any restore)
        from hftune.stages.finite import check_finite_weights

        check_finite_weights(getattr(trainer.model, "policy", trainer.model))
    manifest: dict[str, Any] = {}
    with artifacts.atomic_dir(dirs.final, collective=True, overwrite=cfg.overwrite) as out:
        if save_model is None:
            trainer.save_model(str(out))
        if distributed.is_main_process():
            if save_model is not None:
                save_model(out)
            tokenizer.save_pretrained(str(out))
            for unsafe in list(out.glob("*.bin")) + list(out.glob("*.pt")):
                unsafe.unlink()  # weights ship as safetensors only; training_args.bin is a pickle
            # PEFT's placeholder card ("[More Information Needed]") says nothing true; hftune's cards are
            # generated from the manifests when a model is pushed.
            (out / "README.md").unlink(missing_ok=True)
            saved = yaml.safe_dump(cfg.saved(), sort_keys=True) + _decided_note(cfg, trainer)
            (out / "config.hftune.yaml").write_text(saved)
            artifacts.write_json(out / "metrics.json", metrics)
            if trainer is not None:
                artifacts.write_json(out / "log_history.json", trainer.state.log_history)
            if write_extra is not None:
                write_extra(out)
            if prepared is not None:
                # What this stage trained on and held out, as prompt keys (no text): the eval's held-out
                # prompts and its contamination audit read them.
                data = {
                    **data,
                    **write_prompts(
                        out,
                        prepared.train_keys,
                        prepared.eval_keys,
                        seed=cfg.training.seed,
                        eval_fraction=cfg.hftune.eval_fraction,
                    ),
                }
            manifest = artifacts.write_manifest(
                out,
                stage=stage,
                config_hash=cfg.config_hash(),
                parents=parents,
                data=data,
                metrics=manifest_metrics if manifest_metrics is not None else metrics,
                seed=cfg.training.seed,
                started=dirs.started,
                run=run_environment(trainer) if trainer is not None else None,
            )
    if distributed.is_main_process():
        shutil.rmtree(dirs.work, ignore_errors=True)
    return manifest


def _decided_note(cfg: StageConfig, trainer) -> str:
    """A comment for config.hftune.yaml saying how an `auto` gradient checkpointing ran. A comment, not a
    value: the saved config keeps `auto`, so it parses back to the config that ran (which a resume and the
    pipeline compare), and a rerun elsewhere decides for its own machine."""
    from hftune.stages import memory

    args = getattr(trainer, "args", None)
    if args is None or memory.requested_checkpointing(cfg) is not None:
        return ""
    ran = "on" if args.gradient_checkpointing else "off"
    return (
        f"# gradient_checkpointing: auto ran {ran} here (the stage's memory estimate decided; see its log)\n"
    )


def run_environment(trainer) -> dict[str, Any]:
    """How the run trained, read from accelerate's state rather than the config (a launcher's own settings,
    e.g. `accelerate launch --mixed_precision bf16`, override the config's): the number of processes, the
    engine that held the model, the mixed precision and the device type."""
    state = trainer.accelerator.state
    kind = getattr(state.distributed_type, "name", str(state.distributed_type))
    if kind == "DEEPSPEED":
        engine = f"DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage}"
    elif kind == "FSDP":
        engine = "FSDP"
    elif kind.startswith("MULTI_"):
        engine = "DDP"
    else:
        engine = "one process" if state.num_processes == 1 else kind
    return {
        "processes": state.num_processes,
        "engine": engine,
        "mixed_precision": str(state.mixed_precision),
        "device": state.device.type,
    }


def point_adapter_at_sft(out: Path, model_name_or_path: str) -> None:
    """A stage that trains a new adapter on an SFT adapter merges the SFT adapter under it, so the saved
    adapter's base is the SFT folder: loading goes base -> SFT adapter -> this adapter."""
    from hftune.models.loading import resolve_source

    source = resolve_source(model_name_or_path)
    config_path = out / "adapter_config.json"
    if source.adapters and config_path.is_file():
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = str(Path(source.adapter).resolve())
        artifacts.write_json(config_path, config)


def train_evaluating_first(trainer, checkpoint: str | None) -> tuple[Any, dict[str, Any] | None]:
    """`trainer.train`, with the held-out metrics of the model as it was before training (the `eval_`
    keys of the log entry at step 0; None without held-out rows).

    They are measured at the start of training (`eval_on_start`), once the Trainer has wrapped the model
    for its processes. Calling `trainer.evaluate()` before `train()` prepared the model for evaluation only,
    and accelerate's guard against preparing a model twice then skipped the DDP wrap: on 2 processes each
    trained its own copy, never exchanging a gradient, and rank 0's was saved. A resumed run finds the
    entry in the checkpoint's log (a checkpoint without one leaves the numbers out rather than measure the
    checkpoint's weights as the start)."""
    args = trainer.args
    held_out = trainer.eval_dataset is not None
    chosen = args.eval_on_start
    args.eval_on_start = chosen or (held_out and checkpoint is None)
    try:
        train_out = trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        args.eval_on_start = chosen  # the saved config says what the user set
    first = (entry for entry in trainer.state.log_history if entry.get("step") == 0 and "eval_loss" in entry)
    return train_out, next(first, None) if held_out else None


def train_metrics(trainer, train_out) -> dict[str, Any]:
    """The numeric metrics of `trainer.train()`, the step reached, and parameter counts."""
    metrics = {k: v for k, v in train_out.metrics.items() if isinstance(v, int | float)}
    metrics["global_step"] = trainer.state.global_step
    metrics.update(parameter_counts(trainer.model))
    return metrics


def train_summary(metrics: dict[str, Any], output_dir: Path) -> list[str]:
    """The last lines every training stage prints."""
    return [
        f"train loss {metrics.get('train_loss', float('nan')):.4f} over {metrics.get('global_step')} steps "
        f"({metrics.get('train_steps_per_second', float('nan')):.2f} steps/s)",
        f"saved: {output_dir}",
    ]


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
        "format": recipe.format,
        "fingerprint": data.fingerprint,
        "n_source_rows": data.n_source_rows,
        "n_train": n_train,
        "n_eval": len(data.eval) if data.eval is not None else 0,
        "dropped": data.dropped,
    }
    if recipe.description:
        # What the rows are, in the recipe's words: for `hftune label`'s recipe, how the rankings were
        # aggregated and how many (labellers, rankings, pairs) stand behind the rows counted here.
        info["description"] = recipe.description
    if getattr(data, "dropped_pairs", None):
        info["dropped_pairs"] = data.dropped_pairs
    if getattr(data, "truncated", None):
        info["truncated"] = len(data.truncated)  # rows whose final reply was cut to max_length
    if getattr(data, "sources", None):
        info["source"] = [part["source"] for part in data.sources]
        info["sources"] = data.sources  # a mixture: each part's recipe, weight and counts
    return info


def ignore_bias_buffers(model, cfg: StageConfig) -> None:
    """TRL's `ignore_bias_buffers` (ScriptArguments): DistributedDataParallel skips the model's boolean
    buffers (attention-bias masks), which it cannot broadcast, as TRL's own training scripts do."""
    script = cfg.sections.get("script")
    if script is not None and script.ignore_bias_buffers:
        import torch

        model._ddp_params_and_buffers_to_ignore = [
            name for name, buffer in model.named_buffers() if buffer.dtype == torch.bool
        ]


def parameter_counts(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total}
