"""`hftune ppo`: RLHF. Optimise the SFT policy against a frozen reward model (and/or a task verifier) while a
KL penalty keeps it near the SFT model, with hftune's own PPO (`algorithm: ppo`; TRL removed its PPOTrainer
in 1.13) or TRL's maintained RLOOTrainer / GRPOTrainer (`algorithm: rloo` / `grpo`). All three read the same
config keys (`rl/config.py`) and get the same reward (`rl/rewards.py`).

    hftune ppo --config configs/tiny/ppo.yaml [--algorithm rloo] [--resume]

Reads top to bottom: load the SFT tokenizer and check the reward model reads text the same way, render the
prompts with the chat template, load the frozen reward model, build the algorithm's trainer (`_ppo_trainer`:
the policy is the SFT model with a fresh LoRA adapter, the adapter switched off being the reference, and a
value model from the reward model; `_group_trainer`: TRL's trainer on the same policy), train with
guardrails (`rl/guardrails.py`) and one console line a step (`rl/progress.py`), then write the policy
adapter, tokenizer, config, metrics and manifest atomically. The machinery lives in `stages/rl/`: hftune's
PPO loop (`ppo_trainer.py`) on PPO's arithmetic (`ppo_objective.py`), its config class (`ppo_config.py`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftune import artifacts
from hftune.config import StageConfig
from hftune.errors import UserError
from hftune.models import loading, scoring
from hftune.models.tokenizer import check_same_tokenizer, load_tokenizer
from hftune.stages import common
from hftune.stages.finite import StopOnNonFinite
from hftune.stages.rl.config import parse, schema  # noqa: F401 (the Stage interface the registry loads)
from hftune.stages.rl.guardrails import (
    KL_KEYS,
    LENGTH_KEYS,
    REWARD_KEYS,
    AlarmStop,
    Bounds,
    Guardrails,
    RolloutStats,
)
from hftune.stages.rl.progress import RLProgress, replace_progress_callback
from hftune.stages.rl.rewards import RewardFn, Verifier, encode_prompts, heldout_evaluator, prompt_rows
from hftune.stages.rl.seeding import seed_run

logger = logging.getLogger(__name__)


@dataclass
class RLResult:
    output_dir: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    trainer: Any
    scorer: scoring.Scorer | None  # None when the reward is a verifier alone
    alarm: str | None


@dataclass
class Prepared:
    trainer: Any
    guardrails: Guardrails
    scorer: scoring.Scorer | None
    reward_fn: RewardFn
    data: Any
    recipe: Any
    tokenizer: Any
    dirs: common.RunDirs
    resume_from: str | None
    progress: RLProgress


def prepare(cfg: StageConfig, *, resume: bool = False) -> Prepared:
    """The trainer with its guardrails, built and checked but not trained (for tests and inspection)."""
    model_args, extras = common.model_args(cfg), cfg.hftune
    # Before anything draws: the same seed then gives the same adapter init, rollouts and minibatch order.
    seed_run(cfg.training)
    dirs = common.run_dirs(cfg, resume)
    policy_path = model_args.model_name_or_path
    if loading.resolve_source(policy_path).is_reward_model:
        raise UserError(f"{policy_path} is a reward model; `model_name_or_path` is the SFT policy")

    # Tokenizers first: a mismatch fails before any weights load.
    tokenizer = load_tokenizer(policy_path, revision=model_args.model_revision)
    if extras.reward_model_path:  # scored with, or (PPO) the value model's start
        check_same_tokenizer(
            tokenizer,
            load_tokenizer(extras.reward_model_path),
            f"the policy ({policy_path})",
            f"the reward model ({extras.reward_model_path})",
            fix="train the reward model on top of this SFT model",
        )
    # A verifier that does not import fails here, before any weights load.
    verifier = Verifier(extras.verifier) if extras.verifier else None
    if extras.chat_template:
        raise UserError(
            "`chat_template`: the RL stage renders prompts with the SFT model's template; drop it"
        )
    scoring.check_pad_token(tokenizer, policy_path)
    recipe, data = common.load_data(cfg, tokenizer, dirs, formats=("prompt_only",))
    prompts = prompt_rows(data.train)
    heldout = prompt_rows(data.eval)[: extras.heldout_prompts] if data.eval is not None else []

    scorer = None
    if extras.reward_model_weight:
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
        eos_token_id=tokenizer.eos_token_id,
        verifier=verifier,
        reward_model_weight=extras.reward_model_weight,
        verifier_weight=extras.verifier_weight,
    )

    resume_from = common.checkpoint_to_resume(dirs, cfg, resume, data)
    with common.trl_settings_are_user_errors(cfg.source):
        if extras.algorithm == "ppo":
            trainer = _ppo_trainer(cfg, dirs, tokenizer, prompts, reward_fn)
        else:
            trainer = _group_trainer(cfg, dirs, tokenizer, prompts, heldout, reward_fn)

    evaluate = None
    if heldout:
        evaluate = heldout_evaluator(heldout, tokenizer, reward_fn, extras.response_length)
    progress = RLProgress(extras.algorithm)
    guardrails = Guardrails(
        dirs.work,
        Bounds(
            max_kl=extras.max_kl,
            min_mean_length=extras.min_mean_length,
            max_mean_length=extras.max_mean_length,
            heldout_tolerance=extras.heldout_tolerance,
        ),
        policy_fn=lambda: trained_policy(trainer),
        heldout=evaluate,
        heldout_every=extras.heldout_every,
        rollout_stats=stats,
        resumed_at=common.checkpoint_step(resume_from),
        report=progress.write_step,
    )
    trainer.add_callback(guardrails)
    trainer.add_callback(StopOnNonFinite())
    replace_progress_callback(trainer, progress)
    return Prepared(
        trainer, guardrails, scorer, reward_fn, data, recipe, tokenizer, dirs, resume_from, progress
    )


def _ppo_trainer(
    cfg: StageConfig,
    dirs: common.RunDirs,
    tokenizer,
    prompts,
    reward_fn: RewardFn,
    *,
    separate_reference: bool = False,
):
    """hftune's PPOTrainer on the SFT policy (fresh LoRA adapter, or full fine-tuning with a frozen copy as
    the reference), a value model started from the reward model, and `reward_fn`. `separate_reference`
    holds a second copy as reference with LoRA too (only for measuring what the shared reference saves).
    The held-out prompts are checked by the guardrails; a checkpoint to resume is `train`'s argument."""
    from peft import get_peft_model

    from hftune.stages.rl.ppo_trainer import PPOTrainer

    model_args, extras = common.model_args(cfg), cfg.hftune
    # PPOConfig's `response_length` and `kl_coef` are hftune's keys, the same for every algorithm.
    args = common.trainer_args(cfg, dirs, response_length=extras.response_length, kl_coef=extras.kl_coef)
    rollout = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.num_mini_batches
    if len(prompts) < rollout:  # before any weights load
        raise UserError(
            f"{cfg.source}: a PPO rollout takes {rollout} prompts (per_device_train_batch_size x "
            f"gradient_accumulation_steps x num_mini_batches) but the data has {len(prompts)} training "
            "prompts; lower those or add prompts"
        )
    tokenizer.padding_side = "left"  # queries are left padded so generation continues each prompt directly
    queries = encode_prompts(tokenizer, prompts)

    path = model_args.model_name_or_path
    policy = loading.load_model(
        path, model_args, for_training=True, gradient_checkpointing=args.gradient_checkpointing
    )
    common.ignore_bias_buffers(policy, cfg)
    reference = None
    if model_args.use_peft:
        policy = get_peft_model(policy, loading.lora_config(model_args))
    if separate_reference or not model_args.use_peft:
        reference = loading.load_model(path, model_args, for_training=False)
    # The value model starts from the reward model (it already reads replies for their worth), or, with a
    # verifier as the only reward, from the SFT model with a fresh head.
    value = loading.load_reward_model(extras.reward_model_path or path, model_args, for_training=True)
    value.config.pad_token_id = tokenizer.pad_token_id
    if reward_fn.scorer is not None and reward_fn.normalize:
        _normalise_value_head(value, reward_fn.scorer.stats)
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        policy=policy,
        value_model=value,
        reward_fn=reward_fn,
        prompts=prompts,
        queries=queries,
        reference=reference,
    )
    if reward_fn.scorer is not None:  # called, not trained: moved to where the policy trains
        reward_fn.scorer.model.to(trainer.args.device)
    return trainer


