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
    python -m benchmarks.bench_crop), or None for the faster one on ``images``' device.  Both
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


def region_sides(regions: torch.Tensor, patch_size: int, scale_range: tuple[int, int] | None) -> torch.Tensor:
    """Side s (pixels of the full image) of each focus region, (B,), float.

    ``regions`` is (B, 2) (row, col): s = P; or (B, 3) (row, col, σ) with σ ∈ [0, 1] the
    scale fraction of a learned patch scale: s = lo + σ·(hi − lo) for ``scale_range`` (lo, hi).
    """
    if regions.shape[-1] == 2:
        return regions.new_full(regions.shape[:-1], float(patch_size))
    if scale_range is None:
        raise ValueError("regions with a scale column (B, 3) need a scale_range (lo, hi)")
    lo, hi = scale_range
    return lo + regions[..., 2].clamp(0, 1) * (hi - lo)


def region_boxes(
    regions: torch.Tensor, height: int, width: int, patch_size: int, scale_range: tuple[int, int] | None = None
) -> torch.Tensor:
    """(top, left, side) of each region in continuous pixels, (B, 3): the corner is
    l · (H − s, W − s), so the region always lies inside the image."""
    side = region_sides(regions, patch_size, scale_range)
    top = regions[..., 0].clamp(0, 1) * (height - side)
    left = regions[..., 1].clamp(0, 1) * (width - side)
    return torch.stack([top, left, side], dim=-1)


def resample_patches(
    images: torch.Tensor, regions: torch.Tensor, patch_size: int, *, scale_range: tuple[int, int] | None = None
) -> torch.Tensor:
    """The differentiable crop: each image's square region (:func:`region_boxes`) resampled to
    P×P by bilinear interpolation, one batched ``grid_sample`` (as AdaFocusV2 and Uni-AdaFocus
    do with ``affine_grid``).  Gradients reach ``regions`` (location and scale) through the sampling grid.

    Output pixel i samples the region at its own centre (``align_corners=False``), so with
    s = P and an integer corner the patch equals :func:`crop_patches`' window.  Out-of-image
    samples (only when zooming in, s < P, at the border) repeat the edge pixel
    (``padding_mode="border"``), where the Uni-AdaFocus release pads with zeros: a
    zero (after normalisation: mean-coloured) frame would be a feature no real image has.
    The multiply-adds of the encoder that reads the patch do not depend on s.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    B, C, H, W = images.shape
    if regions.shape not in ((B, 2), (B, 3)):
        raise ValueError(f"regions must be ({B}, 2) or ({B}, 3) for a batch of {B}, got {tuple(regions.shape)}")
    if scale_range is not None and max(scale_range) > min(H, W):
        raise ValueError(f"scale_range {scale_range} does not fit in images of size {H}x{W}: keep its largest side <= {min(H, W)}")
    top, left, side = region_boxes(regions.float(), H, W, patch_size, scale_range).unbind(-1)
    # The sampling grid in normalised [-1, 1] coordinates, built separably (what affine_grid
    # computes, but exportable to ONNX's GridSample): output pixel i of P sits at
    # (2i + 1) / P - 1 of the region, scaled by s / W and moved to the region's centre.
    unit = (2 * torch.arange(patch_size, device=images.device, dtype=torch.float32) + 1) / patch_size - 1  # (P,)
    xs = (side / W)[:, None] * unit + ((2 * left + side) / W - 1)[:, None]  # (B, P): columns
    ys = (side / H)[:, None] * unit + ((2 * top + side) / H - 1)[:, None]  # (B, P): rows
    grid = torch.stack([xs[:, None, :].expand(B, patch_size, patch_size), ys[:, :, None].expand(B, patch_size, patch_size)], dim=-1)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False)
