"""Reward modelling: TRL's RewardTrainer on preference pairs, on top of an SFT model.

    hftune reward --config configs/tiny/reward.yaml [--model_name_or_path runs/tiny/sft ...] [--resume]

Reads top to bottom: parse the config, load the tokenizer the SFT model was trained with (a different
tokenizer or chat template is refused), load and check the preference data, encode each pair through
`hftune.scoring` (the path PPO and eval score with), build the reward model (SFT weights merged, a new
one-output score head, LoRA with the head saved), train, measure the held-out report, and write the
adapter + score head + tokenizer + config + report + manifest atomically to `output_dir`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jinja2 import TemplateError

from hftune import artifacts, distributed, modeling, scoring, stage
from hftune.config import StageConfig, StageSchema, hftune_field, parse_stage_config
from hftune.errors import UserError
from hftune.stage import DataExtras, common_checks

logger = logging.getLogger(__name__)

PREFERENCE_FORMATS = ("preference", "implicit_preference")


@dataclass
class RewardExtras(DataExtras):
    """What TRL's RewardConfig/ModelConfig lack. Names never clash with TRL's."""

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
    if (values.get("report_bootstrap") or 0) < 0:
        problems.append(f"`report_bootstrap`: must be >= 0, got {values['report_bootstrap']}")
    return problems


def schema() -> StageSchema:
    from trl import ModelConfig, RewardConfig

    return StageSchema(
        name="reward",
        classes={"training": RewardConfig, "model": ModelConfig, "hftune": RewardExtras},
        # hftune's defaults where they differ from TRL's: LoRA with the score head saved, a held-out split
        # for the report, precision picked for the hardware, no surprise experiment trackers.
        defaults={
            "output_dir": "runs/reward",
            "use_peft": True,
            "lora_task_type": "SEQ_CLS",
            "lora_target_modules": "all-linear",
            "lora_modules_to_save": ["score"],
            "eval_fraction": 0.1,
            **stage.training_defaults(),
        },
        check=_check,
    )


def parse(config_path: str | None, argv: list[str] | None = None) -> StageConfig:
    return parse_stage_config(schema(), config_path, argv)


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
    model_path = cfg.model.model_name_or_path
    extras = cfg.hftune
    trust = bool(cfg.training.trust_remote_code)
    saved = modeling.load_tokenizer(model_path, trust_remote_code=trust, revision=cfg.model.model_revision)
    if not extras.tokenizer_name_or_path and not extras.chat_template:
        return saved
    chosen = modeling.load_tokenizer(
        extras.tokenizer_name_or_path or model_path,
        chat_template=extras.chat_template,
        trust_remote_code=trust,
        revision=cfg.model.model_revision if not extras.tokenizer_name_or_path else "main",
    )
    what = "tokenizer_name_or_path" if extras.tokenizer_name_or_path else "chat_template"
    if chosen.get_vocab() != saved.get_vocab():
        raise UserError(
            f"{cfg.source}: `{what}` gives a tokenizer whose vocabulary differs from the one saved with "
            f"{model_path}; the reward model must use the SFT model's tokenizer (drop `{what}`)"
        )
    if not saved.chat_template:
        return chosen  # a base model without a template: the config supplies it (checked like SFT's)
    if chosen.chat_template != saved.chat_template:
        raise UserError(
            f"{cfg.source}: `{what}` gives a chat template that differs from the one {model_path} was "
            f"trained with; the reward model would score text rendered differently from what the policy "
            f"writes (drop `{what}`)"
        )
    for special in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if getattr(chosen, special) != getattr(saved, special):
            raise UserError(
                f"{cfg.source}: `{what}` gives a tokenizer whose {special.removesuffix('_id')} differs from "
                f"{model_path}'s; the reward model must use the SFT model's tokenizer (drop `{what}`)"
            )
    return chosen


def encode_pairs(dataset, tokenizer):
    """Pre-tokenize pairs with `scoring.encode`, so training sees exactly what scoring will see; TRL
    skips its own tokenization for datasets that already carry `chosen_ids`/`rejected_ids`."""

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
    final_dir: Path


def prepare(cfg: StageConfig, *, resume: bool = False) -> Prepared:
    from transformers import set_seed
    from trl import RewardTrainer

    args, model_args = cfg.training, cfg.model
    final_dir = Path(args.output_dir)
    source = modeling.resolve_source(model_args.model_name_or_path)
    if source.is_reward_model:
        raise UserError(
            f"{model_args.model_name_or_path} is already a reward model; point "
            "`model_name_or_path` at the SFT output"
        )

    tokenizer = load_matching_tokenizer(cfg)
    scoring.check_pad_token(tokenizer, model_args.model_name_or_path)
    recipe, data = stage.load_data(cfg, tokenizer)
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
    model = modeling.load_reward_model(
        model_args.model_name_or_path,
        model_args,
        trust_remote_code=bool(args.trust_remote_code),
        for_training=True,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise UserError(
            f"the tokenizer has {len(tokenizer)} tokens but {model_args.model_name_or_path} embeds "
            f"only {model.get_input_embeddings().num_embeddings}: mismatched tokenizer"
        )
    model.config.pad_token_id = tokenizer.pad_token_id

    work = artifacts.work_dir(final_dir)
    args.output_dir = str(work)
    checkpoint = stage.checkpoint_to_resume(work, resume)
    try:
        with stage.trl_settings_are_user_errors(cfg.source):
            trainer = RewardTrainer(
                model=model,
                args=args,
                train_dataset=train,
                eval_dataset=eval_pairs,
                processing_class=tokenizer,
                peft_config=modeling.lora_config(model_args),
            )
    finally:
        args.output_dir = str(final_dir)
    stage.count_rows_trl_dropped(trainer, data, args, reason="too_long_for_trl")
    return Prepared(trainer, data, recipe, tokenizer, eval_pairs, checkpoint, final_dir)


def pair_scores(model, pairs, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    started = time.time()
    p = prepare(cfg, resume=resume)
    trainer, data, tokenizer = p.trainer, p.data, p.tokenizer
    pad = tokenizer.pad_token_id
    work = artifacts.work_dir(p.final_dir)
    trainer.args.output_dir = str(work)

    before = pair_scores(trainer.model, p.eval_pairs, pad) if p.eval_pairs is not None else None
    train_out = trainer.train(resume_from_checkpoint=p.checkpoint)
    metrics: dict[str, Any] = {k: v for k, v in train_out.metrics.items() if isinstance(v, int | float)}
    metrics["global_step"] = trainer.state.global_step
    metrics.update(stage.parameter_counts(trainer.model))

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
    trainer.args.output_dir = str(p.final_dir)

    source = modeling.resolve_source(cfg.model.model_name_or_path)
    manifest: dict[str, Any] = {}
    with artifacts.atomic_dir(p.final_dir, collective=True) as out:
        stage.save_common(out, cfg, trainer, tokenizer, metrics)
        if distributed.is_main_process():
            if source.adapters and (out / "adapter_config.json").is_file():
                # The SFT adapter was merged under this one: the adapter's base is the SFT folder, and
                # loading goes base -> SFT adapter -> reward adapter.
                config = json.loads((out / "adapter_config.json").read_text())
                config["base_model_name_or_path"] = str(Path(source.adapter).resolve())
                artifacts.write_json(out / "adapter_config.json", config)
            if report:
                artifacts.write_json(out / scoring.REPORT_FILE, report)
            manifest = artifacts.write_manifest(
                out,
                stage="reward",
                config_hash=cfg.config_hash(),
                parents=[artifacts.parent_ref(cfg.model.model_name_or_path, "sft_model")],
                data=stage.data_manifest(p.recipe, data, cfg.hftune.data_files, len(trainer.train_dataset)),
                metrics={**metrics, **{k: v for k, v in report.items() if not isinstance(v, dict | list)}},
                seed=cfg.training.seed,
                started=started,
            )
    if distributed.is_main_process():
        shutil.rmtree(work, ignore_errors=True)
    return RewardResult(p.final_dir, metrics, report, manifest, trainer, p.eval_pairs)


def summary(result: RewardResult) -> str:
    """What `hftune reward` prints when it finishes."""
    lines = [format_report(result.report)] if result.report else []
    m = result.metrics
    lines.append(
        f"train loss {m.get('train_loss', float('nan')):.4f} over {m.get('global_step')} steps "
        f"({m.get('train_steps_per_second', float('nan')):.2f} steps/s)"
    )
    lines.append(f"saved: {result.output_dir}")
    return "\n".join(lines)
