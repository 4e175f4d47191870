"""Supervised fine-tuning: TRL's SFTTrainer with LoRA/QLoRA and assistant-only loss by default.

    hftune sft --config configs/tiny/sft.yaml [--learning_rate 1e-3 ...] [--resume]

Parse the config (TRL's SFTConfig + ModelConfig + the options below), then `causal_lm.train`: tokenizer
and data first (all checks before any weights load), the model, TRL's trainer, and the adapter +
tokenizer + resolved config + metrics + manifest written atomically to `output_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hftune.config import StageConfig, StageSchema, hftune_field, parse_stage_config
from hftune.stages import causal_lm, common
from hftune.stages.causal_lm import TRL_CONFIGS  # noqa: F401 (the stage interface, for --help)
from hftune.stages.common import DataExtras, common_checks

SFT_FORMATS = ("conversational", "prompt_completion", "language_modeling")


@dataclass
class SFTExtras(DataExtras):
    """What TRL's SFTConfig/ModelConfig lack (the data options every stage shares). Names never clash
    with TRL's."""

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
    )


def parse(config_path: str | None, argv: list[str] | None = None) -> StageConfig:
    return parse_stage_config(schema(), config_path, argv)


def prepare(cfg: StageConfig, *, resume: bool = False) -> common.Prepared:
    """The trainer and data, built and checked but not trained (for tests and inspection)."""
    return causal_lm.prepare(cfg, formats=SFT_FORMATS, resume=resume)


def run(cfg: StageConfig, *, resume: bool = False) -> causal_lm.Result:
    return causal_lm.train(cfg, formats=SFT_FORMATS, resume=resume)


summary = causal_lm.summary
