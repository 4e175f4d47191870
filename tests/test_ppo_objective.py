"""PPO's arithmetic (hftune/stages/rl/ppo_objective.py) on hand-worked numbers: GAE, the clipped surrogate's
zero gradient outside its band, the clipped value loss, the per-token KL estimators against the exact KL,
the reward shaping, whitening, the stop-token mask and the seeded minibatch order."""

from __future__ import annotations

import math

import pytest
import torch

from hftune.stages.rl import ppo_objective as ppo

ONE_ROW = torch.ones(1, 3)


def close(tensor: torch.Tensor, expected) -> None:
    torch.testing.assert_close(tensor, torch.tensor(expected, dtype=tensor.dtype), rtol=1e-5, atol=1e-6)


def test_gae_matches_the_hand_worked_recursion():
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.4, 0.3]])
    # gamma 1, lam 0.9: delta = (-0.1, -0.1, 0.7); A_2 = 0.7, A_1 = -0.1 + 0.9 * 0.7, A_0 = -0.1 + 0.9 * 0.53
    advantages, returns = ppo.gae(rewards, values, ONE_ROW, gamma=1.0, lam=0.9)
    close(advantages, [[0.377, 0.53, 0.7]])
    close(returns, [[0.877, 0.93, 1.0]])
    # lam 1: the returns are the discounted rewards-to-go (0.5^2, 0.5, 1), whatever the values.
    advantages, returns = ppo.gae(rewards, values, ONE_ROW, gamma=0.5, lam=1.0)
    close(returns, [[0.25, 0.5, 1.0]])
    close(advantages, [[-0.25, 0.1, 0.7]])


def test_gae_stops_at_the_last_counted_token():
    """Padding after the stop token contributes nothing: neither its reward nor its (garbage) value."""
    rewards, values = torch.tensor([[0.0, 2.0, 5.0]]), torch.tensor([[0.1, 0.2, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    advantages, returns = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(advantages, [[1.9, 1.8, 0.0]])
    close(returns, [[2.0, 2.0, 0.0]])


@pytest.mark.parametrize(
    ("ratio", "advantage", "moves"),
    [
        (1.5, 1.0, False),  # above the band, and the advantage asks for more: clipped, no gradient
        (0.5, -1.0, False),  # below the band, and the advantage asks for less: clipped, no gradient
        (1.5, -1.0, True),  # the pessimistic bound keeps the unclipped term: it is pulled back
        (0.5, 1.0, True),
        (1.1, 1.0, True),  # inside the band
    ],
)
def test_the_clipped_objective_has_no_gradient_where_the_ratio_left_the_band(ratio, advantage, moves):
    logprobs = torch.tensor([[math.log(ratio)]], requires_grad=True)
    parts = ppo.policy_loss(logprobs, torch.zeros(1, 1), torch.tensor([[advantage]]), torch.ones(1, 1), 0.2)
    parts.loss.backward()
    if moves:
        assert logprobs.grad.item() == pytest.approx(-advantage * ratio)  # d(-A * exp(lp)) / d lp
        assert parts.clipfrac.item() == 0
    else:
        assert logprobs.grad.item() == 0 and parts.clipfrac.item() == 1
    assert parts.approx_kl.item() == pytest.approx(0.5 * math.log(ratio) ** 2)


def test_the_policy_loss_averages_over_counted_tokens_only():
    logprobs = torch.zeros(1, 3, requires_grad=True)  # ratio 1 everywhere
    advantages = torch.tensor([[1.0, 3.0, 100.0]])
    parts = ppo.policy_loss(logprobs, torch.zeros(1, 3), advantages, torch.tensor([[1.0, 1.0, 0.0]]), 0.2)
    assert parts.loss.item() == pytest.approx(-2.0)


def test_the_value_loss_is_clipped_around_the_rollouts_values():
    old, target, mask = torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2)
    # Towards the return, past the clip range: the clipped value (0.2) is further from it, so it is used
    # and the value gets no gradient from this rollout beyond the range.
    values = torch.tensor([[0.5, 0.5]], requires_grad=True)
    parts = ppo.value_loss(values, old, target, mask, cliprange_value=0.2)
    assert parts.loss.item() == pytest.approx(0.5 * 0.8**2) and parts.clipfrac.item() == 1
    parts.loss.backward()
    assert values.grad.abs().max().item() == 0
    # Away from the return: the unclipped error is larger and is used, so the value is pulled back.
    values = torch.tensor([[-0.5, -0.5]], requires_grad=True)
    parts = ppo.value_loss(values, old, target, mask, cliprange_value=0.2)
    assert parts.loss.item() == pytest.approx(0.5 * 1.5**2) and parts.clipfrac.item() == 0
    parts.loss.backward()
    close(values.grad, [[-0.75, -0.75]])  # 0.5 * 2 * (v - R) / 2 tokens
    # Within the range both terms agree.
    values = torch.tensor([[0.1, 0.1]])
    assert ppo.value_loss(values, old, target, mask, 0.2).loss.item() == pytest.approx(0.5 * 0.9**2)


def test_the_kl_penalty_is_the_log_ratio_and_zero_against_itself():
    logprobs, ref = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[-1.5, -1.0, -0.5]])
    close(ppo.per_token_kl(logprobs, ref, "k1"), [[0.5, -1.0, 0.0]])
    k3 = ppo.per_token_kl(logprobs, ref, "k3")
    assert (k3 >= 0).all() and k3[0, 2] == 0
    assert k3[0, 0].item() == pytest.approx(math.exp(-0.5) - 1 + 0.5)
    for estimator in ppo.KL_ESTIMATORS:  # the policy before its first update is the reference
        assert ppo.per_token_kl(logprobs, logprobs.clone(), estimator).abs().max() == 0
    with pytest.raises(ValueError, match="kl_estimator"):
        ppo.per_token_kl(logprobs, ref, "k2")


