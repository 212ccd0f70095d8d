"""The ONNX-exportable steps of a GFNet: the glance, one focus step and, for plans with
whole-image reads, one whole step per read size.

Each wraps :class:`~glancefocus.models.gfnet.GFNet` modules and computes what :meth:`GFNet.step`
computes at test time (π's mean location), with the recurrent state as explicit tensors, so
that a runtime can drop exited images from the batch between steps as :meth:`GFNet.predict`
does.  Two things change form for the graph, not in value:

- our anti-aliased glance resize is an ONNX ``Resize`` with ``antialias=1`` (PyTorch's
  exporter has no antialiased interpolation); ONNX Runtime's filter equals PyTorch's to
  about 2e-5 (the release's ``align_corners`` resize exports as it is);
- the cascade fC's step-t linear layer (t·F × C) is an input of the focus (and whole) graph,
  fed by the runtime, so one graph serves every step.  Selecting the layer inside the graph (a
  ``Gather`` from the stacked layers) copied it on every call and made ONNX Runtime's focus
  step of MobileNet-V3-Large 1.8 ms (about half) slower at batch 1; a constant or fed weight
  costs 0.17 ms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.gfnet import GFNet
from ..models.patches import glance_resize, patch_corners


class _AntialiasedResize(torch.autograd.Function):
    """:func:`glance_resize` in PyTorch, ONNX ``Resize(antialias=1)`` in the exported graph.

    ``exclude_outside=1`` renormalises the filter at the borders and ``cubic_coeff_a=-0.5`` is
    the antialiasing cubic of PIL and PyTorch (not the -0.75 of plain bicubic upsampling).
    """

    @staticmethod
    def forward(ctx, images: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
        return glance_resize(images, size, interpolation=interpolation)

    @staticmethod
    def symbolic(g, images, size: int, interpolation: str):
        roi = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        scales = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        sizes = g.op("Constant", value_t=torch.tensor([size, size], dtype=torch.int64))
        return g.op(
            "Resize", images, roi, scales, sizes, axes_i=[2, 3], antialias_i=1, exclude_outside_i=1,
            cubic_coeff_a_f=-0.5, mode_s="cubic" if interpolation == "bicubic" else "linear",
            coordinate_transformation_mode_s="half_pixel",
        )


def gather_patches(images: torch.Tensor, locations: torch.Tensor, patch_size: int, image_size: int) -> torch.Tensor:
    """:func:`~glancefocus.models.patches.crop_patches` as two ``GatherElements`` (rows, then
    columns): exportable with a dynamic batch, and the same pixels."""
    corners = patch_corners(locations, image_size, image_size, patch_size)  # (B, 2) int64
    offsets = torch.arange(patch_size, device=images.device)
    rows = (corners[:, :1] + offsets)[:, None, :, None].expand(-1, images.shape[1], -1, image_size)
    cols = (corners[:, 1:] + offsets)[:, None, None, :].expand(-1, images.shape[1], patch_size, -1)
    return images.gather(2, rows).gather(3, cols)


class GlanceStep(nn.Module):
    """images (B, 3, H, W) → probs p_1, feature map, fC state, π state (zeros)."""

    def __init__(self, model: GFNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m, cfg = self.model, self.model.config
        feature_map, pooled = m.global_encoder(_resized(m, images, cfg.patch_size))
        head = m.global_encoder.head(pooled) if cfg.glance_head else None
        logits, classifier_state = m.classifier(pooled, None, head)
        if cfg.glance_head:  # as GFNet.step: step 1 answers with fG's own head
            logits = head
        policy_state = pooled.new_zeros(pooled.shape[0], m.policy.gru.hidden_size)  # a GRU's None state
        return F.softmax(logits, dim=1), feature_map, classifier_state, policy_state


class FocusStep(nn.Module):
    """(images, feature map, fC state, π state[, cascade weight (t·F, C), bias (C,)]) →
    probs p_t, location l_t, and the next feature map and states."""

    def __init__(self, model: GFNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, feature_map, classifier_state, policy_state, *cascade_layer) -> tuple[torch.Tensor, ...]:
        m, cfg = self.model, self.model.config
        location, _, policy_state = m.policy(feature_map, policy_state)
        # the window crop as gathers; the resampling crop exports as it is (ONNX GridSample)
        patch = gather_patches(images, location, cfg.patch_size, cfg.image_size) if cfg.crop == "window" else m.view(images, location)
        feature_map, pooled = m.local_encoder(patch)
        logits, classifier_state = _classify(m, pooled, classifier_state, cascade_layer)
        return F.softmax(logits, dim=1), location, feature_map, classifier_state, policy_state


class WholeStep(nn.Module):
    """A whole-image read at ``size`` px: (images, feature map, fC state, π state[, cascade
    weight, bias]) → probs p_t and the states, the map and π's state passed on as they came
    (no patch step follows a whole read, so nothing reads fW's map)."""

    def __init__(self, model: GFNet, size: int) -> None:
        super().__init__()
        self.model, self.size = model, size

    def forward(self, images, feature_map, classifier_state, policy_state, *cascade_layer) -> tuple[torch.Tensor, ...]:
        m = self.model
        _, pooled = m.whole_encoder(_resized(m, images, self.size))
        logits, classifier_state = _classify(m, pooled, classifier_state, cascade_layer)
        return F.softmax(logits, dim=1), feature_map.clone(), classifier_state, policy_state.clone()


def _resized(m: GFNet, images: torch.Tensor, size: int) -> torch.Tensor:
    """:meth:`GFNet.view` of the whole image at ``size``, with the antialiased resize as ONNX's."""
    if size == m.config.image_size or m.config.glance_resize != "antialias":
        return m.view(images, size=size)
    return _AntialiasedResize.apply(images, size, m.config.interpolation)


def _classify(m: GFNet, pooled: torch.Tensor, classifier_state: torch.Tensor, cascade_layer: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """fC on a focus or whole step's ē_t; a cascade's layer comes as graph inputs."""
    if not cascade_layer:
        return m.classifier(pooled, classifier_state)
    weight, bias = cascade_layer
    classifier_state = torch.cat([classifier_state, pooled], dim=1)
    return classifier_state @ weight + bias, classifier_state


def cascade_layers(model: GFNet) -> dict[str, torch.Tensor]:
    """The cascade fC's layers as the focus and whole graphs take them: ``step{t}_weight``
    (t·F, C) and ``step{t}_bias`` for the 0-based steps t = 1..T-1; empty for a GRU fC."""
    if model.config.classifier != "cascade":
        return {}
    layers = {}
    for t, layer in enumerate(model.classifier.layers, start=1):
        layers[f"step{t}_weight"] = layer.weight.detach().t().contiguous()
        layers[f"step{t}_bias"] = layer.bias.detach()
    return layers
