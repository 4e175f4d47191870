"""The RL stage's config: hftune's own keys (one spelling for PPO, RLOO and GRPO), the defaults hftune
changes, the checks run before anything loads, and the parser, whose TRL section depends on `algorithm`.

Imports neither torch nor TRL at module level (TRL's config classes load inside `schema`), so that
`hftune ppo --help` answers at once and the pipeline can read the launch rules below cheaply.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from hftune import distributed
from hftune.config import (
    StageConfig,
    StageSchema,
    algorithm_given,
    field_defaults,
    hftune_field,
    parse_stage_config,
)
from hftune.errors import did_you_mean
from hftune.stages import common
from hftune.stages.common import DataExtras, common_checks

ALGORITHMS = ("ppo", "rloo", "grpo")
# TRL fields hftune's own keys stand for (so one key means one thing whichever trainer runs).
# `num_generations` is not among them: RLOO's and GRPO's configs have the key under the same name and
# meaning, and check it against the batch while they are built, so their section is built with hftune's value
# (built without it, it checked TRL's default of 8 and refused a batch of 4 that `num_generations: 4` fits).
OWNED = frozenset(
    {
        "reward_model_path",
        "sft_model_path",
        "response_length",
        "kl_coef",
        "missing_eos_penalty",
        "beta",
        "max_completion_length",
    }
    | common.OWNED_TRAINING_KEYS  # `auto` unless set: decided as the stage starts (common.trainer_args)
)
# GRPO's `loss_type` words in TRL 1.16 (GRPOConfig types it `str` and lists them only in its help; an unknown
# one failed inside the first training step). The key depends on `algorithm` (KTO's and CPO's `loss_type`
# differ), so it is checked here, not in config.RANGE_RULES.
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")


@dataclass
class RLExtras(DataExtras):
    """What the RL trainers' configs lack or name differently. Names never clash with TRL's but for the
    ones in OWNED, which the stage sets TRL's fields from."""

    algorithm: str = hftune_field(
        "ppo",
        "`ppo` (hftune's own PPO, value model from the reward model), or `rloo` / `grpo` "
        "(TRL's maintained RLOOTrainer / GRPOTrainer; no value model, vLLM-capable).",
        choices=ALGORITHMS,
    )
    reward_model_path: str | None = hftune_field(
        None,
        "Reward model folder written by `hftune reward`. Required unless `reward_model_weight` is 0 (PPO "
        "then starts its value model from the SFT model).",
    )
    reward_model_weight: float = hftune_field(
        1.0, "Weight of the reward model's (normalised) score in the reward; 0: a verifier alone."
    )
    verifier: str | None = hftune_field(
        None,
        "A task verifier as a reward, `module:function(question, reply, reference) -> float` (the eval "
        "suites' signature, e.g. hftune.evaluation.verifiers:verify_answer; reference is None here), "
        "added to the reward model's score with `verifier_weight`.",
    )
    verifier_weight: float = hftune_field(1.0, "Weight of the verifier's value in the reward.")
    response_length: int = hftune_field(
        64,
        "Most tokens generated per response (PPO's `response_length`, GRPO/RLOO's `max_completion_length`).",
    )
    kl_coef: float = hftune_field(0.05, "Weight of the KL penalty to the SFT policy (GRPO/RLOO's `beta`).")
    missing_eos_penalty: float | None = hftune_field(
        1.0, "Subtracted from the reward of a response that never emits the end-of-turn token (null: none)."
    )
    normalize_rewards: bool = hftune_field(
        True,
        "Score rewards on the reward stage's held-out scale (zero mean, unit std; from reward_report.json).",
    )
    max_kl: float | None = hftune_field(None, "Alarm: stop when KL to the SFT policy exceeds this.")
    min_mean_length: float | None = hftune_field(
        None, "Alarm: stop when mean response length (tokens) falls below."
    )
    max_mean_length: float | None = hftune_field(
        None, "Alarm: stop when mean response length (tokens) exceeds."
    )
    heldout_every: int = hftune_field(
        0,
        "Every N steps, greedy completions of the held-out prompts are scored (`heldout/reward`, samples to "
        "samples.jsonl); the run stops if the train reward rises while the held-out reward falls. 0: off.",
    )
    num_generations: int = hftune_field(
        8, "rloo/grpo: completions sampled per prompt, compared with each other (PPO samples one a prompt)."
    )
    heldout_prompts: int = hftune_field(16, "How many held-out prompts the held-out check uses.")
    freeze_gc: bool = hftune_field(
        True,
        "Freeze Python's garbage collector over the objects alive when training starts (`gc.freeze`), so "
        "the collections made while training scan only what training made. Changes no number; false: "
        "collect as Python does by default.",
    )
    heldout_tolerance: float = hftune_field(
        0.1, "How far (in reward units) the held-out reward may fall between checks before the alarm fires."
    )


