"""Encoders fG and fL: any timm CNN, seen as (feature map, pooled vector, linear head).

Also registers ``mobilenetv3_large_125`` with timm: SPEC's MobileNet-V3-Large 1.25 is the
1.00 generator with channel multiplier 1.25 and an unscaled 1280-wide head (torchvision's
``width_mult`` would scale the head too).
"""

from __future__ import annotations

import difflib

import timm
import torch
from timm.models import register_model
from timm.models.mobilenetv3 import _gen_mobilenet_v3
from torch import nn

from ..config.weights import Pretrained, create_backbone


if "mobilenetv3_large_125" not in timm.list_models("mobilenetv3_large_125"):

    @register_model
    def mobilenetv3_large_125(pretrained: bool = False, **kwargs) -> nn.Module:
        """MobileNet-V3-Large with channel multiplier 1.25 and a 1280-wide head (GFNet Table 2)."""
        # timm's large generator keeps num_features=1280 regardless of the multiplier.
        return _gen_mobilenet_v3("mobilenetv3_large_125", 1.25, pretrained=pretrained, **kwargs)


class Encoder(nn.Module):
    """A timm classifier split into the three parts GFNet needs.

    ``forward`` returns the last feature map (read by the patch proposal network π) and the
    pooled pre-logit vector ē (read by the classifier fC); ``head`` is the backbone's own
    linear classifier, used for deep supervision (Stage I loss) and by the cascade fC.

    In training mode ē is dropped out with ``drop_rate``, so fC and the head both read the
    dropped-out vector, as in the authors' release (its encoders return ē after dropout).
    The dropout is ours rather than timm's because timm's MobileNet-V3 applies it only
    before its own classifier.
    """

    def __init__(self, model: nn.Module, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.dropout = nn.Dropout(drop_rate)  # no parameters: checkpoints are unchanged

    @property
    def head(self) -> nn.Module:
        return self.model.get_classifier()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Inputs follow the weights' memory format: a channels_last model fed NCHW views
        # (glances, crops) would convert them in every conv and lose most of its speed-up.
        if next(self.model.parameters()).is_contiguous(memory_format=torch.channels_last) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        feature_map = self.model.forward_features(x)
        return feature_map, self.dropout(self.model.forward_head(feature_map, pre_logits=True))


def check_backbone(name: str) -> None:
    """Raise a ValueError with close matches if timm does not know ``name``."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"Unknown backbone {name!r}: not a timm model.{hint} See timm.list_models().")


def create_encoder(
    name: str, *, num_classes: int, pretrained: Pretrained = False, drop_rate: float = 0.0, drop_path_rate: float = 0.0
) -> Encoder:
    """A timm backbone with a ``num_classes`` head; see :func:`create_backbone` for ``pretrained``.

    ``drop_path_rate`` is timm's stochastic depth (the release's ``drop_connect_rate``),
    passed only when non-zero since not every timm CNN accepts it; ``drop_rate`` is the
    encoder's dropout on ē (timm's own ``drop_rate`` stays 0).
    """
    check_backbone(name)
    extra = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    return Encoder(create_backbone(name, pretrained=pretrained, num_classes=num_classes, **extra), drop_rate)


@torch.no_grad()
def probe_encoder(encoder: Encoder, size: int) -> tuple[tuple[int, int, int], int]:
    """Shape (C, h, w) of the feature map and width F of ē for a ``size``×``size`` input."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    feature_map, pooled = encoder(torch.zeros(1, 3, size, size, device=device))
    encoder.train(was_training)
    return tuple(feature_map.shape[1:]), pooled.shape[1]