def _normalise_value_head(value, stats: dict[str, float]) -> None:
    """Start the value model on the scale of the rewards it must predict: rewards are normalised with the
    reward stage's statistics, so the head copied from the reward model is too (measured: with raw-scale
    values against normalised rewards, early advantages are mostly value error and the reward falls)."""
    import torch

    head = value.score
    scaled = torch.nn.Linear(
        head.in_features, head.out_features, bias=True, dtype=head.weight.dtype, device=head.weight.device
    )
    with torch.no_grad():
        bias = head.bias if head.bias is not None else torch.zeros_like(scaled.bias)
        scaled.weight.copy_(head.weight / stats["std"])
        scaled.bias.copy_((bias - stats["mean"]) / stats["std"])
    value.score = scaled


def _group_trainer(cfg: StageConfig, dirs: common.RunDirs, tokenizer, prompts, heldout, reward_fn: RewardFn):
    """RLOO / GRPO on TRL's maintained trainers, with the same reward and the same hftune keys."""
    from datasets import Dataset
    from trl import GRPOTrainer, RLOOTrainer

    model_args, extras = common.model_args(cfg), cfg.hftune
    # TRL's names for hftune's keys, which mean the same for every algorithm.
    args = common.trainer_args(
        cfg,
        dirs,
        max_completion_length=extras.response_length,
        beta=extras.kl_coef,
        num_generations=extras.num_generations,
    )
    policy = loading.load_model(
        model_args.model_name_or_path,
        model_args,
        for_training=True,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    common.ignore_bias_buffers(policy, cfg)
    # TRL >= 1.14.2 ends a completion at every eos id of the policy's generation config as well as the
    # tokenizer's; a base model's config can name another one (e.g. <|endoftext|> beside the chat template's
    # <|im_end|>). Rollouts end at the end-of-turn token only, as the reward's missing-EOS check, the
    # held-out check and the eval read them.
    policy.generation_config.eos_token_id = tokenizer.eos_token_id
    trainer_class = RLOOTrainer if extras.algorithm == "rloo" else GRPOTrainer
    trainer = trainer_class(
        model=policy,
        reward_funcs=reward_fn,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        eval_dataset=Dataset.from_dict({"prompt": heldout}) if heldout else None,
        processing_class=tokenizer,
        peft_config=loading.lora_config(model_args),
    )
    # TRL moves the models it is given; a reward *function* keeps its model where it was loaded (the CPU).
    if reward_fn.scorer is not None:
        reward_fn.scorer.model.to(trainer.accelerator.device)
    return trainer


def trained_policy(trainer):
    """The policy being trained: hftune's PPOTrainer holds it beside the value model (`model.policy`)."""
    model = trainer.model
    return model.policy if hasattr(model, "policy") else model


@contextlib.contextmanager
def frozen_gc(enabled: bool) -> Iterator[None]:
    """Keep the objects alive before training out of the garbage collector's scans while it trains.

    With the ~500k Python objects that transformers, datasets and the models leave behind, each full
    collection walks all of them (~0.3 s; TRL's old PPO loop asked for two an update, over half of a tiny
    run's time; TRL's GRPO / RLOO trainers and Python's own generation-2 collections still run them).
    Frozen objects are never scanned, so a collection only walks what the update made.
    Nothing is computed differently; the frozen objects are released to the collector when training ends.
    """
    if not enabled:
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run(cfg: StageConfig, *, resume: bool = False) -> RLResult:
    p = prepare(cfg, resume=resume)
    trainer, guardrails = p.trainer, p.guardrails
    alarm = None
    try:
        with frozen_gc(cfg.hftune.freeze_gc):
            trainer.train(resume_from_checkpoint=p.resume_from)
    except AlarmStop as stop:
        alarm = str(stop)
        guardrails.restore_last_good()
    finally:
        p.progress.close()
    metrics = _summarise(p.dirs.work / "metrics.jsonl")
    metrics.update(common.parameter_counts(trained_policy(trainer)))
    if alarm:
        metrics["alarm"] = alarm

    def write_extra(out: Path) -> None:
        for name in ("metrics.jsonl", "samples.jsonl"):
            if (p.dirs.work / name).is_file():
                shutil.copy(p.dirs.work / name, out / name)
        common.point_adapter_at_sft(out, cfg.model.model_name_or_path)
        common.save_generation_config(trained_policy(trainer), p.tokenizer, out)

    # Saved with the training default (right); generation code pads left itself.
    side, p.tokenizer.padding_side = p.tokenizer.padding_side, "right"
    try:
        manifest = common.save_artifact(
            p.dirs,
            cfg,
            stage=cfg.stage,  # the algorithm: ppo, rloo or grpo
            trainer=trainer,
            tokenizer=p.tokenizer,
            metrics=metrics,
            # The policy adapter only (PPO's value model stays behind).
            save_model=lambda out: trained_policy(trainer).save_pretrained(str(out)),
            parents=[
                artifacts.parent_ref(cfg.model.model_name_or_path, "sft_model"),
                # The reward model is a parent when the policy was trained against it (not when it only
                # started PPO's value model under a verifier-only reward).
                *(
                    [artifacts.parent_ref(cfg.hftune.reward_model_path, "reward_model")]
                    if p.scorer is not None
                    else []
                ),
            ],
            data=common.data_manifest(p.recipe, p.data, cfg.hftune.data_files, len(p.data.train)),
            prepared=p.data,
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
    # The guardrails' keys (PPO's and RLOO/GRPO's names); the length as PPO logs it.
    for key in (*REWARD_KEYS, *KL_KEYS, LENGTH_KEYS[0], "heldout/reward"):
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
