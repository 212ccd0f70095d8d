"""A tiny random GFNet for the serving tests (engine and HTTP server), exported in seconds."""

from __future__ import annotations

import torch

from glancefocus import GFNet, GFNetConfig

T, SIZE, PATCH, CLASSES, POOL = 3, 64, 32, 5, 16
POINTS = [{"q": 1.0, "madds": 1.0, "accuracy": 50.0, "thresholds": [0.5, 0.5, "-inf"]}]


#: An unequal plan: the glance, a patch, then the whole image at 48 px (resized in the graph).
UNEQUAL = ("glance", "patch", "whole:48")


def tiny_gfnet(reads: tuple[str, ...] | None = None) -> GFNet:
    """A random cascade-fC GFNet whose confidences spread out (sharpened heads); ``reads``
    gives it another plan of T steps."""
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(backbone="mobilenetv3_small_050", num_classes=CLASSES, patch_size=PATCH, T=T,
                              image_size=SIZE, reads=reads)).eval()
    with torch.no_grad():
        for p in model.classifier.parameters():
            p.mul_(20)
        model.global_encoder.head.weight.mul_(20)
    return model
