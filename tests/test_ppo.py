"""Stage II objective (SPEC "Training" 2, appendix A.2): rewards, returns, the PPO loss."""

from __future__ import annotations

import math

import pytest
import torch

from glancefocus.models.policy import PatchPolicy
from glancefocus.config import PPOConfig
from glancefocus.training.ppo import PolicyReplay, Rollout, discounted_returns, ppo_loss, step_rewards, update_loss


def test_step_rewards_hand_example():
    # T = 3 steps, B = 2 samples, C = 3 classes; targets 2 and 0.
    probs = torch.tensor(
        [
            [[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]],
            [[0.1, 0.1, 0.8], [0.4, 0.4, 0.2]],
            [[0.3, 0.3, 0.4], [0.9, 0.05, 0.05]],
        ],
        dtype=torch.float64,
    )
    targets = torch.tensor([2, 0])
    rewards = step_rewards(probs, targets)
    assert rewards.shape == (2, 2)
    expected = torch.tensor([[0.8 - 0.5, 0.4 - 0.6], [0.4 - 0.8, 0.9 - 0.4]], dtype=torch.float64)
    assert torch.allclose(rewards, expected, atol=1e-15)
    # telescoping: the rewards sum to p_T(y) - p_1(y)
    assert torch.allclose(rewards.sum(0), torch.tensor([0.4 - 0.5, 0.9 - 0.6], dtype=torch.float64))


def test_discounted_returns_hand_example():
    rewards = torch.tensor([[0.1, 1.0], [0.2, 0.0], [-0.05, -1.0]], dtype=torch.float64)
    returns = discounted_returns(rewards, 0.7)
    # column 0: R3 = -0.05; R2 = 0.2 + 0.7 * -0.05 = 0.165; R1 = 0.1 + 0.7 * 0.165 = 0.2155
    # column 1: R3 = -1;    R2 = 0 + 0.7 * -1 = -0.7;      R1 = 1 + 0.7 * -0.7 = 0.51
    expected = torch.tensor([[0.2155, 0.51], [0.165, -0.7], [-0.05, -1.0]], dtype=torch.float64)
    assert torch.allclose(returns, expected, atol=1e-15)
    # gamma = 0: returns are the rewards; gamma = 1: reverse cumulative sums
    assert torch.equal(discounted_returns(rewards, 0.0), rewards)
    assert torch.allclose(discounted_returns(rewards, 1.0), rewards.flip(0).cumsum(0).flip(0))
    # single step
    assert torch.equal(discounted_returns(rewards[:1], 0.7), rewards[:1])


