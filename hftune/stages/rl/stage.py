"""The RL stage (`hftune ppo`): optimise the SFT policy against a frozen reward model while a KL penalty
keeps it near the SFT model. PPO through TRL's `trl.experimental.ppo` (wrapped in `hftune/ppo.py`, the
only module that imports it), or `algorithm: rloo` / `algorithm: grpo` through TRL's maintained trainers,
with the same config keys.

    hftune ppo --config configs/tiny/ppo.yaml [--algorithm rloo] [--resume]

Reads top to bottom: parse the config (its TRL section depends on `algorithm`), load the SFT tokenizer and
check the reward model reads text the same way, render the prompts with the chat template, load the
policy (SFT weights + a fresh LoRA adapter: switching the adapter off gives the reference policy, so no
second copy is held), the value model (from the reward model, PPO only) and the frozen reward model,
train with guardrails, then write the policy adapter, tokenizer, config, metrics and manifest atomically.
Rewards come from `hftune.scoring`, the path the reward stage and the eval harness use.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hftune import artifacts, distributed
from hftune.config import (
    StageConfig,
    StageSchema,
    hftune_field,
    load_yaml_mapping,
    parse_overrides,
    parse_stage_config,
)
from hftune.errors import UserError, did_you_mean
from hftune.models import generation, loading, scoring
from hftune.models.tokenizer import check_same_tokenizer, load_tokenizer
from hftune.stages import common
from hftune.stages.common import DataExtras, common_checks
from hftune.stages.rl.guardrails import AlarmStop, Bounds, Guardrails, RolloutStats

logger = logging.getLogger(__name__)

ALGORITHMS = ("ppo", "rloo", "grpo")
# TRL fields hftune's own keys stand for (so one key means one thing whichever trainer runs).
OWNED = frozenset(
    {
        "reward_model_path",
        "sft_model_path",
        "response_length",
        "kl_coef",
        "missing_eos_penalty",
        "beta",
        "max_completion_length",
        "num_generations",
    }
)


@dataclass
class RLExtras(DataExtras):
    """What the RL trainers' configs lack or name differently. Names never clash with TRL's."""

    algorithm: str = hftune_field(
        "ppo",
        "`ppo` (TRL's experimental PPOTrainer, value model from the reward model), or `rloo` / `grpo` "
        "(TRL's maintained RLOOTrainer / GRPOTrainer; no value model, vLLM-capable).",
        choices=ALGORITHMS,
    )
    reward_model_path: str | None = hftune_field(
        None, "Reward model folder written by `hftune reward`. Required."
    )
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
    heldout_tolerance: float = hftune_field(
        0.1, "How far (in reward units) the held-out reward may fall between checks before the alarm fires."
    )


def _check(values: dict[str, Any]) -> list[str]:
    problems = common_checks(values)
    if not values.get("reward_model_path"):
        problems.append("`reward_model_path`: required (the output folder of `hftune reward`)")
    if values.get("response_length") is not None and values["response_length"] <= 0:
        problems.append(f"`response_length`: must be positive, got {values['response_length']}")
    if (values.get("kl_coef") or 0) < 0:
        problems.append(f"`kl_coef`: must be >= 0, got {values['kl_coef']}")
    if values.get("max_kl") is not None and values["max_kl"] <= 0:
        problems.append(f"`max_kl`: must be positive, got {values['max_kl']}")
    if values.get("load_in_4bit") or values.get("load_in_8bit"):
        problems.append("`load_in_4bit`/`load_in_8bit`: not supported for the RL stage yet")
    if values.get("algorithm", "ppo") == "ppo" and values.get("use_peft") and distributed.is_distributed():
        problems.append(PPO_DISTRIBUTED)
    if sharding := distributed.sharding():
        problems.append(RL_SHARDED.format(sharding))
    if values.get("algorithm") in ("rloo", "grpo"):
        problems.extend(_vllm_problems(values))
        batch = (values.get("per_device_train_batch_size") or 1) * (
            values.get("gradient_accumulation_steps") or 1
        )
        if batch % (values.get("num_generations") or 1):
            problems.append(
                f"`num_generations`: {values['num_generations']} completions a prompt must divide the batch "
                f"(per_device_train_batch_size x gradient_accumulation_steps = {batch})"
            )
    return problems


VLLM_MODES = ("colocate", "server")
RL_SHARDED = (
    "the RL stages run under DDP (torchrun, or accelerate's multi-GPU configs), not {}: the policy adapter "
    "is saved from the main process's copy, which a sharded model does not hold whole"
)
# Measured here with 2 CPU processes: TRL's experimental PPOTrainer reaches `self.model.policy` through the
# DDP wrapper when it switches the LoRA adapter off for the reference, and fails.
PPO_DISTRIBUTED = (
    "`algorithm: ppo` with a LoRA policy runs in one process only: TRL's experimental PPOTrainer fails under "
    "DDP when it switches the adapter off for the reference (huggingface/trl#2375). Use `algorithm: rloo` "
    "or `grpo` on several processes, or run PPO in one"
)


def _vllm_problems(values: dict[str, Any]) -> list[str]:
    """TRL's vLLM generation options (RLOO / GRPO), checked before any weights load: TRL would only fail
    once the trainer starts, or quietly ignore options that `use_vllm: false` switches off."""
    options = sorted(k for k in values if k.startswith("vllm_"))
    if not values.get("use_vllm"):
        return [f"`{k}`: a vLLM option, but `use_vllm` is false (set `use_vllm: true`)" for k in options]
    problems = []
    mode = values.get("vllm_mode", "colocate")
    if mode not in VLLM_MODES:
        problems.append(
            f"`vllm_mode`: one of {', '.join(VLLM_MODES)}, got {mode!r}{did_you_mean(str(mode), VLLM_MODES)}"
        )
    if mode == "colocate" and any(k.startswith("vllm_server_") for k in options):
        problems.append("`vllm_server_*`: options of `vllm_mode: server`, but `vllm_mode` is colocate")
    utilization = values.get("vllm_gpu_memory_utilization")
    if utilization is not None and not 0 < utilization <= 1:
        problems.append(f"`vllm_gpu_memory_utilization`: a fraction in (0, 1], got {utilization}")
    if importlib.util.find_spec("vllm") is None:
        problems.append(
            "`use_vllm`: vLLM is not installed; `pip install 'hftune[vllm]'` installs a version TRL supports"
        )
    elif not _cuda_for_vllm():
        problems.append("`use_vllm`: vLLM generates on CUDA GPUs and none is visible here")
    return problems


def _cuda_for_vllm() -> bool:
    return torch.cuda.is_available()


def _unknown_key_hint(key: str) -> str | None:
    if key == "use_vllm" or key.startswith("vllm_"):
        return (
            "PPO generates with the model it trains, without vLLM; vLLM generation is for "
            "`algorithm: rloo` or `grpo`"
        )
    return None


def _trl_config(algorithm: str):
    if algorithm == "rloo":
        from trl import RLOOConfig

        return RLOOConfig
    if algorithm == "grpo":
        from trl import GRPOConfig

        return GRPOConfig
    from hftune.stages.rl import ppo

    return ppo.config_class()


EXTRAS = RLExtras
TRL_CONFIGS = ("PPOConfig (or RLOOConfig / GRPOConfig with `algorithm`)", "ModelConfig")
DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/ppo",
    "use_peft": True,
    "lora_target_modules": "all-linear",
    "eval_fraction": 0.1,
    **common.TRAINING_DEFAULTS,
}


def schema(algorithm: str = "ppo") -> StageSchema:
    from trl import ModelConfig

    defaults = {**DEFAULTS, **common.hardware_defaults()}
    if algorithm in ("rloo", "grpo"):
        defaults.update(log_completions=False, disable_dropout=True)
    return StageSchema(
        name="ppo",
        classes={"training": _trl_config(algorithm), "model": ModelConfig, "hftune": RLExtras},
        defaults=defaults,
        check=_check,
        owned=OWNED,
        unknown_key_hint=_unknown_key_hint if algorithm == "ppo" else None,
    )


def parse(config_path: str | None, argv: list[str] | None = None) -> StageConfig:
    # The TRL section depends on the algorithm, so read it first (a bad value is reported by the parse).
    values = load_yaml_mapping(config_path) if config_path else {}
    values.update(parse_overrides(list(argv or []))[0])
    algorithm = values.get("algorithm", "ppo")
    return parse_stage_config(schema(algorithm if algorithm in ALGORITHMS else "ppo"), config_path, argv)


@dataclass
class RLResult:
    output_dir: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    trainer: Any
    scorer: scoring.Scorer
    alarm: str | None


def prompt_rows(dataset) -> list[list[dict[str, str]]]:
    """The prompt of each row: a prompt-only row's prompt, or a conversation up to its last reply."""
    out = []
    for row in dataset:
        if row.get("prompt") is not None:
            out.append(list(row["prompt"]))
        elif row.get("messages") is not None:
            out.append(list(row["messages"][:-1]))
        else:
            raise UserError("the RL stage needs prompts: use a prompt-only or conversational recipe")
    return out


