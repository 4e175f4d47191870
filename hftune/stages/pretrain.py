"""`hftune pretrain`: a base model on plain text, from scratch or by continued pretraining.

    hftune pretrain --config configs/tiny/pretrain.yaml

From scratch (`init_architecture: llama`, ...): a byte-level BPE tokenizer with ChatML tokens is trained on
the recipe's text, a model of that architecture and size is initialised at random, and TRL's SFTTrainer
trains it as a language model on the same text (full fine-tuning, no LoRA, loss on every token).
Continued pretraining: leave `init_architecture` unset and name the model in `model_name_or_path`. The
data is any `language_modeling` recipe (e.g. `tiny_corpus`, a plain-text file, or a Hub corpus). The
output is a full model folder with its tokenizer, used by the SFT stage as its base.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftune import distributed
from hftune.config import StageConfig, StageSchema, hftune_field, parse_stage_config
from hftune.errors import UserError
from hftune.models.tiny import ARCHITECTURES
from hftune.stages import causal_lm, common
from hftune.stages.causal_lm import TRL_CONFIGS  # noqa: F401 (the stage interface, for --help)
from hftune.stages.common import DataExtras, common_checks


@dataclass
class PretrainExtras(DataExtras):
    """From-scratch settings TRL's configs lack; names never clash with TRL's."""

    init_architecture: str | None = hftune_field(
        None,
        f"Build a new model of this architecture ({', '.join(ARCHITECTURES)}) with a tokenizer trained on "
        "the data, instead of continuing `model_name_or_path`.",
        choices=(None, *ARCHITECTURES),
    )
    init_vocab_size: int = hftune_field(1024, "From scratch: tokenizer vocabulary size.")
    init_hidden_size: int = hftune_field(64, "From scratch: hidden size.")
    init_num_layers: int = hftune_field(2, "From scratch: transformer layers.")
    init_num_heads: int = hftune_field(4, "From scratch: attention heads.")


def _check(values: dict[str, Any]) -> list[str]:
    problems = common_checks(values, needs_model=not values.get("init_architecture"))
    if values.get("init_architecture"):
        if values.get("model_name_or_path"):
            problems.append(
                "`model_name_or_path` and `init_architecture`: choose one (continue, or start anew)"
            )
        if values.get("use_peft"):
            problems.append("`use_peft`: a model trained from scratch trains every weight; set it to false")
    for key in ("init_vocab_size", "init_hidden_size", "init_num_layers", "init_num_heads"):
        if values.get(key) is not None and values[key] < 1:
            problems.append(f"`{key}`: must be positive, got {values[key]}")
    return problems


EXTRAS = PretrainExtras
DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/pretrain",
    "use_peft": False,  # pretraining changes every weight
    "lora_target_modules": "all-linear",  # (for continued pretraining with `use_peft: true`)
    "assistant_only_loss": False,  # plain text: every token is trained
    **common.TRAINING_DEFAULTS,
}


def schema() -> StageSchema:
    return StageSchema(
        name="pretrain",
        classes={**causal_lm.trl_classes(), "hftune": PretrainExtras},
        defaults={**DEFAULTS, **common.hardware_defaults()},
        check=_check,
    )


def parse(config_path: str | None, argv: list[str] | None = None) -> StageConfig:
    cfg = parse_stage_config(schema(), config_path, argv)
    from hftune.data import load_recipe

    recipe = load_recipe(cfg.hftune.data_recipe)
    if recipe.format != "language_modeling":
        raise UserError(
            f"{cfg.source}: `data_recipe` {recipe.name} is {recipe.format} data; pretraining reads plain "
            "text (a `language_modeling` recipe such as tiny_corpus)"
        )
    return cfg


def _init_model(cfg: StageConfig, folder: Path) -> str:
    """A new tokenizer (trained on the data's text) and randomly initialised weights, saved to `folder`."""
    from hftune.data import prepare_dataset
    from hftune.models.tiny import build_tiny_model

    extras = cfg.hftune
    rows = prepare_dataset(extras.data_recipe, data_files=extras.data_files, max_rows=extras.max_samples)
    lines = [row["text"] for row in rows.train]
    build_tiny_model(
        folder,
        arch=extras.init_architecture,
        corpus_lines=lines,
        vocab_size=extras.init_vocab_size,
        hidden_size=extras.init_hidden_size,
        num_layers=extras.init_num_layers,
        num_heads=extras.init_num_heads,
        pretrain_steps=0,
        seed=cfg.training.seed,
    )
    return str(folder)


def run(cfg: StageConfig, *, resume: bool = False) -> causal_lm.Result:
    extras = cfg.hftune
    dirs = common.run_dirs(cfg, resume)
    parents = None
    if extras.init_architecture:
        # The initial weights live in the work folder (so --resume finds them) and go with it afterwards:
        # the finished artifact is a full model that needs nothing else.
        # Built once a machine, each in a folder of its own (machines may share a filesystem); the other
        # processes load it. The same seed makes the same weights everywhere.
        init = dirs.work / f"init-node{distributed.node_rank()}"
        with distributed.local_main_first():
            if not (init / "config.json").is_file():
                _init_model(cfg, init)
        cfg.model.model_name_or_path = str(init)
        parents = [{"role": "init", "from_scratch": extras.init_architecture}]
    return causal_lm.train(cfg, formats=("language_modeling",), parents=parents, resume=resume, dirs=dirs)


summary = causal_lm.summary
