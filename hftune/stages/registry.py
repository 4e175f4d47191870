"""The one stage table: every step of the recipe that `hftune pipeline` can run, the module that implements
it, the CLI command that runs it alone, and the keys the pipeline fills from earlier stages' outputs.

Importing this module imports no stage: the CLI builds `hftune --help` from it in milliseconds, and a stage
module (with torch, transformers and TRL behind it) loads only when that stage runs or shows its help.

Every stage module offers the same interface (`Stage` below): its hftune-only options, the defaults hftune
changes, a strict parser and `run` / `summary`. Stages never import each other; what they share lives in
`hftune.stages.common`, `hftune.data` and `hftune.models`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol


class Options(Protocol):
    """What a stage's options module offers (module-level names), for `--help`. It imports neither torch
    nor TRL, so `hftune X --help` answers at once; often it is the stage module itself."""

    EXTRAS: type  # hftune's own config keys (a dataclass of `hftune_field`s)
    DEFAULTS: dict[str, Any]  # hftune's defaults where they differ from TRL's
    TRL_CONFIGS: tuple[str, ...]  # the TRL config classes whose fields are also config keys


class Stage(Protocol):
    """What a stage module offers (module-level functions)."""

    def schema(self) -> Any: ...  # config.StageSchema (imports TRL)
    def parse(  # StageConfig; `values`: the file's values already read (no file), named by `source`
        self, config_path: str | None, argv: list[str] | None = None, *, values=None, source=None
    ) -> Any: ...
    def run(self, cfg: Any, *, resume: bool = False) -> Any: ...
    def summary(self, result: Any) -> str: ...


# The module of a command that is not `hftune.stages.<command>`, and the light module with a command's
# `--help` information (`Options`) where the stage module itself imports torch at module level.
_MODULES = {"eval": "hftune.evaluation.harness"}
_OPTIONS = {"ppo": "hftune.stages.rl.config", "eval": "hftune.evaluation.suite"}
# The commands that train several algorithms, one stage each, and the role later stages take them in.
_FAMILIES = {"ppo": "rl", "dpo": "po"}


@dataclass(frozen=True)
class StageSpec:
    """One stage. Its `name` is its one identity: `stage: NAME` in a pipeline, `stage` in its config and in
    its artifact's manifest, and (for `hftune ppo` / `hftune dpo`) the algorithm that trains it."""

    name: str
    command: str  # the `hftune COMMAND` that runs it (`hftune ppo --algorithm rloo` runs rloo)
    short: str = ""  # one line for `hftune --help`
    description: str = ""  # the head of `hftune COMMAND --help`
    handoff: dict[str, str] = field(default_factory=dict)  # config key -> role of the stage that fills it
    optional_handoff: frozenset[str] = frozenset()  # keys taken only when the pipeline has that stage
    trains: bool = True  # a training stage (can run in several processes)
    # The TRL formats it trains on, in order of preference: data in a TRL format (`dataset_name`) is read as
    # the first layout that fits one of them (`data.detect`), so one file can feed several stages.
    formats: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        """The module implementing `Stage` (one a command: `hftune/stages/<command>.py`)."""
        return _MODULES.get(self.command, f"hftune.stages.{self.command}")

    @property
    def role(self) -> str:
        """What later stages take it as: its command, or its family (`rl`: ppo, rloo, grpo; `po`: dpo, kto,
        orpo, simpo), any of which fills the same handoff."""
        return _FAMILIES.get(self.command, self.command)

    @property
    def algorithm(self) -> str | None:
        """The `algorithm` the pipeline sets for it (the stages of a command that trains several)."""
        return self.name if self.command in _FAMILIES else None


_RL_HANDOFF = {"model_name_or_path": "sft", "reward_model_path": "reward"}
_PAIRS = ("preference", "implicit_preference")
_RL_DESCRIPTION = (
    "RLHF against a frozen reward model (and/or a task `verifier`) with hftune's own PPO "
    "(`algorithm: ppo`) or TRL's RLOOTrainer / GRPOTrainer (`algorithm: rloo` / `grpo`). Config keys are "
    "the chosen trainer's config "
    "and ModelConfig fields plus the hftune options below; `--key value` flags override the file. "
    "Per-step metrics go to metrics.jsonl; alarms (max_kl, min/max_mean_length, held-out reward) stop "
    "a run and keep its last good policy."
)

