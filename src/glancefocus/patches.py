"""The two inputs GFNet reads: the glance (a resized image) and focus patches (windows)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def glance_resize(
    images: torch.Tensor, size: int, *, interpolation: str = "bicubic", method: str = "antialias"
) -> torch.Tensor:
    """Step 1 input x̃1: the whole image resized to ``size``×``size`` (SPEC "The model").

    ``method="antialias"`` (default) deviates from the authors' release: we anti-alias, as PIL
    does, since plain interpolation aliases badly at 224→96.  ``method="align_corners"`` is the
    release's resize (``align_corners=True``, no anti-aliasing), which its published weights
    were trained and evaluated with.
    """
    if method == "antialias":
        return F.interpolate(images, size=(size, size), mode=interpolation, align_corners=False, antialias=True)
    if method == "align_corners":
        return F.interpolate(images, size=(size, size), mode=interpolation, align_corners=True)
    raise ValueError(f"unknown glance resize method {method!r}: use 'antialias' or 'align_corners'")


def patch_corners(locations: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Integer top-left corners floor(l · (H − P), l · (W − P)) of shape (B, 2), as (row, col).

    The product is taken in float64: in float32, 0.9 · 20 rounds up to 18.0 although the
    float32 value of 0.9 is below 0.9, and the corner would differ from Python's own floor.
    """
    span = torch.tensor([height - patch_size, width - patch_size], device=locations.device, dtype=torch.float64)
    return torch.floor(locations.double().clamp(0, 1) * span).long()


def crop_patches(images: torch.Tensor, locations: torch.Tensor, patch_size: int, *, method: str | None = None) -> torch.Tensor:
    """Crop one ``patch_size``² window per image.

    ``method``: ``"gather"`` (one vectorised gather of the B windows, loop-free: the GPU's
    way), ``"slices"`` (one slice per image, then a stack: 2.6x faster on a CPU at 224→96,
    benchmarks/bench_crop.py), or None for the faster one on ``images``' device.  Both
    give the same values.

    Args:
        images: (B, C, H, W).
        locations: (B, 2) fractions in [0, 1] as (row, col); the window's top-left corner is
            floor(l · (H − P)), so 0 is the top/left edge and 1 the bottom/right edge.
        patch_size: P, at most min(H, W).

    Returns:
        (B, C, P, P), identical to slicing ``images[b, :, r:r+P, c:c+P]`` for every b.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    B, _, H, W = images.shape
    if locations.shape != (B, 2):
        raise ValueError(f"locations must be ({B}, 2) for a batch of {B}, got {tuple(locations.shape)}")
    if patch_size > min(H, W) or patch_size < 1:
        raise ValueError(
            f"patch_size {patch_size} does not fit in images of size {H}x{W}: choose 1 <= patch_size <= {min(H, W)}"
        )
    corners = patch_corners(locations, H, W, patch_size)
    method = method or ("slices" if images.device.type == "cpu" else "gather")
    if method not in ("gather", "slices"):
        raise ValueError(f"unknown crop method {method!r}: use 'gather', 'slices' or None")
    if method == "slices" and B > 0:  # .tolist() would wait for a GPU: a CPU path
        return torch.stack([image[:, r : r + patch_size, c : c + patch_size] for image, (r, c) in zip(images, corners.tolist())])
    # A strided view of every window, then one gather of the B chosen ones: a single copy.
    windows = images.unfold(2, patch_size, 1).unfold(3, patch_size, 1)  # (B, C, H-P+1, W-P+1, P, P)
    return windows[torch.arange(B, device=images.device), :, corners[:, 0], corners[:, 1]]
