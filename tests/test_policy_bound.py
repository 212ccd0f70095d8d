"""The policy bound of the Imagenette script: π fitted to the exact expected step-2 reward
over a grid of places (``scripts/imagenette/policy_bound.py``)."""

from __future__ import annotations

import pytest
import torch

from glancefocus.evaluation.evaluate import grid_locations
from glancefocus.models.policy import PatchPolicy
from scripts.imagenette.policy_bound import expected_reward, fit_policy, paired_gain


def test_expected_reward_is_the_reward_averaged_under_the_gaussian_over_the_grid() -> None:
    places = grid_locations(3)
    reward = torch.zeros(9, 2)
    reward[8, 0], reward[0, 1] = 1.0, 1.0  # image 0 is rewarded in the corner (1, 1), image 1 at (0, 0)
    mean = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    j = expected_reward(mean, places, reward, std=0.1)
    # σ = 0.1 against a spacing of 0.5: nearly all weight on the nearest place
    assert j[0] == pytest.approx(1.0, abs=1e-5) and j[1] == pytest.approx(0.0, abs=1e-5)
    wide = expected_reward(torch.tensor([[0.5, 0.5]]), places, reward[:, :1], std=0.5)
    weights = (-(places - 0.5).square().sum(1) / 0.5).softmax(0)
    torch.testing.assert_close(wide, weights[8:9])
    assert torch.equal(expected_reward(mean, places, torch.full((9, 2), 0.3), std=0.1), torch.full((2,), 0.3))
    # its gradient moves a mean between two places towards the rewarded one
    between = torch.tensor([[0.75, 0.75]], requires_grad=True)
    expected_reward(between, places, reward[:, :1], std=0.2).sum().backward()
    assert (between.grad > 0).all()


def test_fit_policy_learns_an_image_dependent_place_and_keeps_the_best_heldout_epoch() -> None:
    torch.manual_seed(0)
    places = grid_locations(3)

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        maps = torch.randn(n, 4, 2, 2)
        reward = torch.zeros(9, n)
        top = maps[:, 0].mean((1, 2)) > 0  # what the map shows says where the reward is
        reward[0, top], reward[8, ~top] = 1.0, 1.0
        return maps, reward

    policy = PatchPolicy((4, 2, 2), trunk="conv", hidden=16, std=0.25)
    heldout = data(64)
    fitted, history = fit_policy(policy, data(256), heldout, places, epochs=30, lr=1e-2, batch=32, seed=0)
    assert len(history) == 31 and max(history) > history[0] + 0.3  # from about 1/9 of the reward to most of it
    with torch.no_grad():
        j = expected_reward(fitted(heldout[0], None)[0], places, heldout[1], fitted.std).mean()
    assert float(j) == pytest.approx(max(history))  # the kept weights are the best held-out epoch's


def test_fit_policy_keeps_pi_as_it_came_when_no_epoch_beats_it_on_the_heldout_images() -> None:
    torch.manual_seed(0)
    places = grid_locations(3)
    maps = torch.randn(64, 4, 2, 2)
    train, heldout = torch.zeros(9, 64), torch.zeros(9, 64)
    train[0], heldout[8] = 1.0, 1.0  # the training images pull π away from where the held-out reward is
    policy = PatchPolicy((4, 2, 2), trunk="conv", hidden=16, std=0.25).requires_grad_(False)  # frozen, as a trained model's π
    with torch.no_grad():
        policy.actor.bias.fill_(3.0)  # π starts near (1, 1): the held-out images' best place
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    fitted, history = fit_policy(policy, (maps, train), (maps, heldout), places, epochs=5, lr=1e-1, batch=16, seed=0)
    assert history[-1] < history[0] == max(history)  # it did train (away), and epoch 0 is the one kept
    assert all(torch.equal(v, before[k]) for k, v in fitted.state_dict().items())


def test_paired_gain_and_its_standard_error() -> None:
    better, worse = torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool), torch.tensor([0, 1, 0, 1, 0], dtype=torch.bool)
    gain = paired_gain(better, worse)
    assert gain["gain"] == pytest.approx(40.0)
    assert gain["paired_se"] == pytest.approx(torch.tensor([1.0, 0, 0, 0, 1]).std().item() / 5**0.5 * 100)
