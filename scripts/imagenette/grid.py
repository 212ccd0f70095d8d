"""Step 2 over a grid of places in the reproduction: the library's ``first_focus_grid`` on
the held-out and val images, the best single place chosen on the held-out ones."""

from __future__ import annotations

from typing import Any

import torch

from glancefocus import GFNet
from glancefocus.data.sources import Splits, make_loader
from glancefocus.evaluation import first_focus_grid, grid_locations
from glancefocus.training.trainer import Run


def location_grid(model: GFNet, splits: Splits, run: Run, batch: int, grid: int = 7) -> dict:
    """Step 2 with its patch at each of ``grid`` × ``grid`` places: what any policy could reach
    there (the best place is chosen on the held-out images, accuracies are on val)."""
    loader = lambda data: make_loader(data, batch_size=batch, world=run.world, train=False)  # noqa: E731
    scales = 3 if model.config.patch_scale == "learned" else None  # the smallest, middle and largest region
    heldout_right = first_focus_grid(model, loader(splits.heldout), run.world, grid=grid, scales=scales).right
    val = first_focus_grid(model, loader(splits.val), run.world, grid=grid, scales=scales)
    return grid_bound(heldout_right, val.glance, val.right, val.confidence, grid, scales)


def grid_bound(heldout_right: torch.Tensor, glance: torch.Tensor, right: torch.Tensor, confidence: torch.Tensor,
               grid: int, scales: int | None = None) -> dict[str, Any]:
    """Step 2's accuracy (%) over the places of :func:`first_focus_grid`: their mean (uniformly
    random places), the best single place (chosen on the held-out images), the place where
    GFNet is most confident, each image's best place (any right: the bound of every policy),
    and that or the glance (the oracle exit within two steps, with every policy)."""
    per_place = right.double().mean(1) * 100
    best = int(heldout_right.double().mean(1).argmax())
    confident = right.gather(0, confidence.argmax(0, keepdim=True))
    return {
        "grid": grid,
        "scales": scales,
        "mean_place": float(per_place.mean()),
        "best_place": {"location": grid_locations(grid, scales)[best].tolist(), "accuracy": float(per_place[best])},
        "most_confident_place": float(confident.double().mean() * 100),
        "best_place_per_image": float(right.any(0).double().mean() * 100),
        "oracle_exit_within_2": float((glance | right.any(0)).double().mean() * 100),
        "accuracy_by_place": per_place.view(grid, grid, *([scales] if scales else [])).tolist(),
    }
