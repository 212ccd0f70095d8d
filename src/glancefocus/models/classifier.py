"""Recurrent classifier fC (SPEC "The model", appendix A.1).

Both variants take one pooled feature vector ē_t per step and a state, and return the
logits of p_t and the new state.  States are batch-first so early exit can drop rows.
"""

from __future__ import annotations

import torch
from torch import nn


class GRUClassifier(nn.Module):
    """fC for ResNet, DenseNet and RegNet: a GRU over ē_1..ē_t, then a linear layer."""

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 1024, T: int | None = None) -> None:
        super().__init__()
        self.cell = nn.GRUCell(in_features, hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(
        self, features: torch.Tensor, state: torch.Tensor | None, head_logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.cell(features, state)
        return self.fc(hidden), hidden


class CascadeClassifier(nn.Module):
    """fC for MobileNet-V3 and EfficientNet: at step t a linear layer of size tF×C on
    concat(ē_1..ē_t).  Step 1 uses the global encoder's own (pretrained) head instead,
    so only T−1 layers live here.  The state is the concatenation so far, (B, tF).
    """

    def __init__(self, in_features: int, num_classes: int, *, T: int, hidden: int | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(t * in_features, num_classes) for t in range(2, T + 1))

    def forward(
        self, features: torch.Tensor, state: torch.Tensor | None, head_logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if state is None:
            if head_logits is None:
                raise ValueError("the cascade classifier's first step needs the glance encoder's head logits")
            return head_logits, features
        state = torch.cat([state, features], dim=1)
        step = state.shape[1] // features.shape[1]
        return self.layers[step - 2](state), state


#: fC by the name ``GFNetConfig.classifier`` gives it.
CLASSIFIERS: dict[str, type[nn.Module]] = {"gru": GRUClassifier, "cascade": CascadeClassifier}
