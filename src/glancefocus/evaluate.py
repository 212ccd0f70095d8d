"""Evaluation (SPEC "Evaluation"): anytime accuracy, budgeted batch classification, plots."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .budget import PAPER_QS, budgeted_curve
from .distributed import World, all_gather_cat
from .model import GFNet


def centre_then_corners(T: int, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The fixed policy of the paper's ablation: centre, then the four corners (cycling)."""
    order = [(0.5, 0.5), (0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
    steps = [order[i % len(order)] for i in range(T - 1)]
    return torch.tensor(steps, device=device).view(T - 1, 1, 2).expand(T - 1, batch, 2).contiguous()


@torch.inference_mode()
def collect_probs(
    model: GFNet,
    loader: DataLoader,
    world: World,
    *,
    policy: str = "learned",
    amp: str = "none",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax outputs after every step, (T, N, C), and targets (N,), for all of ``loader``.

    ``policy``: "learned" (π's mean), "random" (uniform) or "fixed" (centre, then corners).
    With several processes each evaluates its shard; the gathered results are put back in
    dataset order, without the samples repeated to even out the shards.
    """
    model.eval()
    device = world.device
    all_probs, all_targets = [], []
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        if policy == "learned":
            where: str | torch.Tensor = "policy"
        elif policy == "random":
            where = torch.rand(model.T - 1, images.shape[0], 2, generator=generator).to(device)
        elif policy == "fixed":
            where = centre_then_corners(model.T, images.shape[0], device)
        else:
            raise ValueError(f"unknown policy {policy!r}: use learned, random or fixed")
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images, locations=where, need_aux=False).logits
        all_probs.append(F.softmax(logits.float(), dim=2))
        all_targets.append(targets.to(device))
    probs = gather_in_order(torch.cat(all_probs, dim=1), loader, world, dim=1)
    return probs, gather_in_order(torch.cat(all_targets), loader, world)


@torch.inference_mode()
def policy_locations(model: GFNet, loader: DataLoader, world: World) -> torch.Tensor:
    """π's test-time (mean) locations l_2..l_T for all of ``loader``, (T−1, N, 2), in dataset order."""
    model.eval()
    found = [model(images.to(world.device), locations="policy", need_aux=False).locations.float() for images, _ in loader]
    return gather_in_order(torch.cat(found, dim=1), loader, world, dim=1)


def location_spread(locations: torch.Tensor) -> list[dict[str, list[float]]]:
    """For each focus step, the mean location (row, col) over images and its standard
    deviation across images: how much π adapts to the image (0 = the same place for all)."""
    return [{"mean": step.mean(0).tolist(), "std": step.std(0).tolist()} for step in locations]


def gather_in_order(values: torch.Tensor, loader: DataLoader, world: World, dim: int = 0) -> torch.Tensor:
    """This process's per-sample ``values`` (along ``dim``) for its shard of ``loader``,
    gathered from every process (on the CPU) and put back in dataset order, without the
    samples repeated to even out the shards."""
    values = all_gather_cat(values, world, dim=dim).cpu()
    if not world.distributed:
        return values
    index = loader.sampler.gathered_indices()
    rows = values.movedim(dim, 0)
    ordered = rows.new_empty(int(index.max()) + 1, *rows.shape[1:])
    ordered[index] = rows  # a repeated sample writes the same values twice
    return ordered.movedim(0, dim)


def anytime_accuracy(probs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Top-1 accuracy (%) of p_t for every step t."""
    return ((probs.argmax(dim=2) == targets.unsqueeze(0)).double().mean(dim=1) * 100).tolist()


def oracle_accuracy(probs: torch.Tensor, targets: torch.Tensor, madds: list[float]) -> dict[str, float]:
    """Each image exits at the first step whose prediction is correct (or the last step):
    the bound no confidence-threshold rule can beat."""
    correct = probs.argmax(dim=2) == targets.unsqueeze(0)  # (T, N)
    stop = correct.clone()
    stop[-1] = True
    steps = stop.long().argmax(dim=0)
    return {
        "accuracy": float(correct.any(dim=0).double().mean() * 100),
        "madds": float(torch.tensor(madds, dtype=torch.float64)[steps].mean()),
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
        "thresholds": [[_finite(v) for v in row] for row in thresholds.tolist()],
        "budgeted": curve,
        "oracle": oracle_accuracy(test_probs, test_targets, madds),
    }


def _finite(v: float) -> float | str:
    # JSON has no infinities: keep them readable and loadable.
    return v if v not in (float("inf"), float("-inf")) else ("inf" if v > 0 else "-inf")


def thresholds_tensor(rows: list[list[float | str]]) -> torch.Tensor:
    return torch.tensor([[float(v) for v in row] for row in rows])


@contextmanager
def _accuracy_plot(path: str | Path, title: str) -> Iterator[Any]:
    """Axes for a top-1 vs multiply-adds plot, labelled and saved to ``path`` on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    yield ax
    ax.set_xlabel("multiply-adds per image (M)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_anytime(
    madds: list[float], by_policy: dict[str, list[float]], oracle: dict[str, float], path: str | Path, *, title: str
) -> None:
    """Anytime accuracy after each step for each patch policy ({name: [acc_1..acc_T]}), and
    the oracle exit as one point."""
    with _accuracy_plot(path, title) as ax:
        x = [m / 1e6 for m in madds]
        for name, accuracy in by_policy.items():
            ax.plot(x, accuracy, "o-", label=f"{name} patches")
        ax.plot([oracle["madds"] / 1e6], [oracle["accuracy"]], "k*", markersize=10, label="oracle exit")


def plot_results(results: dict[str, Any], path: str | Path, *, title: str = "GFNet", extra: dict[str, dict] | None = None) -> None:
    """Accuracy vs multiply-adds: the budgeted curve, the anytime points, and ``extra``
    series ({label: {"madds": [...], "accuracy": [...]}})."""
    with _accuracy_plot(path, title) as ax:
        curve = sorted(results["budgeted"], key=lambda p: p["madds"])
        if curve:
            ax.plot([p["madds"] / 1e6 for p in curve], [p["accuracy"] for p in curve], ".-", label=f"budgeted ({len(curve)} budgets)")
        ax.plot([m / 1e6 for m in results["madds"]], results["anytime_accuracy"], "o--", label="anytime (step t)")
        for label, series in (extra or {}).items():
            ax.plot([m / 1e6 for m in series["madds"]], series["accuracy"], "s:", label=label)
