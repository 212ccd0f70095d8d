"""Patch proposal network π: an actor-critic over patch locations (SPEC, appendix A.1–A.2)."""

from __future__ import annotations

import torch
from torch import nn


class PatchPolicy(nn.Module):
    """Reads the previous step's feature map and its own GRU state; outputs the mean of a
    Gaussian over the next patch location l_t ∈ [0, 1]² (actor) and a state value (critic),
    sharing everything before the last linear layers.  With ``actions=3`` the actor also
    chooses the region's scale fraction σ ∈ [0, 1] (a learned patch scale, beyond the paper).

    Two trunks (``GFNetConfig.policy_trunk``), as in appendix A.1:

    - ``"mlp"`` (ResNet, DenseNet): flatten → Linear 2048 → ReLU → Linear hidden → ReLU → GRU.
    - ``"conv"`` (RegNet, MobileNet-V3, EfficientNet): 1×1 conv to 32 channels → ReLU →
      flatten → Linear hidden → ReLU → GRU.  The release's conv has no bias (``conv_bias=False``).
    """

    def __init__(
        self, map_shape: tuple[int, int, int], *, trunk: str = "conv", hidden: int = 256, std: float = 0.1, conv_bias: bool = True,
        actions: int = 2,
    ):
        super().__init__()
        channels, height, width = map_shape
        if trunk == "mlp":
            self.trunk = nn.Sequential(
                nn.Flatten(),
                nn.Linear(channels * height * width, 2048),
                nn.ReLU(inplace=True),
                nn.Linear(2048, hidden),
                nn.ReLU(inplace=True),
            )
        elif trunk == "conv":
            self.trunk = nn.Sequential(
                nn.Conv2d(channels, 32, kernel_size=1, bias=conv_bias),
                nn.ReLU(inplace=True),
                nn.Flatten(),
                nn.Linear(32 * height * width, hidden),
                nn.ReLU(inplace=True),
            )
        else:
            raise ValueError(f"unknown policy trunk {trunk!r}: use 'mlp' or 'conv'")
        self.gru = nn.GRUCell(hidden, hidden)
        self.actor = nn.Linear(hidden, actions)
        self.critic = nn.Linear(hidden, 1)
        self.std = std

    def forward(
        self, feature_map: torch.Tensor, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (mean action (B, actions), value (B,), new GRU state)."""
        hidden = self.gru(self.trunk(feature_map), state)
        return torch.sigmoid(self.actor(hidden)), self.critic(hidden).squeeze(1), hidden

    def distribution(self, mean: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(mean, self.std)

    def sample(self, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training action l_t ~ N(mean, std²) clipped to [0, 1], and its log-probability
        (of the clipped action, as the authors' release computes it)."""
        action = self.distribution(mean).sample().clamp(0.0, 1.0)
        return action, self.log_prob(mean, action)

    def log_prob(self, mean: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.distribution(mean).log_prob(action).sum(dim=-1)

    def entropy(self, mean: torch.Tensor) -> torch.Tensor:
        return self.distribution(mean).entropy().sum(dim=-1)
