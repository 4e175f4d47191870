"""`algorithm: ppo` (the RL stage's default, see `stage.py`): hftune's own PPO (`ppo_trainer.py`, on the
arithmetic of `ppo_objective.py`), its config class, and how the stage builds it: the policy is the SFT
model with a fresh LoRA adapter (the adapter switched off is the reference policy) or fully fine-tuned
beside a frozen reference copy, the value model starts from the reward model, and rewards are hftune's
(`RewardFn`, the scoring path the reward stage and the eval harness use).

TRL removed its PPOTrainer in 1.13; nothing here imports `trl.experimental`. The keys are those of TRL's
PPOConfig, so a config written for it runs unchanged, except the derived sizes TRL computed itself and the
options hftune never used (`UNSUPPORTED_KEYS`, each refused with the reason).

    hftune ppo --config configs/tiny/ppo.yaml
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from hftune.errors import UserError
from hftune.models import loading
from hftune.stages import common
from hftune.stages.rl.ppo_trainer import VALUE_WEIGHTS, PPOTrainer  # noqa: F401 (VALUE_WEIGHTS: tests)
from hftune.stages.rl.rewards import RewardFn, encode_prompts

# TRL PPOConfig keys hftune's PPO does not take, and why (the unknown-key error says so).
UNSUPPORTED_KEYS = {
    "num_sample_generations": "hftune writes held-out samples itself: set `heldout_every`",
    "stop_token": "replies always end at the tokenizer's end-of-turn (eos) token",
    "stop_token_id": "replies always end at the tokenizer's end-of-turn (eos) token",
    "ds3_gather_for_generation": "the RL stage does not run under DeepSpeed ZeRO-3",
    "model_adapter_name": "the policy trains one fresh adapter; the reference is that adapter switched off",
    "ref_adapter_name": "the policy trains one fresh adapter; the reference is that adapter switched off",
    "sft_model_path": "the policy is `model_name_or_path`",
    "dataset_num_proc": "prompts are prepared by hftune's data recipes",
}


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


@dataclass
class PPOConfig(TrainingArguments):
    """TrainingArguments plus PPO's settings (the names and defaults of TRL's PPOConfig). A step is one
    rollout of `per_device_train_batch_size x gradient_accumulation_steps x num_mini_batches` prompts and
    its `num_ppo_epochs x num_mini_batches` optimizer steps; `max_steps` counts rollouts."""

    learning_rate: float = _help("The initial learning rate for AdamW (PPO's default is low).", 3e-6)
    num_ppo_epochs: int = _help("Passes over each rollout (one optimizer step per minibatch each).", 4)
    num_mini_batches: int = _help("Minibatches a rollout is split into (in a seeded order each pass).", 1)
    total_episodes: int | None = _help(
        "Prompts to roll out in all, when `max_steps` is not set (else `num_train_epochs` passes).", None
    )
    local_rollout_forward_batch_size: int = _help(
        "Rows per forward pass (generation and scoring) while rolling out, without gradients.", 64
    )
    temperature: float = _help("Sampling temperature of the rollouts (log-probabilities use it too).", 0.7)
    whiten_rewards: bool = _help(
        "Scale per-token rewards to unit variance over the rollout (mean kept).", False
    )
    kl_estimator: str = _help(
        "Per-token KL to the reference: `k1` (log-ratio, unbiased) or `k3` (r - 1 - log r, never negative).",
        "k1",
    )
    cliprange: float = _help("Clip range of the policy ratio in the surrogate objective.", 0.2)
    vf_coef: float = _help("Weight of the value loss in the combined loss.", 0.1)
    cliprange_value: float = _help("How far a value prediction may move from the rollout's value.", 0.2)
    gamma: float = _help("Discount factor of the advantage estimate.", 1.0)
    lam: float = _help("GAE's lambda (1: Monte-Carlo returns, 0: one-step TD).", 0.95)
    # Set by the stage from hftune's own keys (`response_length`, `kl_coef`): not config keys here.
    response_length: int = field(default=64, init=False)
    kl_coef: float = field(default=0.05, init=False)

    def __post_init__(self):
        super().__post_init__()
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be k1 or k3, got {self.kl_estimator!r}")
        if self.num_mini_batches < 1 or self.num_ppo_epochs < 1:
            raise ValueError("num_mini_batches and num_ppo_epochs must be at least 1")


def config_class():
    return PPOConfig


def build_trainer(
    cfg,
    tokenizer,
    prompts,
    heldout,
    reward_fn: RewardFn,
    *,
    separate_reference: bool = False,
):
    """hftune's PPOTrainer on the SFT policy (fresh LoRA adapter, or full fine-tuning with a frozen copy as
    the reference), a value model started from the reward model, and `reward_fn`. `separate_reference`
    holds a second copy as reference with LoRA too (only for measuring what the shared reference saves).
    `heldout` is checked by the guardrails, not here; a checkpoint to resume is `train`'s argument."""
    from peft import get_peft_model

    args, model_args, extras = cfg.training, cfg.model, cfg.hftune
    rollout = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.num_mini_batches
    if len(prompts) < rollout:  # before any weights load
        raise UserError(
            f"{cfg.source}: a PPO rollout takes {rollout} prompts (per_device_train_batch_size x "
            f"gradient_accumulation_steps x num_mini_batches) but the data has {len(prompts)} training "
            "prompts; lower those or add prompts"
        )
    args.response_length = extras.response_length
    args.kl_coef = extras.kl_coef
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
    head = value.score
    scaled = torch.nn.Linear(
        head.in_features, head.out_features, bias=True, dtype=head.weight.dtype, device=head.weight.device
    )
    with torch.no_grad():
        bias = head.bias if head.bias is not None else torch.zeros_like(scaled.bias)
        scaled.weight.copy_(head.weight / stats["std"])
        scaled.bias.copy_((bias - stats["mean"]) / stats["std"])
    value.score = scaled
