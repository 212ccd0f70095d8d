"""Early-exit inference on image files: thresholds by budget, batching, results as rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .data import Transform, image_transform, load_rgb
from .evaluate import thresholds_tensor
from .model import GFNet

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def select_thresholds(meta: dict[str, Any], budget: float | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Thresholds stored in a checkpoint: those of the most accurate budget point whose mean
    MAdds is within ``budget`` (the cheapest point if none is); without a budget, of the most
    accurate point overall.  Returns (thresholds (T,), the chosen {"q", "madds", "accuracy"})."""
    results = meta.get("results")
    if not results or "thresholds" not in results:
        raise ValueError("this checkpoint has no thresholds: run `glancefocus evaluate --checkpoint CK` first")
    points = results["budgeted"]
    if budget is None:
        index = max(range(len(points)), key=lambda i: points[i]["accuracy"])
    else:
        within = [i for i, p in enumerate(points) if p["madds"] <= budget]
        index = max(within, key=lambda i: points[i]["accuracy"]) if within else min(range(len(points)), key=lambda i: points[i]["madds"])
    return thresholds_tensor(results["thresholds"])[index], points[index]


def image_files(paths: list[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the named folders."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    if not files:
        raise ValueError(f"no images found in {', '.join(map(str, paths))}")
    return files


def load_images(files: list[Path], model: GFNet) -> torch.Tensor:
    """Files → a normalised batch at the model's evaluation size (as `evaluate` sees them)."""
    transform = image_transform(Transform.of(model.config), train=False)
    return torch.stack([transform(load_rgb(str(f))) for f in files])


def predict_files(
    model: GFNet,
    files: list[Path],
    thresholds: torch.Tensor,
    classes: list[str],
    *,
    batch_size: int = 64,
    amp: torch.dtype | None = None,
) -> list[dict[str, Any]]:
    """One row per file: label, class name, probability, exit step, MAdds spent, locations."""
    device = next(model.parameters()).device
    madds = torch.tensor(model.madds())
    rows = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        images = load_images(chunk, model).to(device)
        out = model.predict(images, thresholds, amp=amp)
        labels, steps = out.labels.tolist(), out.exit_step.tolist()  # one host copy per batch
        confidence, locations = out.probs.max(dim=1).values.tolist(), out.locations.transpose(0, 1).tolist()
        for i, f in enumerate(chunk):
            rows.append({
                "file": str(f),
                "label": labels[i],
                "class": classes[labels[i]] if classes else str(labels[i]),
                "probability": confidence[i],
                "exit_step": steps[i],
                "madds": float(madds[steps[i] - 1]),
                "locations": locations[i][: steps[i] - 1],
            })
    return rows
