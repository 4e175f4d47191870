"""The RL stage (`hftune ppo`): optimise the SFT policy against a frozen reward model while a KL penalty
keeps it near the SFT model. PPO is hftune's own (`ppo.py`, `ppo_trainer.py`, `ppo_objective.py`);
`algorithm: rloo` / `algorithm: grpo` run on TRL's maintained trainers (`group.py`); all three read the same
config keys (`config.py`).

    hftune ppo --config configs/tiny/ppo.yaml [--algorithm rloo] [--resume]

Reads top to bottom: load the SFT tokenizer and check the reward model reads text the same way, render the
prompts with the chat template, load the policy (SFT weights + a fresh LoRA adapter: switching the adapter
off gives the reference policy, so no second copy is held), the value model (from the reward model, PPO
only) and the frozen reward model, train with guardrails (`guardrails.py`) and one console line a step
(`progress.py`), then write the policy adapter, tokenizer, config, metrics and manifest atomically.
Rewards come from `hftune.models.scoring` (`rewards.py`), the path the reward stage and the eval harness use.
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
from hftune.stages.rl import group
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
from hftune.stages.rl.rewards import RewardFn, Verifier, heldout_evaluator, prompt_rows
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
    model_args, extras = cfg.model, cfg.hftune
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
            from hftune.stages.rl import ppo

            trainer = ppo.build_trainer(cfg, tokenizer, prompts, heldout, reward_fn)
        else:
            trainer = group.build_trainer(cfg, tokenizer, prompts, heldout, reward_fn)

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
            stage="ppo",
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
