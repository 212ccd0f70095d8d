"""Evaluation (SPEC "Evaluation"): anytime accuracy, the oracle exit and budgeted batch
classification of a model or of a checkpoint on its data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..models.budget import PAPER_QS, budgeted_curve, threshold_json
from ..models.checkpoint import update_meta
from ..runtime.files import atomic_write_text
from ..config import DataConfig, Patches
from ..data.sources import load_data, loader_workers, make_loader
from ..distributed import World, autocast, gather_in_order
from ..models.gfnet import GFNet

#: How the focus patches are chosen: π's mean (the model), or the paper's two ablations.
PATCHES: tuple[str, ...] = get_args(Patches)


def centre_then_corners(T: int, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The fixed patches of the paper's ablation: centre, then the four corners (cycling)."""
    order = [(0.5, 0.5), (0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
    steps = [order[i % len(order)] for i in range(T - 1)]
    return torch.tensor(steps, device=device).view(T - 1, 1, 2).expand(T - 1, batch, 2).contiguous()


def with_scale(locations: torch.Tensor, model: GFNet, sigma: float = 0.0) -> torch.Tensor:
    """(…, 2) locations as ``model``'s regions: with a learned patch scale, scale fraction
    ``sigma`` appended (0: the smallest region, the patch size by default)."""
    if model.config.action_dims == 2:
        return locations
    return torch.cat([locations, locations.new_full((*locations.shape[:-1], 1), sigma)], dim=-1)


def _locations(patches: str, model: GFNet, batch: int, device: torch.device, generator: torch.Generator | None):
    if patches == "learned":
        return "mean"
    if patches == "random":  # location and, if learned, scale uniformly random
        return torch.rand(model.T - 1, batch, model.config.action_dims, generator=generator).to(device)
    if patches == "fixed":
        return with_scale(centre_then_corners(model.T, batch, device), model)
    raise ValueError(f"unknown patches {patches!r}: use one of {', '.join(PATCHES)}")


@torch.inference_mode()
def collect_probs(
    model: GFNet,
    loader: DataLoader,
    world: World,
    *,
    patches: str = "learned",
    amp: str = "none",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax outputs after every step, (T, N, C), and targets (N,), for all of ``loader``.

    ``patches``: "learned" (π's mean), "random" (uniform) or "fixed" (centre, then corners).
    With several processes each evaluates its shard; the gathered results are put back in
    dataset order, without the samples repeated to even out the shards.
    """
    model.eval()
    device = world.device
    all_probs, all_targets = [], []
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        where = _locations(patches, model, images.shape[0], device, generator)
        with autocast(amp, device):
            out = model(images, locations=where, need_aux=False)
        all_probs.append(F.softmax(out.logits.float(), dim=2))
        all_targets.append(targets.to(device))
    probs = gather_in_order(torch.cat(all_probs, dim=1), loader, world, dim=1)
    return probs, gather_in_order(torch.cat(all_targets), loader, world)


@torch.inference_mode()
def policy_locations(model: GFNet, loader: DataLoader, world: World) -> torch.Tensor:
    """π's test-time (mean) locations l_2..l_T for all of ``loader``, (T−1, N, 2), in dataset order."""
    model.eval()
    found = [model(images.to(world.device), locations="mean", need_aux=False).locations.float() for images, _ in loader]
    return gather_in_order(torch.cat(found, dim=1), loader, world, dim=1)


def location_spread(locations: torch.Tensor) -> list[dict[str, list[float]]]:
    """For each focus step, the mean location (row, col) over images and its standard
    deviation across images: how much π adapts to the image (0 = the same place for all)."""
    return [{"mean": step.mean(0).tolist(), "std": step.std(0).tolist()} for step in locations]


def grid_locations(size: int, scales: int | None = None) -> torch.Tensor:
    """``size`` × ``size`` focus locations evenly over [0, 1]² (corners included), (size², 2),
    row-major; with ``scales``, each at that many scale fractions evenly over [0, 1] (the
    regions of a learned patch scale), (size² · scales, 3)."""
    axis = torch.linspace(0, 1, size)
    if scales is None:
        return torch.cartesian_prod(axis, axis)
    return torch.cartesian_prod(axis, axis, torch.linspace(0, 1, scales))


class FocusGrid(NamedTuple):
    """Step 2 with its patch at each place of a grid, per image (see :func:`first_focus_grid`)."""

    glance: torch.Tensor  # (N,) whether the glance's answer is right
    right: torch.Tensor  # (places, N) whether step 2's answer is right
    confidence: torch.Tensor  # (places, N) step 2's top probability
    true_prob: torch.Tensor  # (places, N) step 2's probability of the true class: π's reward there


@torch.inference_mode()
def first_focus_grid(model: GFNet, loader: DataLoader, world: World, *, grid: int = 7, scales: int | None = None) -> FocusGrid:
    """What any patch policy could reach at step 2: GFNet's answer after the glance, and after
    the first focus step with its patch at each of :func:`grid_locations` ``(grid, scales)``
    (``scales`` for a learned patch scale only), per image in dataset order.

    From it: the best single place for all images (``right.float().mean(1).argmax()``), the
    place where GFNet is most confident (a policy that could afford to try every place), and
    each image's own best place (``right.any(0)``: an oracle that reads the label, the bound
    of every policy at step 2).
    """
    model.eval()
    if (scales is not None) != (model.config.action_dims == 3):
        raise ValueError("give scales (a number of scale fractions) for a model with a learned patch scale, and only then")
    places = grid_locations(grid, scales).to(world.device)
    glance, right, confidence, true_prob = [], [], [], []
    for images, targets in loader:
        images, targets = images.to(world.device, non_blocking=True), targets.to(world.device)
        out, state = model.step(images, 0, None)
        glance.append(out.logits.argmax(1) == targets)
        # one batched step per place: the loop is over places, never over images
        probs = torch.stack([model.step(images, 1, state, locations=where.expand(len(images), -1))[0].logits.float().softmax(1)
                             for where in places])
        top, label = probs.max(2)
        right.append(label == targets)
        confidence.append(top)
        true_prob.append(probs.gather(2, targets.view(1, -1, 1).expand(len(places), -1, 1)).squeeze(2))
    per_place = (gather_in_order(torch.cat(found, dim=1), loader, world, dim=1) for found in (right, confidence, true_prob))
    return FocusGrid(gather_in_order(torch.cat(glance), loader, world), *per_place)


def anytime_accuracy(probs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Top-1 accuracy (%) of p_t for every step t."""
    return ((probs.argmax(dim=2) == targets.unsqueeze(0)).double().mean(dim=1) * 100).tolist()


def oracle_accuracy(probs: torch.Tensor, targets: torch.Tensor, madds: list[float]) -> dict[str, float]:
    """Each image exits at the first step whose prediction is correct (or the last step):
    the bound no confidence-threshold rule can beat.  ``by_step[t - 1]``: its accuracy when
    the model may run at most t steps."""
    correct = probs.argmax(dim=2) == targets.unsqueeze(0)  # (T, N)
    stop = correct.clone()
    stop[-1] = True
    steps = stop.long().argmax(dim=0)
    return {
        "accuracy": float(correct.any(dim=0).double().mean() * 100),
        "madds": float(torch.tensor(madds, dtype=torch.float64)[steps].mean()),
        "by_step": (correct.cummax(dim=0).values.double().mean(dim=1) * 100).tolist(),
    }


def evaluate_results(
    heldout_probs: torch.Tensor, test_probs: torch.Tensor, test_targets: torch.Tensor, madds: list[float]
) -> dict[str, Any]:
    """The results a checkpoint carries: MAdds, anytime accuracy, 39 thresholds, budgeted
    curve, and the oracle exit that bounds the curve."""
    thresholds, curve = budgeted_curve(heldout_probs, test_probs, test_targets, madds, PAPER_QS)
    return {
        "madds": madds,
        "anytime_accuracy": anytime_accuracy(test_probs, test_targets),
        "thresholds": [[threshold_json(v) for v in row] for row in thresholds.tolist()],
        "budgeted": curve,
        "oracle": oracle_accuracy(test_probs, test_targets, madds),
    }


def thresholds_tensor(rows: list[list[float | str]]) -> torch.Tensor:
    return torch.tensor([[float(v) for v in row] for row in rows])


def evaluate_model(model: GFNet, heldout: DataLoader, val: DataLoader, world: World, *, patches: str = "learned",
                   amp: str = "none") -> dict[str, Any]:
    """What :func:`evaluate_checkpoint` measures, for a model in memory and loaders of your own:
    anytime accuracy, MAdds, thresholds set on ``heldout`` (images the model was not trained
    on), the 39-point budgeted curve and the oracle exit on ``val``."""
    heldout_probs, _ = collect_probs(model, heldout, world, patches=patches, amp=amp)
    probs, targets = collect_probs(model, val, world, patches=patches, amp=amp)
    return {"num_val": int(targets.numel()), "num_heldout": int(heldout_probs.shape[1]),
            **evaluate_results(heldout_probs, probs, targets, model.madds())}


def evaluate_checkpoint(
    checkpoint: Path,
    *,
    world: World,
    root: str | None = None,
    skip_bad_images: bool = False,
    workers: int | None = None,
    batch_size: int = 256,
    patches: str = "learned",
    amp: str = "none",
    channels_last: bool = True,
    json_out: Path | None = None,
    plot: Path | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Anytime accuracy, MAdds, thresholds (held-out training images) and the 39-point
    budgeted curve (val images) of a checkpoint; stored into its metadata and ``json_out``.

    ``root`` defaults to the data the checkpoint was trained on.  The held-out split is drawn
    as in training (same fraction, seed and skipped images), so thresholds never see an image
    the model was trained on.
    """
    from .plots import plot_results

    model, meta = GFNet.from_checkpoint(checkpoint, device=world.device, channels_last=channels_last)
    data = trained_data(meta, root=root, skip_bad_images=skip_bad_images, workers=workers)
    splits = load_data(data, model.config, seed=meta.get("train_config", {}).get("seed", 0))
    workers = loader_workers(data, world.device)
    loader = lambda d: make_loader(d, batch_size=batch_size, world=world, train=False, workers=workers)  # noqa: E731
    results = {"patches": patches, **evaluate_model(model, loader(splits.heldout), loader(splits.val), world, patches=patches, amp=amp)}
    if world.is_main:
        if save and patches == "learned":
            update_meta(checkpoint, results=results, madds=results["madds"])
        if json_out is not None:
            atomic_write_text(json_out, json.dumps(results, indent=2))
        if plot is not None:
            plot_results(results, plot, title=f"GFNet {model.config.backbone} P={model.config.patch_size} T={model.T}")
    return results


def trained_data(meta: dict[str, Any], *, root: str | None = None, skip_bad_images: bool = False,
                 workers: int | None = None) -> DataConfig:
    """The data a checkpoint was trained on, or ``root`` split the same way (unreadable
    images are skipped if asked now or if training skipped them)."""
    saved = meta.get("data_config") or meta.get("train_config", {})  # older checkpoints: train_config
    return DataConfig(root=root or meta.get("data") or "builtin", holdout=saved.get("holdout", 0.1),
                      skip_bad_images=skip_bad_images or saved.get("skip_bad_images", False), workers=workers)
