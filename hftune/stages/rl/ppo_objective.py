"""The arithmetic of PPO for language models, written here from the algorithm (Schulman et al. 2017, "Proximal
Policy Optimization Algorithms"; GAE from Schulman et al. 2016; the per-token KL penalty to a reference policy
from Ziegler et al. 2019): plain tensor functions, no trainer, so each one is tested on hand-worked numbers.

TRL removed its PPOTrainer in 1.13; hftune's own PPO loop is built on these (issue 28). Shapes: a rollout
batch is `(batch, response_length)`; `mask` is 1 on the response tokens that count (up to and including the
stop token) and 0 on the padding after it. Every function takes the same key names as the RL config
(`gamma`, `lam`, `cliprange`, `cliprange_value`, `kl_coef`, `kl_estimator`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KL_ESTIMATORS = ("k1", "k3")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True) -> torch.Tensor:
    """Scale `values` to unit variance over the masked tokens (and to zero mean with `shift_mean`); padding
    stays 0. Advantages are whitened with the mean removed; rewards (`whiten_rewards`) keep their mean, so
    whitening never turns a good reply's reward negative on average."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    count = mask.sum()
    if count > 1:  # the unbiased variance, as a sample of a larger rollout
        variance = variance * count / (count - 1)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """An estimate, per sampled token, of KL(policy || reference) from the log-probabilities of the sampled
    tokens under each. `k1` is the log-ratio itself (unbiased; a single token's value can be negative);
    `k3` is `r - 1 - log r` with `r = p_ref / p_policy` (unbiased and never negative, lower variance)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """The reward PPO maximises, per token: `-kl_coef * kl` on every response token, plus the sequence's
    score (the reward model's, with any missing-EOS penalty already applied) on its last counted token."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last] += scores * (mask.sum(dim=1) > 0)
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, backwards over each response:
    `delta_t = r_t + gamma * V_{t+1} - V_t` and `A_t = delta_t + gamma * lam * A_{t+1}`, with `V` and `A`
    taken as 0 past the last counted token. Returns (advantages, returns = advantages + values), 0 on
    padding. `lam = 1` gives Monte-Carlo returns minus the baseline, `lam = 0` one-step TD errors."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = advantage
        next_value, next_advantage = values[:, t], advantage
    return advantages, (advantages + values) * mask


@dataclass
class LossParts:
    loss: torch.Tensor
    clipfrac: torch.Tensor  # the share of counted tokens where the clipped term was the one used
    approx_kl: torch.Tensor | None = None  # policy loss only: mean of 0.5 * (log new/old)^2


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> LossParts:
    """The clipped surrogate: maximise `min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)` with
    `ratio = p_new / p_old` per token, as a loss (negated) averaged over the counted tokens. Where the
    clipped term is the smaller one (the ratio left the band in the direction the advantage rewards), the
    token's gradient is zero: one rollout cannot push the policy far."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean(0.5 * log_ratio.detach() ** 2, mask)
    return LossParts(loss, clipfrac.detach(), approx_kl)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> LossParts:
    """The clipped value loss: `0.5 * max((V - R)^2, (V_clipped - R)^2)` with `V_clipped` kept within
    `cliprange_value` of the value the rollout was scored with, averaged over the counted tokens."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return LossParts(loss, clipfrac.detach())


def response_mask(responses: torch.Tensor, stop_token_id: int | None) -> torch.Tensor:
    """1 on each response's tokens up to and including its first `stop_token_id`, 0 after it (what the
    model generated past its stop token is not its reply). Without a stop token every token counts."""
    if stop_token_id is None:
        return torch.ones_like(responses, dtype=torch.float)
    is_stop = (responses == stop_token_id).long()
    stops_before = torch.cumsum(is_stop, dim=1) - is_stop  # stop tokens strictly before each position
    return (stops_before == 0).float()


def minibatches(n: int, num_mini_batches: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's minibatch indices over a rollout of `n` rows: a permutation drawn from `generator` (so a
    seed fixes the order), cut into `num_mini_batches` parts of equal size."""
    if num_mini_batches < 1 or n % num_mini_batches:
        raise ValueError(f"a rollout of {n} rows does not split into {num_mini_batches} equal minibatches")
    order = torch.randperm(n, generator=generator)
    return list(order.view(num_mini_batches, -1))
