"""Where the model looks: the glance, then each focus patch drawn on the image in order,
with the top class probabilities after every step."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .model import GFNet
from .patches import patch_corners


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
    t as a solid box, earlier patches dashed.  Under each panel: the ``top`` classes of p_t.
    Steps after an image's exit step (if ``exit_steps`` is given) are greyed out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as mpatches
    import matplotlib.pyplot as plt

    model.eval()
    cfg = model.config
    result = model(images, locations="policy", need_aux=False)
    probs = F.softmax(result.logits.float(), dim=2).cpu()  # (T, B, C)
    H, W = images.shape[2:]
    corners = [patch_corners(loc, H, W, cfg.patch_size).cpu() for loc in result.locations]
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    shown = (images.cpu().float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()

    B, T = images.shape[0], model.T
    fig, axes = plt.subplots(B, T, figsize=(2.6 * T, 3.1 * B), squeeze=False)
    for b in range(B):
        for t in range(T):
            ax = axes[b, t]
            ax.imshow(shown[b])
            ax.set_xticks([])
            ax.set_yticks([])
            for s in range(1, t + 1):
                r, c = corners[s - 1][b].tolist()
                ax.add_patch(mpatches.Rectangle(
                    (c - 0.5, r - 0.5), cfg.patch_size, cfg.patch_size, fill=False,
                    edgecolor="red" if s == t else "orange", linewidth=2 if s == t else 1,
                    linestyle="-" if s == t else "--",
                ))
                ax.text(c + 1, r + 1, str(s + 1), color="yellow", fontsize=8, va="top", ha="left", weight="bold")
            p, k = probs[t, b].topk(min(top, probs.shape[2]))
            lines = "\n".join(f"{classes[j] if classes else j}: {v:.2f}" for v, j in zip(p.tolist(), k.tolist()))
            ax.set_xlabel(lines, fontsize=7)
            heading = "glance" if t == 0 else f"focus {t}"
            if exit_steps is not None and t > int(exit_steps[b]):
                ax.images[0].set_alpha(0.35)
                heading += " (after exit)"
            elif exit_steps is not None and t == int(exit_steps[b]):
                heading += " (exit)"
            ax.set_title(heading, fontsize=8)
        if titles:
            axes[b, 0].set_ylabel(titles[b], fontsize=7)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
