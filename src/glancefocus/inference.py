"""Early-exit inference on image files with PyTorch: thresholds by budget, batching, rows
(the same rows as the ONNX Runtime predictor, :mod:`glancefocus.runtime.deploy`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .evaluation.evaluate import thresholds_tensor
from .models.gfnet import GFNet
from .models.outputs import StepState
from .runtime.images import load_rgb
from .runtime.predictions import choose_budget_point, predict_in_batches
from .runtime.preprocess import Transform


def select_thresholds(meta: dict[str, Any], budget: float | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Thresholds stored in a checkpoint: those of the most accurate budget point whose mean
    MAdds is within ``budget`` (an error below the cheapest point); without a budget, or with
    one above the dearest point, of the most accurate point overall.  Returns (thresholds (T,), the chosen {"q", "madds", "accuracy"})."""
    results = meta.get("results")
    if not results or "thresholds" not in results:
        raise ValueError("this checkpoint has no thresholds: run `glancefocus evaluate --checkpoint CK` first")
    index = choose_budget_point(results["budgeted"], budget)
    return thresholds_tensor(results["thresholds"])[index], results["budgeted"][index]


def imagenet_descriptions(classes: Sequence[str]) -> list[str] | None:
    """Human-readable names when every class is an ImageNet wnid (Imagenette, Imagewoof,
    ImageNet), from the synset descriptions timm ships; None otherwise."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    known = set(info.label_names())
    if not classes or not all(c in known for c in classes):
        return None
    return [info.label_name_to_description(c) for c in classes]


def load_images(files: list[Path], model: GFNet) -> torch.Tensor:
    """Files → a normalised batch at the model's evaluation size (as `evaluate` sees them)."""
    transform = Transform.of(model.config)
    return torch.stack([torch.from_numpy(transform(load_rgb(str(f)))) for f in files])


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
    transform = Transform.of(model.config)

    def run(images):
        out = model.predict(torch.from_numpy(images).to(device), thresholds, amp=amp)
        return out.probs.cpu().numpy(), out.exit_step.cpu().numpy(), out.locations.cpu().numpy()

    return predict_in_batches(files, transform, run, madds=model.madds(), classes=classes,
                              descriptions=imagenet_descriptions(classes), batch_size=batch_size, skip_bad=skip_bad)


class TorchSteps:
    """A :class:`GFNet`'s steps as the serving engine (:mod:`glancefocus.runtime.engine`) runs
    them: images and state stay on the model's device (CUDA serving batches the same way);
    probabilities and locations come back as numpy."""

    def __init__(self, model: GFNet, *, amp: torch.dtype | None = None) -> None:
        self.model, self.amp = model.eval(), amp
        self.T, self.num_classes, self.action_dims = model.T, model.config.num_classes, model.config.action_dims
        self.patch_steps = model.config.patch_steps
        self.device = next(model.parameters()).device

    def put(self, images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images).to(self.device)

    @torch.inference_mode()
    def step(self, t: int, images: torch.Tensor, state: list) -> tuple[np.ndarray, np.ndarray | None, list]:
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            out, after = self.model.step(images, t, StepState(*state) if t else None)
        probs = F.softmax(out.logits.float(), dim=1).cpu().numpy()  # as GFNet.predict computes them
        location = None if out.location is None else out.location.float().cpu().numpy()
        return probs, location, [after.feature_map, after.classifier, after.policy]

    @staticmethod
    def take(x: torch.Tensor | None, index: np.ndarray) -> torch.Tensor | None:
        return None if x is None else x[torch.from_numpy(index).to(x.device)]

    @staticmethod
    def cat(xs: list) -> torch.Tensor | None:
        return None if xs[0] is None else torch.cat(xs)
