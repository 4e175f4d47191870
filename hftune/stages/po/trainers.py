"""TRL's preference-optimisation trainers behind one `algorithm` name, and the only module of this stage
that imports `trl.experimental` (ORPO and CPO/SimPO live there in TRL 1.10-1.16; DPO and KTO are TRL's
maintained trainers: `trl.experimental.kto` is only a deprecated alias of `trl`'s KTOTrainer). Pinned by
the project's TRL range (setup.cfg); `tests/test_po.py` runs each.
"""

from __future__ import annotations

import os
from typing import Any

# hftune pins the TRL versions whose experimental trainers it runs and tests them; TRL's notice that the
# API may change is for code that does not.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def experimental_config(algorithm: str) -> type:
    """ORPO's or CPO's (SimPO's) config class."""
    if algorithm == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig
    from trl.experimental.cpo import CPOConfig

    return CPOConfig


def trainer_class(algorithm: str) -> type:
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


def build(algorithm: str, **kwargs: Any):
    """The trainer of `algorithm`. DPO and KTO given a LoRA `peft_config` and no `ref_model` use the model
    with its adapter switched off as the reference: one copy of the weights in memory, not two."""
    return trainer_class(algorithm)(**kwargs)