# Offline preference optimisation from the SFT model (ORPO and SimPO need no reference, and may start from
# the pretrained base when the pipeline has no SFT stage: the handoff is then optional).
_PO_HANDOFF = {"model_name_or_path": "sft"}
_PO_DESCRIPTION = (
    "Offline preference optimisation with TRL's DPOTrainer (`algorithm: dpo`; `loss_type` sigmoid, ipo, "
    "hinge, robust, ...), KTOTrainer (`kto`, on unpaired good/bad rows or pairs split in halves), or the "
    "reference-free ORPO and SimPO (`orpo`, `simpo`; TRL's experimental ORPOTrainer / CPOTrainer). Config "
    "keys are the chosen trainer's config and ModelConfig fields plus the hftune options below; `--key "
    "value` flags override the file. LoRA by default: the reference is the model with the adapter off."
)

STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec(
            "pretrain",
            "pretrain",
            short="pretrain a base model on plain text, from scratch or continued",
            description="Pretraining on plain text with TRL's SFTTrainer: from scratch "
            "(`init_architecture`: a tokenizer trained on the data and random weights) or continued from "
            "`model_name_or_path`. Config keys are TRL's SFTConfig and ModelConfig fields plus the hftune "
            "options below.",
            formats=("language_modeling",),
        ),
        StageSpec(
            "sft",
            "sft",
            short="supervised fine-tuning (LoRA/QLoRA) with TRL's SFTTrainer",
            description="Supervised fine-tuning with TRL's SFTTrainer. Config keys are TRL's SFTConfig and "
            "ModelConfig fields plus the hftune options below; `--key value` flags override the file.",
            handoff={"model_name_or_path": "pretrain"},
            optional_handoff=frozenset({"model_name_or_path"}),
            formats=("conversational", "prompt_completion", "language_modeling"),
        ),
        StageSpec(
            "reward",
            "reward",
            short="reward modelling on preference pairs with TRL's RewardTrainer",
            description="Reward modelling with TRL's RewardTrainer on top of an SFT output. Config keys are "
            "TRL's RewardConfig and ModelConfig fields plus the hftune options below; `--key value` flags "
            "override the file. Prints and saves a held-out report (pairwise accuracy with a 95% CI, "
            "margins, score statistics, score/length correlation).",
            handoff={"model_name_or_path": "sft"},
            formats=_PAIRS,
        ),
        StageSpec(
            "ppo",
            "ppo",
            short="RLHF: PPO (or RLOO / GRPO) against the reward model, KL-anchored to the SFT policy",
            description=_RL_DESCRIPTION,
            handoff=_RL_HANDOFF,
            formats=("prompt_only",),
        ),
        *(StageSpec(name, "ppo", handoff=_RL_HANDOFF, formats=("prompt_only",)) for name in ("rloo", "grpo")),
        StageSpec(
            "dpo",
            "dpo",
            short="offline preference optimisation: DPO (or IPO, KTO, ORPO, SimPO) on preference pairs",
            description=_PO_DESCRIPTION,
            handoff=_PO_HANDOFF,
            optional_handoff=frozenset({"model_name_or_path"}),
            formats=_PAIRS,
        ),
        *(
            StageSpec(
                name,
                "dpo",
                handoff=_PO_HANDOFF,
                optional_handoff=frozenset({"model_name_or_path"}),
                # KTO also trains on unpaired rows, and splits pairs into a good and a bad half.
                formats=(*_PAIRS, "unpaired_preference") if name == "kto" else _PAIRS,
            )
            for name in ("kto", "orpo", "simpo")
        ),
        StageSpec(
            "eval",
            "eval",
            short="compare base, SFT, RLHF and best-of-N side by side, with confidence intervals",
            description="Evaluate model variants on the same held-out prompts with the same decoding: "
            "reward, win rates, KL to SFT, length, loops, diversity, reference metrics and task verifiers, "
            "each with a paired bootstrap CI over prompts. Config: an eval suite (a built-in name such as "
            "`tiny`, or a YAML file); `--key value` flags override it. Writes results.json, samples.jsonl, "
            "report.md and report.html.",
            handoff={
                "base_model": "pretrain",
                "sft_model": "sft",
                "rlhf_models": "rl",
                "reward_model": "reward",
            },
            optional_handoff=frozenset({"base_model"}),
            trains=False,
        ),
    )
}

# `hftune COMMAND`: one command a module (rloo and grpo run as `hftune ppo --algorithm ...`).
COMMANDS: dict[str, StageSpec] = {spec.command: spec for spec in STAGES.values() if spec.name == spec.command}
# The stages that train on data, which `hftune data preview --stage` can show.
DATA_STAGES = tuple(name for name, spec in STAGES.items() if spec.formats)


def load(name: str) -> Stage:
    """The module of stage `name`; imported only now."""
    return importlib.import_module(STAGES[name].module)  # type: ignore[return-value]


def options(name: str) -> Options:
    """The light module with stage `name`'s `--help` information."""
    spec = STAGES[name]
    return importlib.import_module(_OPTIONS.get(spec.command, spec.module))  # type: ignore[return-value]
