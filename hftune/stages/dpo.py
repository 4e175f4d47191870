"""`hftune dpo`: offline preference optimisation. Train a policy straight on preference data, without a
reward model or generation: DPO / IPO / ... (TRL's DPOTrainer) and KTO (KTOTrainer) compare the policy with a
frozen reference; ORPO and SimPO (TRL's experimental ORPOTrainer / CPOTrainer) need none.

    hftune dpo --config configs/tiny/dpo.yaml [--algorithm kto] [--resume]

Reads top to bottom: the config (hftune's keys, defaults and checks; the TRL config class depends on
`algorithm`), then `run`: seed, load the tokenizer and the preference data (the same recipes as `hftune
reward`; KTO also reads unpaired good/bad rows, and splits pairs into their halves), load the model (the SFT
model, its adapter merged, plus a fresh LoRA adapter: switching it off gives the reference, so no second
copy is held), build the algorithm's TRL trainer, measure the held-out pairs, train, measure them again
(`diagnose`), and write the adapter, tokenizer, config, metrics and manifest atomically.

Imports neither torch nor TRL at module level, so that `hftune dpo --help` answers at once. The only module
importing `trl.experimental` (ORPO and CPO/SimPO live there in TRL 1.10-1.16; DPO and KTO are TRL's
maintained trainers); pinned by the project's TRL range (setup.cfg), and `tests/test_po.py` runs each.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftune import artifacts
from hftune.config import (
    StageConfig,
    StageSchema,
    algorithm_given,
    hftune_field,
    parse_stage_config,
)
from hftune.errors import UserError, did_you_mean
from hftune.stages import common
from hftune.stages.common import DataExtras, common_checks

logger = logging.getLogger(__name__)

# hftune pins the TRL versions whose experimental trainers it runs and tests them; TRL's notice that the
# API may change is for code that does not.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

ALGORITHMS = ("dpo", "kto", "orpo", "simpo")
PAIR_FORMATS = ("preference", "implicit_preference")
UNPAIRED_FORMAT = "unpaired_preference"


@dataclass
class POExtras(DataExtras):
    """What TRL's DPO / KTO / ORPO / CPO configs lack. Names never clash with TRL's, but for the TRL key
    hftune owns (`gradient_checkpointing`: common.OWNED_TRAINING_KEYS)."""

    algorithm: str = hftune_field(
        "dpo",
        "`dpo` (TRL's DPOTrainer; `loss_type` picks sigmoid = DPO, ipo, hinge, robust, ...), `kto` "
        "(KTOTrainer: unpaired good/bad completions; pairs are split into their halves), or the "
        "reference-free `orpo` / `simpo` (TRL's experimental ORPOTrainer, and CPOTrainer with "
        "`loss_type: simpo`). For simpo hftune sets `loss_type: simpo`, `cpo_alpha: 0`, `beta: 2.0` and "
        "`simpo_gamma: 0.5` (the SimPO paper's); orpo and simpo also set `remove_unused_columns: false`.",
        choices=ALGORITHMS,
    )
    max_drift: float | None = hftune_field(
        10.0,
        "Warn when, on the held-out pairs, the policy's mean log-probability of a chosen reply has moved "
        "more than this many nats from the reference's (DPO / KTO; null: never).",
    )


EXTRAS = POExtras
TRL_CONFIGS = ("DPOConfig (or KTOConfig / ORPOConfig / CPOConfig with `algorithm`)", "ModelConfig")
DEFAULTS: dict[str, Any] = {"output_dir": "runs/dpo", **common.ADAPTER_STAGE_DEFAULTS}


# DPOTrainer's `loss_type` words in TRL 1.16. DPOConfig types the key `list[str]` and names the words only in
# its help and in the trainer's error for an unknown one, raised in the first training step; the words depend
# on `algorithm` (KTO's and CPO's `loss_type` are TRL's field choices, checked by the parse), so they are
# checked here. tests/test_po.py compares this list with TRL's help text, so a TRL bump that adds one shows.
DPO_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
# The losses built on the chosen-rejected reward difference: the only ones TRL gives an f-divergence other
# than the reverse KL (the f-DPO paper's log Z term cancels only there).
F_DIVERGENCE_LOSSES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")


def _check(values: dict[str, Any]) -> list[str]:
    """Rules across keys (each key's own bounds: config.RANGE_RULES), found before any weights load: TRL
    checks these only when the trainer is built, after the model loaded, or in the first step."""
    problems = common_checks(values)
    algorithm = values.get("algorithm", "dpo")
    if values.get("sync_ref_model") and values.get("use_peft"):
        problems.append(
            "`sync_ref_model`: updates a separate reference model, but with LoRA (`use_peft: true`) the "
            "reference is the policy with its adapter switched off; set `use_peft: false` to train "
            f"{algorithm} with a full copy as the reference, or remove `sync_ref_model`"
        )
    if values.get("sync_ref_model") and values.get("precompute_ref_log_probs"):
        problems.append(
            "`sync_ref_model`: the reference changes while training, so its log-probabilities cannot be "
            "computed once beforehand; remove `precompute_ref_log_probs` or `sync_ref_model`"
        )
    if algorithm == "dpo":
        losses = values.get("loss_type") or ["sigmoid"]
        for loss in losses:
            if loss not in DPO_LOSS_TYPES:
                problems.append(
                    f"`loss_type`: {loss!r} is not a loss of TRL's DPOTrainer; one of "
                    f"{', '.join(DPO_LOSS_TYPES)}{did_you_mean(str(loss), DPO_LOSS_TYPES)}"
                )
        if "exo_pair" in losses and not values.get("label_smoothing"):
            problems.append(
                "`label_smoothing`: `loss_type: exo_pair` needs it above 0 (the EXO paper uses 1e-3)"
            )
        divergence = values.get("f_divergence_type", "reverse_kl")
        if divergence != "reverse_kl" and not set(losses) <= set(F_DIVERGENCE_LOSSES):
            others = ", ".join(sorted(set(losses) - set(F_DIVERGENCE_LOSSES)))
            problems.append(
                f"`f_divergence_type`: {divergence} works with the losses {', '.join(F_DIVERGENCE_LOSSES)} "
                f"only (the f-DPO paper's derivation), not {others}"
            )
    return problems


def _trl_config(algorithm: str) -> type:
    """The TRL config class of `algorithm` (imports TRL)."""
    if algorithm == "kto":
        from trl import KTOConfig

        return KTOConfig
    if algorithm == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig
    if algorithm == "simpo":
        from trl.experimental.cpo import CPOConfig

        return CPOConfig
    from trl import DPOConfig

    return DPOConfig


def schema(algorithm: str = "dpo") -> StageSchema:
    from trl import ModelConfig

    defaults = {**DEFAULTS, **common.hardware_defaults()}
    if algorithm in ("orpo", "simpo"):
        # Their collator needs every column; TRL sets this itself, with a warning, when it is left on.
        defaults["remove_unused_columns"] = False
    if algorithm == "simpo":
        # SimPO is CPO's trainer with its length-normalised, reference-free loss and no SFT term
        # (Meng et al. 2024), with the paper's beta / gamma defaults.
        defaults.update(loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=0.5)
    return StageSchema(
        name=algorithm,
        classes={"training": _trl_config(algorithm), "model": ModelConfig, "hftune": POExtras},
        defaults=defaults,
        check=_check,
        owned=common.OWNED_TRAINING_KEYS,
        unknown_key_hint=common.pair_key_hint,
    )


def parse(
    config_path: str | None,
    argv: list[str] | None = None,
    *,
    values: dict[str, Any] | None = None,
    source: str | None = None,
) -> StageConfig:
    chosen = schema(algorithm_given(config_path, argv, values, ALGORITHMS))
    return parse_stage_config(chosen, config_path, argv, values=values, source=source)


def _trainer_class(algorithm: str) -> type:
    if algorithm == "kto":
        from trl import KTOTrainer

        return KTOTrainer
    if algorithm == "orpo":
        from trl.experimental.orpo import ORPOTrainer

        return ORPOTrainer
    if algorithm == "simpo":
        from trl.experimental.cpo import CPOTrainer

        return CPOTrainer
    from trl import DPOTrainer

    return DPOTrainer


# What the trainers log for each pair (TRL's names, the same across DPO, KTO, ORPO and CPO).
DIAGNOSTICS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "logps/chosen", "logps/rejected")


@dataclass
class Result:
    output_dir: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    trainer: Any
    warnings: list[str]


def prepare(cfg: StageConfig, *, resume: bool = False) -> common.Prepared:
    """The trainer and data, built and checked but not trained (for tests and inspection)."""
    from transformers import set_seed

    from hftune.models import loading
    from hftune.stages.finite import StopOnNonFinite

    algorithm = cfg.hftune.algorithm
    # Before anything draws: the LoRA adapter is initialised from torch's global RNG inside TRL's trainer.
    set_seed(cfg.training.seed)
    dirs = common.run_dirs(cfg, resume)
    args, model_args = common.trainer_args(cfg, dirs), common.model_args(cfg)
    tokenizer = common.load_stage_tokenizer(cfg)
    formats = PAIR_FORMATS + ((UNPAIRED_FORMAT,) if algorithm == "kto" else ())
    recipe, data = common.load_data(cfg, tokenizer, dirs, formats=formats)
    if recipe.format not in formats:
        raise UserError(
            f"data_recipe {recipe.name}: format `{recipe.format}` is not {algorithm} data; it trains on "
            f"{' or '.join(formats)} rows (e.g. `data_recipe: tiny_preferences`"
            + (", or `tiny_unpaired` for KTO)" if algorithm == "kto" else ")")
        )
    train, evaluation = _rows(data.train, algorithm), _rows(data.eval, algorithm)

    model = loading.load_model(
        model_args.model_name_or_path,
        model_args,
        trust_remote_code=bool(args.trust_remote_code),
        gradient_checkpointing=args.gradient_checkpointing,
    )
    common.ignore_bias_buffers(model, cfg)
    checkpoint = common.checkpoint_to_resume(dirs, cfg, resume, data)
    # DPO and KTO given a LoRA `peft_config` and no `ref_model` use the model with its adapter switched off as
    # the reference: one copy of the weights in memory, not two.
    trainer_class = _trainer_class(algorithm)
    with common.trl_settings_are_user_errors(cfg.source):
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            peft_config=loading.lora_config(model_args),
        )
    trainer.add_callback(StopOnNonFinite())  # a diverged run stops at once, naming the step
    # TRL drops pairs its own truncation leaves with nothing to train on: counted, never lost unseen.
    common.count_rows_trl_dropped(trainer, data, args, reason="too_long_for_trl")
    return common.Prepared(trainer, data, recipe, tokenizer, checkpoint, dirs)


def _rows(dataset, algorithm: str):
    """The trainer's rows: preference pairs as they are (no `margin`: only the reward model uses one);
    for KTO, pairs split into a desirable and an undesirable completion (TRL's own unpairing)."""
    if dataset is None:
        return None
    if "margin" in dataset.column_names:
        dataset = dataset.remove_columns("margin")
    if algorithm == "kto" and "label" not in dataset.column_names:
        from trl.data_utils import unpair_preference_dataset

        dataset = unpair_preference_dataset(dataset)
    return dataset


def run(cfg: StageConfig, *, resume: bool = False) -> Result:
    p = prepare(cfg, resume=resume)
    trainer, data, extras = p.trainer, p.data, cfg.hftune

    metrics: dict[str, Any] = {}
    train_out, first = common.train_evaluating_first(trainer, p.checkpoint)
    before = _diagnostics(first or {})
    metrics.update(common.train_metrics(trainer, train_out))
    after = _diagnostics(trainer.evaluate()) if data.eval is not None else {}
    metrics.update({f"heldout_before/{k}": v for k, v in before.items()})
    metrics.update({f"heldout/{k}": v for k, v in after.items()})
    warnings = diagnose(before, after, trainer.state.log_history, extras.max_drift)
    for warning in warnings:
        logger.warning("%s", warning)
    metrics["warnings"] = warnings

    parent = artifacts.parent_ref(cfg.model.model_name_or_path, "sft_model")
    if parent.get("stage") != "sft":  # ORPO / SimPO straight from a base (or any other) model
        parent["role"] = "base_model"
    manifest = common.save_artifact(
        p.dirs,
        cfg,
        stage=extras.algorithm,
        trainer=trainer,
        tokenizer=p.tokenizer,
        metrics=metrics,
        parents=[parent],
        data=common.data_manifest(p.recipe, data, extras.data_files, len(trainer.train_dataset)),
        prepared=data,
        write_extra=lambda out: _write_extra(trainer, p.tokenizer, out, cfg.model.model_name_or_path),
    )
    return Result(p.dirs.final, metrics, manifest, trainer, warnings)


def _write_extra(trainer, tokenizer, out: Path, model_name_or_path: str) -> None:
    common.save_generation_config(trainer.model, tokenizer, out)
    # The new adapter was trained on the SFT model with its adapter merged: load base -> SFT -> this one.
    common.point_adapter_at_sft(out, model_name_or_path)


def _diagnostics(evaluated: dict[str, Any]) -> dict[str, float]:
    """The trainer's own measures of the held-out pairs (implicit reward accuracy and margin, chosen and
    rejected log-probabilities), without the `eval_` prefix."""
    return {k[len("eval_") :]: v for k, v in evaluated.items() if k[len("eval_") :] in DIAGNOSTICS}


def diagnose(
    before: dict[str, float], after: dict[str, float], history: list[dict[str, Any]], max_drift: float | None
) -> list[str]:
    """What the numbers say went wrong, as warnings.

    - The chosen replies' log-probability fell: the known DPO failure where both replies are pushed down
      and the margin grows only because the rejected ones fall faster (measured on the held-out pairs, else
      on the training log).
    - The policy drifted far from where it started (the reference, for DPO / KTO): the held-out chosen
      log-probability moved more than `max_drift` nats.
    """
    warnings = []
    key = "logps/chosen"
    start, end = before.get(key), after.get(key)
    where = "held-out"
    if start is None or end is None:
        logged = [entry[key] for entry in history if key in entry]
        start, end, where = (logged[0], logged[-1], "training") if len(logged) > 1 else (None, None, "")
    if start is not None and end < start:
        warnings.append(
            f"the {where} chosen replies' log-probability fell ({start:.2f} -> {end:.2f}): the policy pushes "
            "chosen and rejected replies down together (a known DPO failure); watch the generations, and "
            "consider a larger `beta`, a lower learning rate, or `loss_type: ipo`"
        )
    if max_drift is not None and before.get(key) is not None and after.get(key) is not None:
        drift = abs(after[key] - before[key])
        if drift > max_drift:
            warnings.append(
                f"the policy drifted {drift:.1f} nats from the reference on the held-out chosen replies "
                f"(more than max_drift {max_drift:g}): its replies may have left the SFT model's distribution"
            )
    return warnings


def summary(result: Result) -> str:
    m = result.metrics

    def change(key: str, digits: int) -> str:
        before, after = m.get(f"heldout_before/{key}", float("nan")), m.get(f"heldout/{key}", float("nan"))
        return f"{before:.{digits}f} -> {after:.{digits}f}"

    lines = []
    if "heldout/rewards/accuracies" in m:
        lines.append(
            f"held-out pairs: implicit reward accuracy {change('rewards/accuracies', 3)}, "
            f"margin {change('rewards/margins', 3)}"
        )
    if "heldout/logps/chosen" in m:
        lines.append(
            f"held-out log-probability: chosen {change('logps/chosen', 2)}, "
            f"rejected {change('logps/rejected', 2)}"
        )
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines + common.train_summary(m, result.output_dir))