class RewardFn:
    """Scores completions through `hftune.scoring`, normalised, with the missing-EOS penalty; the one
    reward every algorithm gets. Also records response lengths for the guardrails."""

    __name__ = "reward_model"  # TRL names the reward column after it

    def __init__(
        self,
        scorer: scoring.Scorer,
        *,
        normalize: bool,
        missing_eos_penalty: float | None,
        stats: RolloutStats,
    ):
        self.scorer = scorer
        self.normalize = normalize
        self.penalty = missing_eos_penalty
        self.stats = stats

    def rewards(
        self, prompts, responses: list[str], ended: list[bool], lengths: list[int], *, record: bool = True
    ) -> torch.Tensor:
        scores = self.scorer.score(prompts, responses)
        if self.normalize:
            scores = self.scorer.normalise(scores)
        if self.penalty is not None:
            scores = scores - self.penalty * (~torch.tensor(ended, dtype=torch.bool)).float()
        if record:  # rollouts feed the length guardrails; held-out checks do not
            self.stats.lengths += lengths
            self.stats.ended += ended
        return scores

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        # RLOO/GRPO: conversational completions are [{"role": "assistant", "content": ...}].
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        eos = self.scorer.tokenizer.eos_token_id
        ended = [eos in ids for ids in completion_ids]
        lengths = [len(ids) for ids in completion_ids]
        return self.rewards(prompts, texts, ended, lengths).tolist()


