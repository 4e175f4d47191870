"""The config class of hftune's PPO (`algorithm: ppo`): TrainingArguments plus PPO's settings, with the names
and defaults of TRL's PPOConfig, so a config written for it runs unchanged, except the derived sizes TRL
computed itself and the options hftune never used (`UNSUPPORTED_KEYS`, each refused with the reason). TRL
removed its PPOTrainer in 1.13; nothing here imports `trl.experimental`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

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
