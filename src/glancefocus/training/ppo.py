"""Stage II: PPO for the patch proposal network π (appendix A.2, Eq. 4–8), in the order
of one update: roll out with the old policy, score the rewards and returns, then take one
clipped step on Eq. 8 (one update per batch, as the authors' release does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import PPOConfig


def step_rewards(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """r_t = p_t(y) − p_{t−1}(y) for t = 2..T: the gain in true-class probability.

    ``probs`` is (T, B, C); returns (T−1, B).
    """
    true_class = probs.gather(2, targets.view(1, -1, 1).expand(probs.shape[0], -1, 1)).squeeze(2)
    return true_class[1:] - true_class[:-1]


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_t = r_t + γ r_{t+1} + … + γ^{T−t} r_T, over the first (step) dimension."""
    returns = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):  # T is small; each step is vectorised over B
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


@dataclass
class PPOLoss:
    loss: torch.Tensor
    policy: torch.Tensor  # −E[min(ρÂ, clip(ρ)Â)]
    value: torch.Tensor  # E[(V − R)²]
    entropy: torch.Tensor  # E[S]


def ppo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    *,
    clip: float = 0.2,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    advantages: torch.Tensor | None = None,
) -> PPOLoss:
    """Negative of Eq. 8: −E[L^CLIP − c1 (V − R)² + c2 S], with Â = R − V (V not differentiated
    through the advantage) unless ``advantages`` are given.  All inputs share one shape, e.g. (T−1, B)."""
    ratio = torch.exp(log_probs - old_log_probs.detach())
    advantage = returns - values.detach() if advantages is None else advantages
    surrogate = torch.min(ratio * advantage, ratio.clamp(1 - clip, 1 + clip) * advantage).mean()
    value_error = (values - returns).pow(2).mean()
    mean_entropy = entropy.mean()
    loss = -surrogate + value_coef * value_error - entropy_coef * mean_entropy
    return PPOLoss(loss, -surrogate, value_error, mean_entropy)


class PolicyReplay(torch.nn.Module):
    """Re-runs π over the feature maps of a rollout to score its actions under the current
    parameters: the log-probabilities, values and entropies PPO's update needs, (T−1, B)."""

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, maps: list[torch.Tensor], actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        state, log_probs, values, entropies = None, [], [], []
        for feature_map, action in zip(maps, actions):
            mean, value, state = self.policy(feature_map, state)
            log_probs.append(self.policy.log_prob(mean, action))
            values.append(value)
            entropies.append(self.policy.entropy(mean))
        return torch.stack(log_probs), torch.stack(values), torch.stack(entropies)


@dataclass
class Rollout:
    """One batch acted on by π_old: what PPO's update needs, and the accuracy it reached."""

    feature_maps: list[torch.Tensor]  # the maps π read at steps 2..T
    actions: torch.Tensor  # (T−1, B, 2) sampled locations l_t
    log_probs: torch.Tensor  # (T−1, B) under π_old
    rewards: torch.Tensor  # (T−1, B) r_t
    returns: torch.Tensor  # (T−1, B) R_t (normalised per batch if asked)
    accuracy: torch.Tensor  # (T,) % correct after each step
    advantages: torch.Tensor | None = None  # (T−1, B) R_t − R_t(π's mean), scaled alike (baseline="greedy")


def _returns(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, locations: str, gamma: float):
    """One pass of GFNet with ``locations``: its output, probabilities, r_t and R_t."""
    out = model(images, locations=locations, need_aux=False)
    probs = F.softmax(out.logits.float(), dim=2)
    rewards = step_rewards(probs, targets)
    return out, probs, rewards, discounted_returns(rewards, gamma)


@torch.no_grad()
def rollout(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, config: PPOConfig) -> Rollout:
    """Act with the current (old) policy, l_t ~ N(π(s_t), σ²), and observe r_t and R_t (Eq. 4, 6).

    ``baseline="greedy"`` also reads the same images at π's mean locations: Â = R − R(mean)
    compares each sampled action with what π would do on that very image, which removes the
    image's own difficulty from the advantage (self-critical training, Rennie et al. 2017)."""
    out, probs, rewards, returns = _returns(model, images, targets, "sample", config.gamma)
    k = out.locations.shape[0]  # π acts at the patch steps only; their returns count the whole reads after them
    rewards, returns, advantages = rewards[:k], returns[:k], None
    if config.baseline == "greedy":  # the critic is still fitted (Eq. 8's value term), though Â does not read it
        _, _, _, greedy_returns = _returns(model, images, targets, "mean", config.gamma)
        advantages = returns - greedy_returns[:k]
    if config.normalize_returns:
        scale = returns.std() + 1e-5
        advantages = None if advantages is None else advantages / scale
        returns = (returns - returns.mean()) / scale
    accuracy = (probs.argmax(2) == targets).float().mean(1) * 100
    return Rollout(out.policy_inputs, out.locations, out.log_probs, rewards, returns, accuracy, advantages)


def update_loss(replay: torch.nn.Module, batch: Rollout, config: PPOConfig) -> PPOLoss:
    """Eq. 5–8 on ``batch``: ``replay`` (a :class:`PolicyReplay`, maybe DDP-wrapped) re-scores
    the rollout's actions under the current parameters."""
    log_probs, values, entropy = replay(batch.feature_maps, batch.actions)
    return ppo_loss(
        log_probs, batch.log_probs, values.float(), batch.returns, entropy,
        clip=config.clip, value_coef=config.value_coef, entropy_coef=config.entropy_coef, advantages=batch.advantages,
    )