def heldout_evaluator(prompts, tokenizer, reward_fn: RewardFn, max_new_tokens: int):
    """Greedy completions of fixed held-out prompts, scored like training rewards but not counted as
    rollouts. Greedy, not sampled: two checks then differ only by the policy, not by sampling noise (with
    16 prompts, sampled rewards moved by more than the alarm's tolerance between two nearby policies)."""
    encoded = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        for p in prompts
    ]

    @torch.no_grad()
    def evaluate(policy) -> tuple[float, list[dict[str, Any]]]:
        texts, ended, lengths = generate(policy, tokenizer, encoded, max_new_tokens)
        scores = reward_fn.rewards(prompts, texts, ended, lengths, record=False)
        samples = [
            {"prompt": p[-1]["content"], "response": t, "ended": e, "reward": float(s)}
            for p, t, e, s in zip(prompts, texts, ended, scores, strict=True)
        ]
        return float(scores.mean()), samples

    return evaluate


def generate(
    policy,
    tokenizer,
    encoded: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
) -> tuple[list[str], list[bool], list[int]]:
    """Batched generation (`hftune.generation`): reply texts, whether each ended, and reply lengths."""
    replies = generation.generate(
        policy, tokenizer, encoded, max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size
    )
    return [r.text for r in replies], [r.ended for r in replies], [len(r.ids) for r in replies]


