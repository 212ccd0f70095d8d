"""Every figure: accuracy against multiply-adds (budgeted curve, anytime points, patch
policies) and where the model looks (:func:`visualize`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config.reads import Read
from ..models.gfnet import GFNet
from ..models.patches import patch_corners, region_boxes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def _accuracy_plot(path: str | Path, title: str) -> Iterator[Any]:
    """Axes for a top-1 vs multiply-adds plot, labelled and saved to ``path`` on exit."""
    plt = _pyplot()
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


def _draw_patches(ax, boxes: list[list[float]], sized: bool, current: bool = True) -> None:
    """The regions read so far on one panel, each (top, left, side) in pixels: the newest
    solid red if this step read it (``current``), earlier ones dashed; with ``sized`` (a
    learned scale) each labelled with its side."""
    import matplotlib.patches as mpatches

    for s, (r, c, side) in enumerate(boxes, start=2):
        newest = current and s == len(boxes) + 1
        ax.add_patch(mpatches.Rectangle(
            (c - 0.5, r - 0.5), side, side, fill=False, edgecolor="red" if newest else "orange",
            linewidth=2 if newest else 1, linestyle="-" if newest else "--",
        ))
        ax.text(c + 1, r + 1, f"{s}: {side:.0f} px" if sized else str(s), color="yellow", fontsize=8, va="top", ha="left",
                weight="bold")


def region_pixels(model: GFNet, locations: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(…, 3) (top, left, side) in pixels of the regions ``model`` reads at ``locations``:
    the integer window of the paper's crop, or the resampled region."""
    cfg = model.config
    if cfg.crop == "window":
        corners = patch_corners(locations.reshape(-1, 2), height, width, cfg.patch_size).to(locations.dtype)
        sides = corners.new_full((len(corners), 1), float(cfg.patch_size))
        return torch.cat([corners, sides], dim=1).view(*locations.shape[:-1], 3)
    return region_boxes(locations, height, width, cfg.patch_size, cfg.scale_range)


def _heading(step: int, exit_step: int | None, read: Read | None = None) -> tuple[str, bool]:
    """A panel's title for ``step`` (1..T) reading ``read``, and whether it comes after the image's exit."""
    if read is not None and read.kind == "whole":
        heading = f"whole image, {read.size} px"
    else:
        heading = "glance" if step == 1 else f"focus {step - 1}"
    if exit_step is not None and step > exit_step:
        return heading + " (after exit)", True
    return heading + (" (exit)" if step == exit_step else ""), False


@torch.inference_mode()
def visualize(
    model: GFNet,
    images: torch.Tensor,
    out: str | Path,
    *,
    classes: list[str],
    titles: list[str] | None = None,
    exit_steps: torch.Tensor | None = None,
    top: int = 3,
) -> None:
    """Save a PNG with one row per image and one column per step.

    Column 1 shows the whole image (the glance); column t ≥ 2 shows the patch read at step
    t as a solid box, earlier patches dashed (a whole-image read: the whole image, its
    size in the title, with the patches read before it dashed).  Under each panel: the ``top`` classes of p_t.
    Steps after an image's exit step (``exit_steps``, numbered 1..T, if given) are greyed out.
    """
    plt = _pyplot()
    model.eval()
    cfg = model.config
    result = model(images, locations="mean", need_aux=False)
    probs = F.softmax(result.logits.float(), dim=2).cpu()  # (T, B, C)
    top_p, top_k = probs.topk(min(top, probs.shape[2]), dim=2)
    H, W = images.shape[2:]
    boxes = region_pixels(model, result.locations.float(), H, W).cpu().tolist()
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    shown = (images.cpu().float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    B, T = images.shape[0], model.T
    exits = [None] * B if exit_steps is None else exit_steps.tolist()
    fig, axes = plt.subplots(B, T, figsize=(2.6 * T, 3.1 * B), squeeze=False)
    for b in range(B):
        for t in range(T):
            ax = axes[b, t]
            ax.imshow(shown[b])
            ax.set_xticks([])
            ax.set_yticks([])
            _draw_patches(ax, [boxes[s][b] for s in range(min(t, cfg.patch_steps))], sized=cfg.patch_scale == "learned",
                          current=t <= cfg.patch_steps)
            names = [classes[j] if classes else j for j in top_k[t, b].tolist()]
            ax.set_xlabel("\n".join(f"{n}: {v:.2f}" for n, v in zip(names, top_p[t, b].tolist())), fontsize=7)
            heading, after = _heading(t + 1, exits[b], cfg.plan[t])
            if after:
                ax.images[0].set_alpha(0.35)
            ax.set_title(heading, fontsize=8)
        if titles:
            axes[b, 0].set_ylabel(titles[b], fontsize=7)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