def _example():
    # (T-1, B) = (2, 3); old log-probs 0, so ratio = exp(log_prob).
    log_probs = torch.tensor([[0.0, 0.5, -0.5], [0.1, 0.5, -0.5]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(2, 3, dtype=torch.float64)
    values = torch.tensor([[0.2, 0.1, 0.0], [-0.3, 0.3, 0.2]], dtype=torch.float64, requires_grad=True)
    returns = torch.tensor([[1.0, 0.6, -0.4], [-0.5, -0.2, 0.7]], dtype=torch.float64)
    entropy = torch.tensor([[-2.0, -1.5, -1.0], [-0.5, 0.0, 0.5]], dtype=torch.float64)
    return log_probs, old, values, returns, entropy


def test_ppo_loss_hand_example():
    log_probs, old, values, returns, entropy = _example()
    out = ppo_loss(log_probs, old, values, returns, entropy, clip=0.2, value_coef=0.5, entropy_coef=0.01)
    # advantages R - V: [[0.8, 0.5, -0.4], [-0.2, -0.5, 0.5]]
    # ratios:          [[1, e^.5, e^-.5], [e^.1, e^.5, e^-.5]]
    e5, em5, e1 = math.exp(0.5), math.exp(-0.5), math.exp(0.1)
    terms = [
        0.8,  # ratio 1: no clipping
        1.2 * 0.5,  # ratio 1.65 > 1.2 with A > 0: clipped from above, 0.6 < 0.824
        0.8 * -0.4,  # ratio 0.61 < 0.8 with A < 0: clipped from below, -0.32 < -0.243
        e1 * -0.2,  # ratio 1.105 inside [0.8, 1.2]
        e5 * -0.5,  # ratio 1.65 with A < 0: the unclipped term is the smaller, -0.824 < -0.6
        em5 * 0.5,  # ratio 0.61 with A > 0: the unclipped term is the smaller, 0.303 < 0.4
    ]
    surrogate = sum(terms) / 6
    value_error = sum(
        (v - r) ** 2 for v, r in zip([0.2, 0.1, 0.0, -0.3, 0.3, 0.2], [1.0, 0.6, -0.4, -0.5, -0.2, 0.7])
    ) / 6  # (0.64 + 0.25 + 0.16 + 0.04 + 0.25 + 0.25) / 6
    mean_entropy = (-2.0 - 1.5 - 1.0 - 0.5 + 0.0 + 0.5) / 6
    expected = -surrogate + 0.5 * value_error - 0.01 * mean_entropy
    assert value_error == pytest.approx(1.59 / 6, abs=1e-15)
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.policy.item() == pytest.approx(-surrogate, abs=1e-12)
    assert out.value.item() == pytest.approx(value_error, abs=1e-12)
    assert out.entropy.item() == pytest.approx(mean_entropy, abs=1e-12)
    assert expected == pytest.approx(0.0836882482, abs=1e-9)  # the number, for the record

    # Gradients: the advantage does not differentiate through V; clipped terms give no
    # policy gradient.
    out.loss.backward()
    n = 6
    ratio = torch.exp(log_probs.detach())
    advantage = returns - values.detach()
    unclipped = torch.tensor([[True, False, False], [True, True, True]])
    want_lp = torch.where(unclipped, -ratio * advantage / n, torch.zeros_like(ratio))
    assert torch.allclose(log_probs.grad, want_lp, atol=1e-12)
    want_v = 0.5 * 2 * (values.detach() - returns) / n
    assert torch.allclose(values.grad, want_v, atol=1e-12)


def test_ppo_loss_coefficients_and_old_log_probs_are_constants():
    log_probs, old, values, returns, entropy = _example()
    old = old.clone().requires_grad_(True)
    base = ppo_loss(log_probs, old, values, returns, entropy)
    assert base.loss.item() == pytest.approx(
        ppo_loss(log_probs, old, values, returns, entropy, clip=0.2, value_coef=0.5, entropy_coef=0.01).loss.item()
    )  # the defaults are the paper's ε, c1, c2
    base.loss.backward()
    assert old.grad is None
    # higher entropy lowers the loss by c2 per unit
    more = ppo_loss(log_probs, old, values, returns, entropy + 1.0)
    assert more.loss.item() == pytest.approx(base.loss.item() - 0.01, abs=1e-12)
    # with no clipping (huge ε) the surrogate is the plain importance-weighted advantage
    wide = ppo_loss(log_probs, old, values, returns, entropy, clip=100.0)
    plain = (torch.exp(log_probs) * (returns - values)).mean()
    assert wide.policy.item() == pytest.approx(-plain.item(), abs=1e-12)


def test_gaussian_policy_log_prob_and_entropy():
    policy = PatchPolicy((4, 2, 2), trunk="conv", hidden=8, std=0.1)
    mean = torch.tensor([[0.5, 0.2], [0.9, 0.0]])
    action = torch.tensor([[0.6, 0.2], [1.0, 0.05]])
    log_prob = policy.log_prob(mean, action)
    const = -math.log(0.1) - 0.5 * math.log(2 * math.pi)
    expected = [
        2 * const - 0.5 * (0.1 / 0.1) ** 2,
        2 * const - 0.5 * (0.1 / 0.1) ** 2 - 0.5 * (0.05 / 0.1) ** 2,
    ]
    assert log_prob.tolist() == pytest.approx(expected, abs=1e-5)
    entropy = policy.entropy(mean)
    assert entropy.tolist() == pytest.approx([2 * (0.5 + 0.5 * math.log(2 * math.pi) + math.log(0.1))] * 2, abs=1e-6)
    # sampled actions are clipped to [0, 1] and scored as such
    torch.manual_seed(0)
    edge = torch.tensor([[0.0, 1.0]]).repeat(256, 1)
    actions, lp = policy.sample(edge)
    assert actions.min() >= 0 and actions.max() <= 1
    assert (actions == 0).any() and (actions == 1).any()
    assert torch.allclose(lp, policy.log_prob(edge, actions))


def test_policy_replay_reproduces_rollout():
    torch.manual_seed(0)
    policy = PatchPolicy((8, 3, 3), trunk="mlp", hidden=16)
    maps = [torch.randn(5, 8, 3, 3) for _ in range(3)]
    state, means, actions, log_probs, values = None, [], [], [], []
    with torch.no_grad():
        for m in maps:
            mean, value, state = policy(m, state)
            action, lp = policy.sample(mean)
            means.append(mean)
            actions.append(action)
            log_probs.append(lp)
            values.append(value)
    replay = PolicyReplay(policy)
    lp2, v2, ent = replay(maps, torch.stack(actions))
    assert lp2.shape == v2.shape == ent.shape == (3, 5)
    assert torch.allclose(lp2, torch.stack(log_probs), atol=1e-5)
    assert torch.allclose(v2, torch.stack(values), atol=1e-6)
    # the recurrent state carries over: replaying the last map alone gives other values
    lp_alone, _, _ = replay(maps[2:], torch.stack(actions)[2:])
    assert not torch.allclose(lp_alone[0], lp2[2])
    # PPO at the first update: ratio exactly 1
    out = ppo_loss(lp2, torch.stack(log_probs), v2, torch.randn(3, 5), ent)
    out.loss.backward()
    assert all(p.grad is not None for p in policy.parameters())


def test_ppo_loss_takes_a_given_advantage():
    """A given Â replaces R − V in the clipped surrogate; the critic still regresses on R."""
    log_probs, old, values, returns, entropy = _example()
    advantage = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.4, -0.6]], dtype=torch.float64)
    given = ppo_loss(log_probs, old, values, returns, entropy, advantages=advantage)
    shifted = ppo_loss(log_probs, old, values.detach(), values.detach() + advantage, entropy)
    assert torch.allclose(given.policy, shifted.policy, atol=1e-12)
    assert torch.allclose(given.value, ppo_loss(log_probs, old, values, returns, entropy).value, atol=1e-12)