@dataclass
class Prepared:
    trainer: Any
    guardrails: Guardrails
    scorer: scoring.Scorer
    reward_fn: RewardFn
    data: Any
    recipe: Any
    tokenizer: Any
    dirs: common.RunDirs
    resume_from: str | None


def prepare(cfg: StageConfig, *, resume: bool = False) -> Prepared:
    model_args, extras = cfg.model, cfg.hftune
    dirs = common.run_dirs(cfg)
    policy_path = model_args.model_name_or_path
    if loading.resolve_source(policy_path).is_reward_model:
        raise UserError(f"{policy_path} is a reward model; `model_name_or_path` is the SFT policy")

    # Tokenizers first: a mismatch fails before any weights load.
    tokenizer = load_tokenizer(policy_path, revision=model_args.model_revision)
    reward_tok = load_tokenizer(extras.reward_model_path)
    check_same_tokenizer(
        tokenizer,
        reward_tok,
        f"the policy ({policy_path})",
        f"the reward model ({extras.reward_model_path})",
        fix="train the reward model on top of this SFT model",
    )
    if extras.chat_template:
        raise UserError(
            "`chat_template`: the RL stage renders prompts with the SFT model's template; drop it"
        )
    scoring.check_pad_token(tokenizer, policy_path)
    recipe, data = common.load_data(cfg, tokenizer, dirs)
    prompts = prompt_rows(data.train)
    heldout = prompt_rows(data.eval)[: extras.heldout_prompts] if data.eval is not None else []

    scorer = scoring.load_scorer(extras.reward_model_path, model_args)
    if extras.normalize_rewards and not scorer.stats:
        raise UserError(
            f"{extras.reward_model_path} has no score statistics (reward_report.json): retrain it "
            "with `eval_fraction` > 0, or set `normalize_rewards: false`"
        )
    stats = RolloutStats()
    reward_fn = RewardFn(
        scorer,
        normalize=extras.normalize_rewards,
        missing_eos_penalty=extras.missing_eos_penalty,
        stats=stats,
    )

    resume_from = common.checkpoint_to_resume(dirs.work, resume)
    with common.trl_settings_are_user_errors(cfg.source):
        if extras.algorithm == "ppo":
            from hftune.stages.rl import ppo

            trainer = ppo.build_trainer(cfg, tokenizer, prompts, heldout, reward_fn, resume_from)
        else:
            trainer = _build_group_trainer(cfg, tokenizer, prompts, heldout, reward_fn)

    evaluate = None
    if heldout:
        evaluate = heldout_evaluator(heldout, tokenizer, reward_fn, extras.response_length)
    guardrails = Guardrails(
        dirs.work,
        Bounds(
            max_kl=extras.max_kl,
            min_mean_length=extras.min_mean_length,
            max_mean_length=extras.max_mean_length,
            heldout_tolerance=extras.heldout_tolerance,
        ),
        policy_fn=lambda: _policy(trainer),
        heldout=evaluate,
        heldout_every=extras.heldout_every,
        rollout_stats=stats,
        step_offset=getattr(trainer, "hftune_steps_done", 0),
        resumed_at=common.checkpoint_step(resume_from),
    )
    trainer.add_callback(guardrails)
    return Prepared(trainer, guardrails, scorer, reward_fn, data, recipe, tokenizer, dirs, resume_from)


def _policy(trainer):
    model = trainer.model
    return model.policy if hasattr(model, "policy") else model


