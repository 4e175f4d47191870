"""Reward modelling: TRL's RewardTrainer on preference pairs, on top of an SFT model.

    hftune reward --config configs/tiny/reward.yaml [--model_name_or_path runs/tiny/sft ...] [--resume]

Reads top to bottom: parse the config, load the tokenizer the SFT model was trained with (a different
tokenizer or chat template is refused), load and check the preference data, encode each pair through
`hftune.models.scoring` (the path PPO and eval score with), build the reward model (SFT weights merged, a new
one-output score head, LoRA with the head saved), train, measure the held-out report, and write the
adapter + score head + tokenizer + config + report + manifest atomically to `output_dir`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from jinja2 import TemplateError

from hftune import artifacts, distributed
from hftune.config import StageConfig, StageSchema, hftune_field, parse_stage_config
from hftune.errors import UserError
from hftune.stages import common
from hftune.stages.common import DataExtras, common_checks

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PREFERENCE_FORMATS = ("preference", "implicit_preference")


@dataclass
class RewardExtras(DataExtras):
    """What TRL's RewardConfig/ModelConfig lack. Names never clash with TRL's, but for the TRL key hftune
    owns (`gradient_checkpointing`: common.OWNED_TRAINING_KEYS)."""

    tokenizer_name_or_path: str | None = hftune_field(
        None,
        "Tokenizer to use; default: the one saved with `model_name_or_path` (the SFT output). One that "
        "differs from the SFT model's (vocabulary or chat template) is refused.",
    )
    report_bootstrap: int = hftune_field(
        1000, "Bootstrap resamples for the confidence interval of held-out pairwise accuracy."
    )
    length_correlation_warning: float = hftune_field(
        0.5,
        "Flag the reward model when |correlation| between score and response length reaches this: it may "
        "be rewarding length rather than quality.",
    )


def _check(values: dict[str, Any]) -> list[str]:
    problems = common_checks(values)
    if values.get("use_peft"):
        if str(values.get("lora_task_type")) != "SEQ_CLS":
            problems.append(
                f"`lora_task_type`: a reward model's LoRA is `SEQ_CLS`, got {values['lora_task_type']!r}"
            )
        if "score" not in (values.get("lora_modules_to_save") or []):
            problems.append(
                "`lora_modules_to_save`: must include `score`, or the trained score head is not saved with "
                "the adapter and a reloaded reward model scores with a random head"
            )
    if values.get("load_in_4bit") or values.get("load_in_8bit"):
        # TRL casts the trainable score head to bf16 while the k-bit backbone hands it fp32 states, and
        # the saved model could not yet be reloaded quantized for scoring: refuse rather than crash.
        problems.append(
            "`load_in_4bit`/`load_in_8bit`: not supported for reward models yet; use LoRA in full precision"
        )
    return problems


EXTRAS = RewardExtras
TRL_CONFIGS = ("RewardConfig", "ModelConfig")
# hftune's defaults where they differ from TRL's: LoRA with the score head saved, a held-out split for the
# report, no surprise experiment trackers (and precision picked for the hardware).
DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/reward",
    "use_peft": True,
    "lora_task_type": "SEQ_CLS",
    "lora_target_modules": "all-linear",
    "lora_modules_to_save": ["score"],
    "eval_fraction": 0.1,
    **common.TRAINING_DEFAULTS,
}


def schema() -> StageSchema:
    from trl import ModelConfig, RewardConfig

    return StageSchema(
        name="reward",
        classes={"training": RewardConfig, "model": ModelConfig, "hftune": RewardExtras},
        defaults={**DEFAULTS, **common.hardware_defaults(liger=True)},
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
    return parse_stage_config(schema(), config_path, argv, values=values, source=source)


@dataclass
class RewardResult:
    output_dir: Path
    metrics: dict[str, Any]
    report: dict[str, Any]
    manifest: dict[str, Any]
    trainer: Any
    eval_pairs: Any  # the encoded held-out pairs the report was measured on


def load_matching_tokenizer(cfg: StageConfig):
    """The SFT model's tokenizer, or the configured one when it is the same: the reward model must read
    text exactly as the policy writes it."""
    from hftune.models.tokenizer import check_same_tokenizer, load_tokenizer

    model_path = cfg.model.model_name_or_path
    extras = cfg.hftune
    trust = bool(cfg.training.trust_remote_code)
    saved = load_tokenizer(model_path, trust_remote_code=trust, revision=cfg.model.model_revision)
    if not extras.tokenizer_name_or_path and not extras.chat_template:
        return saved
    chosen = load_tokenizer(
        extras.tokenizer_name_or_path or model_path,
        chat_template=extras.chat_template,
        trust_remote_code=trust,
        revision=cfg.model.model_revision if not extras.tokenizer_name_or_path else "main",
    )
    what = "tokenizer_name_or_path" if extras.tokenizer_name_or_path else "chat_template"
    check_same_tokenizer(
        chosen,
        saved,
        f"{cfg.source}: `{what}`",
        f"the SFT model {model_path}",
        fix=f"the reward model must score text exactly as the policy writes it (drop `{what}`)",
        # A base model without a template: the config supplies it (checked like SFT's), so only the
        # vocabulary must match.
        rendering=bool(saved.chat_template),
    )
    return chosen


def encode_pairs(dataset, tokenizer):
    """Pre-tokenize pairs with `scoring.encode`, so training sees exactly what scoring will see; TRL
    skips its own tokenization for datasets that already carry `chosen_ids`/`rejected_ids`."""
    from hftune.models import scoring

    def encode(row):
        if row.get("prompt") is not None:
            prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        else:  # implicit prompt: the shared conversation before the final replies
            prompt, chosen, rejected = row["chosen"][:-1], row["chosen"][-1:], row["rejected"][-1:]
        return {
            "chosen_ids": scoring.encode(tokenizer, prompt, chosen[-1]["content"]),
            "rejected_ids": scoring.encode(tokenizer, prompt, rejected[-1]["content"]),
            "prompt_length": scoring.prompt_length(tokenizer, prompt),  # for the length report
        }

    keep = {"margin"} & set(dataset.column_names)
    try:
        return dataset.map(encode, remove_columns=[c for c in dataset.column_names if c not in keep])
    except TemplateError as err:
        raise UserError(
            f"the chat template cannot render this preference data ({err}); the reward model must render "
            "pairs with the SFT model's template, so fix the data (e.g. its roles) or the SFT template"
        ) from None


@dataclass
class Prepared:
    trainer: Any
    data: Any
    recipe: Any
    tokenizer: Any
    eval_pairs: Any  # encoded held-out pairs, for the report
    checkpoint: str | None
    dirs: common.RunDirs


def prepare(cfg: StageConfig, *, resume: bool = False) -> Prepared:
    from transformers import set_seed
    from trl import RewardTrainer

    from hftune.models import loading, scoring

    dirs = common.run_dirs(cfg, resume)
    args, model_args = common.trainer_args(cfg, dirs), common.model_args(cfg)
    source = loading.resolve_source(model_args.model_name_or_path)
    if source.is_reward_model:
        raise UserError(
            f"{model_args.model_name_or_path} is already a reward model; point "
            "`model_name_or_path` at the SFT output"
        )

    tokenizer = load_matching_tokenizer(cfg)
    scoring.check_pad_token(tokenizer, model_args.model_name_or_path)
    recipe, data = common.load_data(cfg, tokenizer, dirs)
    if recipe.format not in PREFERENCE_FORMATS:
        raise UserError(
            f"data_recipe {recipe.name}: format `{recipe.format}` is not preference data; a reward model "
            f"trains on pairs ({' or '.join(PREFERENCE_FORMATS)}), e.g. `data_recipe: tiny_preferences`"
        )
    if not tokenizer.chat_template:
        raise UserError(
            f"{model_args.model_name_or_path} has no chat template: set `chat_template: chatml` "
            "(or a Jinja string / .jinja file) as for SFT"
        )
    with distributed.local_main_first():  # tokenized once a machine: the other processes read its cache
        train = encode_pairs(data.train, tokenizer)
        eval_pairs = encode_pairs(data.eval, tokenizer) if data.eval is not None else None

    set_seed(args.seed)  # the new score head is initialised randomly
    model = loading.load_reward_model(
        model_args.model_name_or_path,
        model_args,
        trust_remote_code=bool(args.trust_remote_code),
        for_training=True,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    common.ignore_bias_buffers(model, cfg)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise UserError(
            f"the tokenizer has {len(tokenizer)} tokens but {model_args.model_name_or_path} embeds "
            f"only {model.get_input_embeddings().num_embeddings}: mismatched tokenizer"
        )
    model.config.pad_token_id = tokenizer.pad_token_id

    checkpoint = common.checkpoint_to_resume(dirs, cfg, resume, data)
    with common.trl_settings_are_user_errors(cfg.source):
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=eval_pairs,
            processing_class=tokenizer,
            peft_config=loading.lora_config(model_args),
        )
    from hftune.stages.finite import StopOnNonFinite

    trainer.add_callback(StopOnNonFinite())  # a diverged run stops at once, naming the step
    common.count_rows_trl_dropped(trainer, data, args, reason="too_long_for_trl")
    return Prepared(trainer, data, recipe, tokenizer, eval_pairs, checkpoint, dirs)


def pair_scores(model, pairs, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    from hftune.models import scoring

    chosen = scoring.score_ids(model, pairs["chosen_ids"], pad_token_id)
    rejected = scoring.score_ids(model, pairs["rejected_ids"], pad_token_id)
    return chosen, rejected


def pairwise_wins(chosen: torch.Tensor, rejected: torch.Tensor) -> np.ndarray:
    """1 where the chosen reply scores higher, 0.5 for a tie (a coin flip), 0 otherwise."""
    c, r = chosen.double().numpy(), rejected.double().numpy()
    return (c > r) + 0.5 * (c == r)


def build_report(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_lengths: list[int],
    rejected_lengths: list[int],
    *,
    bootstrap: int,
    seed: int,
    length_warning: float,
) -> dict[str, Any]:
    """Held-out pairwise accuracy with a bootstrap CI, margins, score statistics (PPO normalises rewards
    with `score_stats`), and how strongly the score tracks response length."""
    c, r = chosen.double().numpy(), rejected.double().numpy()
    wins = pairwise_wins(chosen, rejected)
    report: dict[str, Any] = {
        "n_pairs": len(c),
        "accuracy": float(wins.mean()),
        "mean_margin": float((c - r).mean()),
        "chosen": {"mean": float(c.mean()), "std": float(c.std())},
        "rejected": {"mean": float(r.mean()), "std": float(r.std())},
    }
    if bootstrap:
        rng = np.random.default_rng(seed)
        means = wins[rng.integers(0, len(wins), size=(bootstrap, len(wins)))].mean(axis=1)
        report["accuracy_ci95"] = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
    scores = np.concatenate([c, r])
    report["score_stats"] = {"mean": float(scores.mean()), "std": float(scores.std())}
    lengths = np.asarray(chosen_lengths + rejected_lengths, dtype=np.float64)
    corr = float(np.corrcoef(scores, lengths)[0, 1]) if lengths.std() > 0 and scores.std() > 0 else 0.0
    report["length_correlation"] = corr
    report["length_flag"] = bool(abs(corr) >= length_warning)
    return report


def format_report(report: dict[str, Any]) -> str:
    ci = report.get("accuracy_ci95")
    ci_text = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
    lines = [
        f"held-out pairwise accuracy: {report['accuracy']:.3f}{ci_text} over {report['n_pairs']} pairs"
        + (f" (before training {report['accuracy_before']:.3f})" if "accuracy_before" in report else ""),
        f"mean margin (chosen - rejected): {report['mean_margin']:.3f}",
        f"scores: chosen {report['chosen']['mean']:.3f} ± {report['chosen']['std']:.3f}, "
        f"rejected {report['rejected']['mean']:.3f} ± {report['rejected']['std']:.3f}",
        f"score vs response length correlation: {report['length_correlation']:+.2f}"
        + (
            "  <-- WARNING: the reward may be tracking length (reward hacking risk)"
            if report["length_flag"]
            else ""
        ),
    ]
    return "\n".join(lines)


def _response_lengths(pairs, key: str) -> list[int]:
    return [len(ids) - n for ids, n in zip(pairs[key], pairs["prompt_length"], strict=True)]


def run(cfg: StageConfig, *, resume: bool = False) -> RewardResult:
    p = prepare(cfg, resume=resume)
    trainer, data, tokenizer = p.trainer, p.data, p.tokenizer
    pad = tokenizer.pad_token_id

    before = None
    if p.eval_pairs is not None:
        with distributed.full_parameters(trainer.model):  # ZeRO-3 shards it before the engine starts
            before = pair_scores(trainer.model, p.eval_pairs, pad)
    train_out = trainer.train(resume_from_checkpoint=p.checkpoint)
    metrics = common.train_metrics(trainer, train_out)

    report: dict[str, Any] = {}
    if p.eval_pairs is not None:
        chosen, rejected = pair_scores(trainer.model, p.eval_pairs, pad)
        report = build_report(
            chosen,
            rejected,
            _response_lengths(p.eval_pairs, "chosen_ids"),
            _response_lengths(p.eval_pairs, "rejected_ids"),
            bootstrap=cfg.hftune.report_bootstrap,
            seed=cfg.training.seed,
            length_warning=cfg.hftune.length_correlation_warning,
        )
        report["accuracy_before"] = float(pairwise_wins(*before).mean())
        metrics.update(eval_accuracy=report["accuracy"], eval_accuracy_before=report["accuracy_before"])
        logger.debug("reward model report:\n%s", format_report(report))
        if report["length_flag"]:
            logger.warning("score correlates with response length (r=%+.2f)", report["length_correlation"])
    else:
        logger.warning("eval_fraction is 0: no held-out report, and PPO cannot normalise this model's scores")

    def write_extra(out: Path) -> None:
        from hftune.models.scoring import REPORT_FILE

        common.point_adapter_at_sft(out, cfg.model.model_name_or_path)
        if report:
            artifacts.write_json(out / REPORT_FILE, report)

    manifest = common.save_artifact(
        p.dirs,
        cfg,
        stage="reward",
        trainer=trainer,
        tokenizer=tokenizer,
        metrics=metrics,
        parents=[artifacts.parent_ref(cfg.model.model_name_or_path, "sft_model")],
        data=common.data_manifest(p.recipe, data, cfg.hftune.data_files, len(trainer.train_dataset)),
        prepared=data,
        write_extra=write_extra,
        manifest_metrics={**metrics, **{k: v for k, v in report.items() if not isinstance(v, dict | list)}},
    )
    return RewardResult(p.dirs.final, metrics, report, manifest, trainer, p.eval_pairs)


def summary(result: RewardResult) -> str:
    """What `hftune reward` prints when it finishes."""
    lines = [format_report(result.report)] if result.report else []
    return "\n".join(lines + common.train_summary(result.metrics, result.output_dir))