def test_greedy_baseline_removes_the_images_own_difficulty():
    """Self-critical advantages: R(sampled) − R(π's mean) on the same image.  With no
    exploration the two rollouts read the same patches, so every advantage is 0, while the
    returns themselves (what the critic must explain) are not."""
    from dataclasses import replace

    from glancefocus import GFNet, GFNetConfig
    from glancefocus.config import PPOConfig
    from glancefocus.training.ppo import rollout

    torch.manual_seed(0)
    model = GFNet(GFNetConfig(backbone="resnet18", num_classes=3, patch_size=32, T=3, image_size=64)).eval()
    images, targets = torch.randn(16, 3, 64, 64), torch.randint(0, 3, (16,))
    greedy = replace(PPOConfig(), baseline="greedy")
    assert rollout(model, images, targets, PPOConfig()).advantages is None
    model.policy.std = 1e-7
    batch = rollout(model, images, targets, greedy)
    assert batch.returns.abs().max() > 0.1 and batch.advantages.abs().max() < 1e-3
    model.policy.std = 0.2
    raw = replace(greedy, normalize_returns=False)
    torch.manual_seed(1)
    batch = rollout(model, images, targets, raw)
    torch.manual_seed(1)  # the same sampled locations: normalising scales Â as it scales R
    scaled = rollout(model, images, targets, greedy).advantages
    assert torch.allclose(scaled * (batch.returns.std() + 1e-5), batch.advantages, atol=1e-5)
    mean = discounted_returns(step_rewards(torch.softmax(model(images, locations="mean").logits, 2), targets), 0.7)
    assert torch.allclose(batch.advantages, batch.returns - mean, atol=1e-5) and batch.advantages.abs().max() > 1e-3


def test_the_ratio_reads_the_difference_from_the_old_log_probs():
    # Shifting both log-probabilities by 0.7 leaves every ratio exp(log π − log π_old) as it
    # was: the hand example's numbers again (an old log-prob added, not subtracted, would
    # give ratios exp(2 · 0.7 + ...) instead).
    log_probs, old, values, returns, entropy = _example()
    base = ppo_loss(log_probs, old, values, returns, entropy)
    shifted = ppo_loss(log_probs.detach() + 0.7, old + 0.7, values, returns, entropy)
    assert shifted.loss.item() == pytest.approx(base.loss.item(), abs=1e-12)
    assert shifted.loss.item() == pytest.approx(0.0836882482, abs=1e-9)


@pytest.mark.parametrize("advantages", [False, True])
def test_update_loss_is_ppo_loss_of_the_replayed_rollout(advantages: bool):
    """update_loss re-scores the rollout's actions with the current π and hands everything,
    the configuration's ε, c1, c2 and any given advantage included, to ppo_loss."""
    torch.manual_seed(0)
    policy = PatchPolicy((8, 3, 3), trunk="mlp", hidden=16)
    maps = [torch.randn(4, 8, 3, 3) for _ in range(2)]
    actions = torch.rand(2, 4, 2)
    old_log_probs, returns = torch.randn(2, 4) * 0.1 - 1.0, torch.randn(2, 4)
    given = torch.randn(2, 4) if advantages else None
    batch = Rollout(maps, actions, old_log_probs, torch.zeros(2, 4), returns, torch.zeros(3), given)
    # non-default coefficients, so that each must be passed on to change the result
    config = PPOConfig(clip=0.05, value_coef=2.0, entropy_coef=0.3)
    replay = PolicyReplay(policy)
    got = update_loss(replay, batch, config)
    log_probs, values, entropy = replay(maps, actions)
    want = ppo_loss(log_probs, old_log_probs, values, returns, entropy, clip=0.05, value_coef=2.0, entropy_coef=0.3,
                    advantages=given)
    for field in ("loss", "policy", "value", "entropy"):
        torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=0, atol=1e-6)
    # and the configuration's coefficients matter: the defaults give another loss
    assert not torch.isclose(update_loss(replay, batch, PPOConfig()).loss, got.loss)
    got.loss.backward()
    assert all(p.grad is not None for p in policy.parameters())
