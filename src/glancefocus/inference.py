"""Early-exit inference on image files with PyTorch: thresholds by budget, batching, rows
(the same rows as the ONNX Runtime predictor, :mod:`glancefocus.deploy`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .data import Transform, image_transform
from .evaluate import thresholds_tensor
from .images import load_rgb
from .model import GFNet
from .predictions import choose_budget_point, imagenet_descriptions, predict_in_batches
from .preprocess import EvalTransform


def select_thresholds(meta: dict[str, Any], budget: float | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Thresholds stored in a checkpoint: those of the most accurate budget point whose mean
    MAdds is within ``budget`` (an error below the cheapest point); without a budget, or with
    one above the dearest point, of the most accurate point overall.  Returns (thresholds (T,), the chosen {"q", "madds", "accuracy"})."""
    results = meta.get("results")
    if not results or "thresholds" not in results:
        raise ValueError("this checkpoint has no thresholds: run `glancefocus evaluate --checkpoint CK` first")
    index = choose_budget_point(results["budgeted"], budget)
    return thresholds_tensor(results["thresholds"])[index], results["budgeted"][index]


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
    skip_bad: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """One row per file (label, class, description, probability, exit step, MAdds spent,
    locations; the rows of the ONNX Runtime predictor too) and the files skipped as unreadable."""
    device = next(model.parameters()).device
    t = Transform.of(model.config)
    transform = EvalTransform(t.image_size, t.crop_pct, t.mean, t.std, t.interpolation)

    def run(images):
        out = model.predict(torch.from_numpy(images).to(device), thresholds, amp=amp)
        return out.probs.cpu().numpy(), out.exit_step.cpu().numpy(), out.locations.cpu().numpy()

    return predict_in_batches(files, transform, run, madds=model.madds(), classes=classes,
                              descriptions=imagenet_descriptions(classes), batch_size=batch_size, skip_bad=skip_bad)
