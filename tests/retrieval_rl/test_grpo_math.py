"""GRPO math against hand computations."""

from __future__ import annotations

import math

import torch

from recis.retrieval_rl.grpo import clipped_loss, group_advantages, policy_logprobs


def test_group_advantages_by_hand() -> None:
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    a = group_advantages(r, eps=0.0 + 1e-12)
    # row 0: mean 0.5, population std 0.5 -> +-1; row 1: no spread -> 0
    assert torch.allclose(a[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-6)
    assert torch.equal(a[1], torch.zeros(4))


def test_policy_is_softmax_of_similarity_over_temperature() -> None:
    u = torch.tensor([[1.0, 0.0]])
    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    lp = policy_logprobs(u, v, temperature=0.5)
    z = math.exp(2.0) + math.exp(0.0)
    assert torch.allclose(lp.exp(), torch.tensor([[math.exp(2.0) / z, 1.0 / z]]))


def test_clipped_loss_by_hand() -> None:
    adv = torch.tensor([[1.0, -1.0, 2.0, -2.0]])
    ratio = torch.tensor([[1.5, 1.5, 0.5, 0.9]])
    logp_old = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    logp = logp_old + ratio.log()
    loss, parts = clipped_loss(logp, logp_old, adv, clip=0.2)
    # min(rho A, clip(rho) A): 1.5*1 -> 1.2; 1.5*-1 = -1.5 vs -1.2 -> -1.5;
    # 0.5*2 = 1.0 vs 0.8*2 = 1.6 -> 1.0; 0.9*-2 = -1.8 (inside the clip range)
    expected = -(1.2 - 1.5 + 1.0 - 1.8) / 4
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    assert parts["clipped"] == 0.75
    # the KL anchor: k3 = exp(d) - d - 1 with d = log pi_ref - log pi
    ref = logp + torch.tensor([[0.1, -0.2, 0.0, 0.3]])
    loss_kl, parts = clipped_loss(logp, logp_old, adv, 0.2, ref, beta=0.5)
    d = torch.tensor([0.1, -0.2, 0.0, 0.3])
    kl = float((d.exp() - d - 1).mean())
    assert math.isclose(parts["kl"], kl, rel_tol=1e-5)
    assert math.isclose(float(loss_kl), expected + 0.5 * kl, rel_tol=1e-5)


def test_gradient_raises_the_high_reward_item() -> None:
    u = torch.tensor([[1.0, 0.0]], requires_grad=True)
    v = torch.tensor([[[0.6, 0.8], [0.8, 0.6]]])
    lp = policy_logprobs(u, v, 0.1)
    adv = group_advantages(torch.tensor([[1.0, 0.0]]))
    loss, _ = clipped_loss(lp, lp.detach(), adv, 0.2)
    loss.backward()
    assert u.grad is not None
    # descending the loss moves u toward item 0 (reward 1) and away from item 1
    step = -u.grad[0]
    assert float(step @ (v[0, 0] - v[0, 1])) > 0
