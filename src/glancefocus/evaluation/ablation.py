"""What a trained GFNet is reported with, by the demo and the reproduction alike: the
paper's patch ablation (learned against random and centre-then-corners patches), where the
learned policy looks, and the figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..distributed import World
from .evaluate import anytime_accuracy, collect_probs, location_spread, policy_locations
from ..models.gfnet import GFNet
from .plots import plot_anytime, visualize


def compare_patches(model: GFNet, loader: DataLoader, world: World, learned: list[float]) -> dict[str, list[float]]:
    """Anytime accuracy with the ``learned`` patches, uniformly random ones and the fixed
    centre-then-corners ones (the paper's ablation); random draws are seeded, so repeatable."""
    by_patches = {"learned": learned}
    for patches in ("random", "fixed"):
        probs, targets = collect_probs(model, loader, world, patches=patches, generator=torch.Generator().manual_seed(0))
        by_patches[patches] = anytime_accuracy(probs, targets)
    return by_patches


def policy_report(model: GFNet, loader: DataLoader, world: World, results: dict[str, Any]) -> dict[str, Any]:
    """The patch ablation and where π looks (per focus step: mean location and its spread)."""
    return {
        "anytime_accuracy_by_policy": compare_patches(model, loader, world, results["anytime_accuracy"]),
        "policy_locations": location_spread(policy_locations(model, loader, world)),
    }


def write_figures(
    out: Path, model: GFNet, results: dict[str, Any], by_patches: dict[str, list[float]], examples: tuple[torch.Tensor, list[str]],
    *, classes: list[str], thresholds: torch.Tensor, title: str,
) -> None:
    """``anytime.png`` (accuracy per step by patch policy, and the oracle exit) and
    ``patches.png`` (where the model looks on ``examples``, with each exit step)."""
    plot_anytime(results["madds"], by_patches, results["oracle"], out / "anytime.png", title=title)
    images, titles = examples
    exits = model.predict(images, thresholds).exit_step
    visualize(model, images, out / "patches.png", classes=classes, exit_steps=exits, titles=titles)


def examples(dataset: Dataset, indices: list[int], classes: list[str], device: torch.device) -> tuple[torch.Tensor, list[str]]:
    """Images ``indices`` of ``dataset`` as one batch on ``device``, titled with their true class."""
    items = [dataset[i] for i in indices]
    return torch.stack([image for image, _ in items]).to(device), [f"true: {classes[label]}" for _, label in items]