EXTRAS = RLExtras
TRL_CONFIGS = ("hftune's PPOConfig (or TRL's RLOOConfig / GRPOConfig with `algorithm`)", "ModelConfig")
DEFAULTS: dict[str, Any] = {"output_dir": "runs/ppo", **common.ADAPTER_STAGE_DEFAULTS}

# Launches the RL stage refuses, whether started by hand (`check`) or by the pipeline (before it launches).
RL_SHARDED = (
    "the RL stages run under DDP (torchrun, or accelerate's multi-GPU configs), not {}: the policy adapter "
    "is saved from the main process's copy, which a sharded model does not hold whole"
)
# hftune's PPO loop samples, scores and whitens each process's rollout on its own; it has not been run or
# tested on several processes, so it refuses them rather than train something no test has checked.
PPO_DISTRIBUTED = (
    "`algorithm: ppo` runs in one process only (hftune's PPO is not yet tested on several). Use "
    "`algorithm: rloo` or `grpo` on several processes, or run PPO in one"
)
VLLM_MODES = ("colocate", "server")


def _check(values: dict[str, Any]) -> list[str]:
    problems = common_checks(values)
    rm_weight = values.get("reward_model_weight", 1.0)
    if rm_weight and not values.get("reward_model_path"):
        problems.append(
            "`reward_model_path`: required (the output folder of `hftune reward`), unless the reward is a "
            "verifier alone (`verifier: module:function` with `reward_model_weight: 0`)"
        )
    if not rm_weight and not values.get("verifier"):
        problems.append("`reward_model_weight`: 0 leaves no reward; set `verifier: module:function`")
    if values.get("verifier") and ":" not in str(values["verifier"]):
        problems.append(f"`verifier`: `module:function`, got {values['verifier']!r}")
    if values.get("load_in_4bit") or values.get("load_in_8bit"):
        problems.append("`load_in_4bit`/`load_in_8bit`: not supported for the RL stage yet")
    if values.get("algorithm", "ppo") == "ppo" and distributed.is_distributed():
        problems.append(PPO_DISTRIBUTED)
    if sharding := distributed.sharding():
        problems.append(RL_SHARDED.format(sharding))
    if values.get("sync_ref_model"):
        problems.extend(_sync_ref_model_problems(values))
    if values.get("algorithm") == "grpo" and values.get("loss_type", "dapo") not in GRPO_LOSS_TYPES:
        loss = str(values["loss_type"])
        problems.append(
            f"`loss_type`: {loss!r} is not a loss of TRL's GRPOTrainer; one of "
            f"{', '.join(GRPO_LOSS_TYPES)}{did_you_mean(loss, GRPO_LOSS_TYPES)}"
        )
    if values.get("algorithm") in ("rloo", "grpo"):
        problems.extend(_vllm_problems(values))
        batch = (values.get("per_device_train_batch_size") or 1) * (
            values.get("gradient_accumulation_steps") or 1
        )
        if (values.get("num_generations") or 0) < 2:
            # RLOO's baseline is the other completions of the prompt, GRPO's the group's mean: with one
            # completion there is nothing to compare it with, and every advantage is 0.
            problems.append(
                f"`num_generations`: {values['algorithm']} compares completions of a prompt with each other, "
                f"so it needs at least 2; got {values.get('num_generations')}"
            )
        elif batch % values["num_generations"]:
            problems.append(
                f"`num_generations`: {values['num_generations']} completions a prompt must divide the batch "
                f"(per_device_train_batch_size x gradient_accumulation_steps = {batch})"
            )
    return problems


