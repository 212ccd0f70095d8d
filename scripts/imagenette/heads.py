"""The encoders' own ImageNet heads in the reproduction: a 10-way head started from the
pretrained 1000-way one, and each step's encoder head on its input alone (how good fG's
glance and fL's single patches are, apart from fC)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glancefocus import GFNet
from glancefocus.config.weights import create_backbone
from glancefocus.distributed import World, gather_in_order
from glancefocus.evaluation import anytime_accuracy

BACKBONE = "tf_efficientnet_lite0"


@torch.no_grad()
def restrict_head(model: torch.nn.Module, indices: list[int]) -> None:
    """Replace a 1000-way ImageNet head by the rows of ``indices``, so a subset of ImageNet
    classes starts from the pretrained classifier instead of a random one."""
    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1000:
        raise ValueError(f"restrict_head needs a 1000-way linear ImageNet head, got {head}")
    weight, bias = head.weight[indices].clone(), head.bias[indices].clone()
    model.reset_classifier(len(indices))
    new = model.get_classifier()
    new.weight.copy_(weight)
    new.bias.copy_(bias)


def pretrained_head(model: torch.nn.Module, rows: list[int]) -> None:
    """Start a 10-way head from the matching rows of the pretrained 1000-way ImageNet head."""
    reference = create_backbone(BACKBONE, pretrained="lite0")
    restrict_head(reference, rows)
    model.get_classifier().load_state_dict(reference.get_classifier().state_dict())


@torch.inference_mode()
def encoder_probs(model: GFNet, loader, world: World, *, patches: str, generator: torch.Generator | None = None):
    """Softmax of each step's encoder head on its input alone (step 1: fG's on the glance, step
    t: fL's on patch t), (T, N, C), and the targets (N,), in dataset order; the patches where
    π's mean puts them ("learned") or uniformly random ("random", drawn from ``generator`` as
    ``collect_probs`` draws them)."""
    if patches not in ("learned", "random"):
        raise ValueError(f"unknown patches {patches!r}: use learned or random")
    model.eval()
    found, targets = [], []
    for images, y in loader:
        images = images.to(world.device, non_blocking=True)
        where = ("mean" if patches == "learned" else
                 torch.rand(model.T - 1, len(images), model.config.action_dims, generator=generator).to(world.device))
        found.append(F.softmax(model(images, locations=where, need_aux=True).aux_logits.float(), dim=2))
        targets.append(y.to(world.device))
    return gather_in_order(torch.cat(found, dim=1), loader, world, dim=1), gather_in_order(torch.cat(targets), loader, world)


def encoder_heads(model: GFNet, loader, world: World) -> dict[str, list[float]]:
    """Val accuracy of each step's encoder head on its input alone, on π's patches and on
    uniformly random ones (seeded)."""
    return {patches: anytime_accuracy(*encoder_probs(model, loader, world, patches=patches, generator=torch.Generator().manual_seed(0)))
            for patches in ("learned", "random")}
