"""Supervised fine-tuning: TRL's SFTTrainer with LoRA/QLoRA and assistant-only loss by default.

    hftune sft --config configs/tiny/sft.yaml [--learning_rate 1e-3 ...] [--resume]

Reads top to bottom: parse the config (TRL's SFTConfig + ModelConfig + the options below); load the
tokenizer and the data (all checks before any weights load); load the model; build TRL's SFTTrainer; train;
write the adapter (or model) + tokenizer + config as parsed + metrics + manifest atomically to `output_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hftune import artifacts
from hftune.config import StageConfig, StageSchema, hftune_field, parse_stage_config
from hftune.errors import UserError
from hftune.stages import causal_lm, common
from hftune.stages.causal_lm import TRL_CONFIGS  # noqa: F401 (the stage interface, for --help)
from hftune.stages.common import DataExtras, common_checks

SFT_FORMATS = ("conversational", "prompt_completion", "language_modeling")


@dataclass
class SFTExtras(DataExtras):
    """What TRL's SFTConfig/ModelConfig lack (the data options every stage shares). Names never clash
    with TRL's, but for the TRL key hftune owns (`gradient_checkpointing`: common.OWNED_TRAINING_KEYS)."""

    too_long: str = hftune_field(
        "drop",
        "Rows longer than `max_length` tokens: `drop` them (counted as too_long), or `truncate` the final "
        "reply (a text: its end) to fit. Truncating keeps the prompt whole and cuts the reply, never the "
        "reverse; a row whose prompt alone is too long is still dropped. The count is in the manifest.",
        choices=("drop", "truncate"),
    )
    tokenize_once: bool = hftune_field(
        True,
        "Keep the tokens of the rendering that measures each row against `max_length` and hand them to "
        "TRL in its own layout (input_ids and loss masks), so SFTTrainer does not tokenize the rows again; "
        "with `data_cache` a rerun reads the tokens back. The same labels either way; false: TRL "
        "tokenizes the rows itself.",
    )


EXTRAS = SFTExtras
# hftune's defaults where they differ from TRL's: LoRA on all linear layers, assistant-only loss, no surprise
# experiment trackers (and precision picked for the hardware: common.hardware_defaults).
DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/sft",
    "use_peft": True,
    "lora_target_modules": "all-linear",
    "assistant_only_loss": True,
    **common.TRAINING_DEFAULTS,
}


def check(values: dict[str, Any]) -> list[str]:
    problems = common_checks(values)
    if values.get("packing") and values.get("packing_strategy") == "wrapped":
        problems.append(
            "`packing_strategy: wrapped` concatenates examples so they attend to each other and splits "
            "turns across rows; use `packing_strategy: bfd` (position-id packing) or `packing: false`"
        )
    return problems


def schema() -> StageSchema:
    return StageSchema(
        name="sft",
        classes={**causal_lm.trl_classes(), "hftune": SFTExtras},
        defaults={**DEFAULTS, **common.hardware_defaults(liger=True)},
        check=check,
        owned=common.OWNED_TRAINING_KEYS,
    )


def parse(
    config_path: str | None,
    argv: list[str] | None = None,
    *,
    values: dict[str, Any] | None = None,
    source: str | None = None,
) -> StageConfig:
    return parse_stage_config(schema(), config_path, argv, values=values, source=source)


def prepare(cfg: StageConfig, *, resume: bool = False) -> common.Prepared:
    """The trainer and data, built and checked but not trained (for tests and inspection)."""
    from transformers import set_seed
    from trl import SFTTrainer

    from hftune.data.tokens import training_template
    from hftune.models import loading

    dirs = common.run_dirs(cfg, resume)
    model_args = common.model_args(cfg)

    # Tokenizer, template and data first: every data problem surfaces before minutes of weight loading.
    tokenizer = common.load_stage_tokenizer(cfg)
    masked = bool(cfg.training.assistant_only_loss)
    sft_tokens = None
    if cfg.hftune.tokenize_once:  # rows come tokenized in TRL's layout by the rendering that measures them
        sft_tokens = {"assistant_only_loss": masked, "chat_template": training_template(tokenizer, masked)}
    recipe, data = common.load_data(cfg, tokenizer, dirs, sft_tokens=sft_tokens)
    causal_lm.check_format(recipe, SFT_FORMATS, "SFT")
    conversational = causal_lm.conversational(data.train)
    if conversational and not tokenizer.chat_template:
        raise UserError(
            f"{model_args.model_name_or_path} has no chat template and the data is conversational: set "
            "`chat_template: chatml` (or a Jinja string / .jinja file) in the config"
        )
    # Prompt-completion rows are masked by TRL's completion-only loss instead.
    args = common.trainer_args(cfg, dirs, assistant_only_loss=masked and conversational)

    # Seeded before any weight is made: a `tiny:` model's weights are drawn as it loads, and SFTTrainer
    # before TRL 1.15 creates the LoRA adapter (randomly initialised) before its own `set_seed`, so without
    # this the adapter depended on whatever drew random numbers earlier (1.15 seeds before the adapter).
    set_seed(args.seed)
    model = loading.load_model(
        model_args.model_name_or_path,
        model_args,
        trust_remote_code=bool(args.trust_remote_code),
        gradient_checkpointing=args.gradient_checkpointing,
    )
    common.ignore_bias_buffers(model, cfg)
    if args.packing or args.padding_free:
        # Padding-free batches are rows laid end to end with position-id resets, exactly as packed ones.
        causal_lm.check_packing_isolation(model, tokenizer, "packing" if args.packing else "padding_free")

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
    causal_lm.check_trainer(trainer, data, args)
    return common.Prepared(trainer, data, recipe, tokenizer, checkpoint, dirs)


def run(cfg: StageConfig, *, resume: bool = False) -> causal_lm.Result:
    p = prepare(cfg, resume=resume)
    trainer, data = p.trainer, p.data
    metrics = causal_lm.train(trainer, p.checkpoint)
    n_train = len(data.train) if cfg.training.packing else len(trainer.train_dataset)
    manifest = common.save_artifact(
        p.dirs,
        cfg,
        stage="sft",
        trainer=trainer,
        tokenizer=p.tokenizer,
        metrics=metrics,
        parents=[artifacts.parent_ref(cfg.model.model_name_or_path, "base_model")],
        data=common.data_manifest(p.recipe, data, cfg.hftune.data_files, n_train),
        prepared=data,
        write_extra=lambda out: common.save_generation_config(trainer.model, p.tokenizer, out),
    )
    return causal_lm.Result(p.dirs.final, metrics, manifest, trainer)


summary = causal_lm.summary