def _sync_ref_model_problems(values: dict[str, Any]) -> list[str]:
    """Why `sync_ref_model: true` (TR-DPO's reference updates, RLOO / GRPO) cannot run, found before any
    weights load (TRL refused both only once the model had loaded). With LoRA the reference is the policy with
    its adapter switched off: there is no separate reference model to update. Full fine-tuning
    (`use_peft: false`) keeps a copy, which TRL updates."""
    if values.get("use_peft"):
        return [
            "`sync_ref_model`: updates a separate reference model, but with LoRA (`use_peft: true`) the "
            "reference is the policy with its adapter switched off; set `use_peft: false` (a full copy as "
            "the reference) or remove `sync_ref_model`"
        ]
    if not values.get("kl_coef", field_defaults(RLExtras)["kl_coef"]):
        return ["`sync_ref_model`: `kl_coef: 0` uses no reference model, so there is nothing to update"]
    return []


def _vllm_problems(values: dict[str, Any]) -> list[str]:
    """TRL's vLLM generation options (RLOO / GRPO), checked before any weights load: TRL would only fail
    once the trainer starts, or quietly ignore options that `use_vllm: false` switches off."""
    # Set to something other than TRL's default: a saved config (config.hftune.yaml) lists every option.
    defaults = field_defaults(_trl_config(values.get("algorithm", "ppo")))
    options = sorted(k for k in values if k.startswith("vllm_") and values[k] != defaults.get(k))
    if not values.get("use_vllm"):
        return [f"`{k}`: a vLLM option, but `use_vllm` is false (set `use_vllm: true`)" for k in options]
    problems = []
    mode = values.get("vllm_mode", "colocate")
    utilization = values.get("vllm_gpu_memory_utilization")
    if utilization is not None and not 0 < utilization <= 1:
        problems.append(f"`vllm_gpu_memory_utilization`: a fraction in (0, 1], got {utilization}")
    if mode not in VLLM_MODES:
        problems.append(
            f"`vllm_mode`: one of {', '.join(VLLM_MODES)}, got {mode!r}{did_you_mean(str(mode), VLLM_MODES)}"
        )
    if mode == "colocate" and any(k.startswith("vllm_server_") for k in options):
        problems.append("`vllm_server_*`: options of `vllm_mode: server`, but `vllm_mode` is colocate")
    if importlib.util.find_spec("vllm") is None:
        problems.append(
            "`use_vllm`: vLLM is not installed; `pip install 'hftune[vllm]'` installs a version TRL supports"
        )
    elif not cuda_for_vllm():
        problems.append("`use_vllm`: vLLM generates on CUDA GPUs and none is visible here")
    return problems


def cuda_for_vllm() -> bool:
    """Whether vLLM has a CUDA GPU here (a function of its own, so tests can stand in for either answer)."""
    import torch

    return torch.cuda.is_available()


def _unknown_key_hint(key: str) -> str | None:
    """PPO's error for a vLLM key (where vLLM generation is), or a TRL PPOConfig key hftune's PPO does not
    take (why)."""
    from hftune.stages.rl.ppo_config import UNSUPPORTED_KEYS

    if key in UNSUPPORTED_KEYS:
        return f"a key of TRL's old PPOConfig that hftune's PPO does not take: {UNSUPPORTED_KEYS[key]}"
    if key == "use_vllm" or key.startswith("vllm_"):
        return (
            "PPO generates with the model it trains, without vLLM; vLLM generation is for "
            "`algorithm: rloo` or `grpo`"
        )
    return None


def _trl_config(algorithm: str) -> type:
    """The TRL config class of `algorithm` (imports TRL)."""
    if algorithm == "rloo":
        from trl import RLOOConfig

        return RLOOConfig
    if algorithm == "grpo":
        from trl import GRPOConfig

        return GRPOConfig
    from hftune.stages.rl import ppo_config

    return ppo_config.config_class()


def schema(algorithm: str = "ppo") -> StageSchema:
    from trl import ModelConfig

    defaults = {**DEFAULTS, **common.hardware_defaults()}
    if algorithm in ("rloo", "grpo"):
        defaults.update(log_completions=False, disable_dropout=True)
        # TRL's section and hftune's are built from one value even when the config leaves it unset.
        defaults["num_generations"] = field_defaults(RLExtras)["num_generations"]
    return StageSchema(
        name=algorithm,
        classes={"training": _trl_config(algorithm), "model": ModelConfig, "hftune": RLExtras},
        defaults=defaults,
        check=_check,
        owned=OWNED,
        unknown_key_hint=_unknown_key_hint if algorithm == "ppo" else None,
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