def test_both_kl_estimators_are_unbiased_for_sampled_tokens():
    p = torch.tensor([0.6, 0.3, 0.1])  # the policy
    q = torch.tensor([0.2, 0.5, 0.3])  # the reference
    exact = (p * (p / q).log()).sum().item()
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    logprobs, ref = p.log()[tokens], q.log()[tokens]
    for estimator in ppo.KL_ESTIMATORS:
        assert ppo.per_token_kl(logprobs, ref, estimator).mean().item() == pytest.approx(exact, rel=0.02)


def test_token_rewards_put_the_score_on_the_last_counted_token():
    kl = torch.tensor([[0.5, 1.0, 2.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rewards = ppo.token_rewards(torch.tensor([3.0, -1.0]), kl, mask, kl_coef=0.1)
    close(rewards, [[-0.05, 3.0 - 0.1, 0.0], [-0.1, -0.1, -1.0 - 0.1]])


def test_whitening_gives_zero_mean_unit_variance_over_counted_tokens():
    values = torch.tensor([[1.0, 2.0, 3.0, 40.0], [4.0, 5.0, 6.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    white = ppo.whiten(values, mask)
    counted = white[mask.bool()]
    assert counted.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert counted.std().item() == pytest.approx(1.0, rel=1e-4)
    assert white[:, 3].abs().max() == 0
    kept = ppo.whiten(values, mask, shift_mean=False)[mask.bool()]
    assert kept.mean().item() == pytest.approx(3.5) and kept.std().item() == pytest.approx(1.0, rel=1e-4)


def test_the_response_mask_ends_at_the_first_stop_token():
    eos = 9
    responses = torch.tensor([[5, 7, eos, 3, eos], [1, 2, 3, 4, 5], [eos, 1, 1, 1, 1]])
    assert ppo.response_mask(responses, eos).tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],  # no stop token: every token counts (the missing-EOS penalty applies)
        [1, 0, 0, 0, 0],
    ]
    assert ppo.response_mask(responses, None).sum() == responses.numel()


def test_minibatch_order_is_a_seeded_partition():
    first = ppo.minibatches(8, 2, torch.Generator().manual_seed(3))
    again = ppo.minibatches(8, 2, torch.Generator().manual_seed(3))
    other = ppo.minibatches(8, 2, torch.Generator().manual_seed(4))
    assert [b.tolist() for b in first] == [b.tolist() for b in again]
    assert [b.tolist() for b in first] != [b.tolist() for b in other]
    assert sorted(torch.cat(first).tolist()) == list(range(8)) and [len(b) for b in first] == [4, 4]
    with pytest.raises(ValueError, match="equal minibatches"):
        ppo.minibatches(8, 3, torch.Generator())
