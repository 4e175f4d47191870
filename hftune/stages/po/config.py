"""The preference-optimisation stage's config: hftune's own keys, the defaults hftune changes, the checks run
before anything loads, and the parser, whose TRL section depends on `algorithm`.

Imports neither torch nor TRL at module level (TRL's config classes load inside `schema`), so that
`hftune dpo --help` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hftune.config import (
    StageConfig,
    StageSchema,
    hftune_field,
    load_yaml_mapping,
    parse_overrides,
    parse_stage_config,
)
from hftune.stages import common
from hftune.stages.common import DataExtras, common_checks

ALGORITHMS = ("dpo", "kto", "orpo", "simpo")
PAIR_FORMATS = ("preference", "implicit_preference")
UNPAIRED_FORMAT = "unpaired_preference"


@dataclass
class POExtras(DataExtras):
    """What TRL's DPO / KTO / ORPO / CPO configs lack. Names never clash with TRL's."""

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


def _check(values: dict[str, Any]) -> list[str]:
    problems = common_checks(values)
    if values.get("beta") is not None and values["beta"] <= 0:
        problems.append(f"`beta`: must be positive, got {values['beta']}")
    if values.get("max_drift") is not None and values["max_drift"] <= 0:
        problems.append(f"`max_drift`: must be positive (or null), got {values['max_drift']}")
    return problems


def _trl_config(algorithm: str) -> type:
    """The TRL config class of `algorithm` (imports TRL)."""
    if algorithm == "kto":
        from trl import KTOConfig

        return KTOConfig
    if algorithm in ("orpo", "simpo"):
        from hftune.stages.po import trainers

        return trainers.experimental_config(algorithm)
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
        name="dpo",
        classes={"training": _trl_config(algorithm), "model": ModelConfig, "hftune": POExtras},
        defaults=defaults,
        check=_check,
    )


def parse(config_path: str | None, argv: list[str] | None = None) -> StageConfig:
    # The TRL section depends on the algorithm, so read it first (a bad value is reported by the parse).
    values = load_yaml_mapping(config_path) if config_path else {}
    values.update(parse_overrides(list(argv or []))[0])
    algorithm = values.get("algorithm", "dpo")
    return parse_stage_config(schema(algorithm if algorithm in ALGORITHMS else "dpo"), config_path, argv)
