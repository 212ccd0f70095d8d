"""The plain cascade of static models: the baseline a user can build without GFNet.

Static classifiers (images -> logits), cheapest first, each reading the image at its own
resolution; an image stops at the first whose confidence reaches that stage's threshold.
RANet (CVPR 2020) and DRNet (NeurIPS 2021) show that such escalation to more pixels is
where early exit pays on photos; a GFNet with whole-image reads (``GFNetConfig.reads``)
must beat this cascade to earn its recurrent classifier and focus patches.  It is measured
with exactly GFNet's discipline: per-stage probabilities stacked as a GFNet's steps are,
thresholds set on held-out images for the 39 budgets, the oracle exit, all by
:func:`~glancefocus.evaluation.evaluate.evaluate_results`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..distributed import World, autocast, gather_in_order
from .evaluate import evaluate_results


@torch.inference_mode()
def cascade_probs(classifiers: Sequence[nn.Module], loader: DataLoader, world: World, *,
                  amp: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax outputs of every stage, (K, N, C), and targets (N,), for all of ``loader``:
    what :func:`~glancefocus.evaluation.evaluate.collect_probs` gives for a GFNet's steps."""
    for classifier in classifiers:
        classifier.eval()
    all_probs, all_targets = [], []
    for images, targets in loader:
        images = images.to(world.device, non_blocking=True)
        with autocast(amp, world.device):
            logits = [classifier(images).float() for classifier in classifiers]
        all_probs.append(F.softmax(torch.stack(logits), dim=2))
        all_targets.append(targets.to(world.device))
    probs = gather_in_order(torch.cat(all_probs, dim=1), loader, world, dim=1)
    return probs, gather_in_order(torch.cat(all_targets), loader, world)


def evaluate_cascade(classifiers: Sequence[nn.Module], madds: Sequence[float], heldout: DataLoader, val: DataLoader,
                     world: World, *, amp: str = "none") -> dict[str, Any]:
    """Anytime accuracy of each stage, thresholds on ``heldout``, the 39-point budgeted curve
    and the oracle exit on ``val`` of the cascade of ``classifiers``; ``madds`` is each stage's
    own cost for one image (an image that reaches stage k has paid for stages 1..k)."""
    if len(classifiers) != len(madds) or not classifiers:
        raise ValueError(f"a cascade needs one MAdds count per stage: {len(classifiers)} stages, {len(madds)} counts")
    heldout_probs, _ = cascade_probs(classifiers, heldout, world, amp=amp)
    probs, targets = cascade_probs(classifiers, val, world, amp=amp)
    cumulative = torch.tensor([float(m) for m in madds], dtype=torch.float64).cumsum(0).tolist()
    return {"num_val": int(targets.numel()), "num_heldout": int(heldout_probs.shape[1]),
            **evaluate_results(heldout_probs, probs, targets, cumulative)}