def _build_group_trainer(cfg: StageConfig, tokenizer, prompts, heldout, reward_fn: RewardFn):
    """RLOO / GRPO on TRL's maintained trainers, with the same reward and the same hftune keys."""
    from datasets import Dataset
    from trl import GRPOTrainer, RLOOTrainer

    args, model_args, extras = cfg.training, cfg.model, cfg.hftune
    args.max_completion_length = extras.response_length
    args.beta = extras.kl_coef
    args.num_generations = extras.num_generations
    policy = loading.load_model(
        model_args.model_name_or_path,
        model_args,
        for_training=True,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    cls = RLOOTrainer if extras.algorithm == "rloo" else GRPOTrainer
    trainer = cls(
        model=policy,
        reward_funcs=reward_fn,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        eval_dataset=Dataset.from_dict({"prompt": heldout}) if heldout else None,
        processing_class=tokenizer,
        peft_config=loading.lora_config(model_args),
    )
    # TRL moves the models it is given; a reward *function* keeps its model where it was loaded (the CPU).
    reward_fn.scorer.model.to(trainer.accelerator.device)
    return trainer


def run(cfg: StageConfig, *, resume: bool = False) -> RLResult:
    p = prepare(cfg, resume=resume)
    trainer, guardrails = p.trainer, p.guardrails
    alarm = None
    try:
        trainer.train(**({"resume_from_checkpoint": p.resume_from} if cfg.hftune.algorithm != "ppo" else {}))
    except AlarmStop as stop:
        alarm = str(stop)
        guardrails.restore_last_good()
    metrics = _summarise(p.dirs.work / "metrics.jsonl")
    metrics.update(common.parameter_counts(_policy(trainer)))
    if alarm:
        metrics["alarm"] = alarm

    def write_extra(out: Path) -> None:
        for name in ("metrics.jsonl", "samples.jsonl"):
            if (p.dirs.work / name).is_file():
                shutil.copy(p.dirs.work / name, out / name)
        common.point_adapter_at_sft(out, cfg.model.model_name_or_path)
        common.save_generation_config(_policy(trainer), p.tokenizer, out)

    # Saved with the training default (right); generation code pads left itself.
    side, p.tokenizer.padding_side = p.tokenizer.padding_side, "right"
    try:
        manifest = common.save_artifact(
            p.dirs,
            cfg,
            stage="ppo",
            trainer=trainer,
            tokenizer=p.tokenizer,
            metrics=metrics,
            # The policy adapter only (PPO's value model stays behind).
            save_model=lambda out: _policy(trainer).save_pretrained(str(out)),
            parents=[
                artifacts.parent_ref(cfg.model.model_name_or_path, "sft_model"),
                artifacts.parent_ref(cfg.hftune.reward_model_path, "reward_model"),
            ],
            data=common.data_manifest(p.recipe, p.data, cfg.hftune.data_files, len(p.data.train)),
            write_extra=write_extra,
            manifest_metrics={**metrics, "algorithm": cfg.hftune.algorithm},
        )
    finally:
        p.tokenizer.padding_side = side
    return RLResult(p.dirs.final, metrics, manifest, trainer, p.scorer, alarm)


def _summarise(metrics_file: Path) -> dict[str, Any]:
    """First and last values of the main per-step metrics."""
    if not metrics_file.is_file():
        return {}
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    out: dict[str, Any] = {"steps": len(rows)}
    for key in ("objective/scores", "reward", "objective/kl", "kl", "response/mean_length", "heldout/reward"):
        values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if values:
            out[f"{key} first"] = values[0]
            out[f"{key} last"] = values[-1]
    return out


def summary(result: RLResult) -> str:
    m = result.metrics
    lines = [
        f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}"
        for k, v in m.items()
        if k.endswith((" first", " last"))
    ]
    if result.alarm:
        lines.append(f"ALARM: {result.alarm} (the last good policy was saved)")
    lines.append(f"saved: {result.output_dir}")
    return "\n".join(lines)
