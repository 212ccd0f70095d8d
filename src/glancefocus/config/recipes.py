"""Named recipes: a model config, a training config and the encoders' initial weights.

- the 14 GFNets of the paper's Table 2 (appendix), named ``<timm backbone>-<patch>-t<T>``:
  224 px images with crop 0.875, except EfficientNet-B2 (260) and B3 (300) with crop 0.904
  (SPEC "Table 2"), trained with the family defaults of appendix A.2–A.3;
- ``default``: what ``glancefocus train`` builds when no recipe is named;
- ``demo``: the whole pipeline on the built-in data in minutes on a CPU;
- ``imagenette-lite0``: the measured reproduction on Imagenette (``python -m scripts.imagenette``);
- ``imagenette-lite0-whole``: the same with a last step that reads the whole image at 224 px
  (``python -m scripts.imagenette escalate``).

:func:`resolve` is the one place that turns a recipe and its overrides into final configs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from collections.abc import Mapping
from typing import Any, Protocol

from .model import GFNetConfig
from .training import TrainConfig
from .weights import Pretrained, Weights


class SizedSource(Protocol):
    """What a recipe reads of a data source: its images' own side, if they have one."""

    native_size: int | None


@dataclass(frozen=True)
class Recipe:
    name: str
    model: GFNetConfig
    train: TrainConfig = TrainConfig()
    pretrained: Pretrained = False
    sized_by_data: bool = False
    description: str = ""


_TABLE2: tuple[tuple[str, int, int], ...] = (
    ("resnet50", 96, 5),
    ("resnet50", 128, 5),
    ("densenet121", 96, 5),
    ("densenet169", 96, 5),
    ("densenet201", 96, 5),
    ("regnety_006", 96, 5),
    ("regnety_008", 96, 5),
    ("regnety_016", 96, 5),
    ("mobilenetv3_large_100", 96, 3),
    ("mobilenetv3_large_100", 128, 3),
    ("mobilenetv3_large_125", 128, 3),
    ("efficientnet_b2", 128, 4),
    ("efficientnet_b3", 128, 4),
    ("efficientnet_b3", 144, 4),
)
_IMAGE_SIZE = {"efficientnet_b2": (260, 0.904), "efficientnet_b3": (300, 0.904)}


def _table2(backbone: str, patch: int, T: int) -> Recipe:
    size, crop = _IMAGE_SIZE.get(backbone, (224, 0.875))
    model = GFNetConfig(backbone=backbone, patch_size=patch, T=T, image_size=size, crop_pct=crop)
    return Recipe(f"{backbone}-{patch}-t{T}", model, description="paper, Table 2")


#: The 14 recipes of Table 2 by name.
TABLE2: dict[str, Recipe] = {r.name: r for r in (_table2(*row) for row in _TABLE2)}

DEMO = Recipe(
    "demo",
    # 48 px patches: the smallest size whose feature map (2x2) still tells π where things are.
    # No dropout or drop-path: the demo's few epochs are tuned without them.
    GFNetConfig(backbone="efficientnet_lite0", patch_size=48, T=3, drop_rate=0.0, drop_path_rate=0.0),
    # Epochs and LRs shortened / raised from appendix A.3 to fit minutes on a CPU, used as
    # given at batch 64 (no scaling); Stage II is cheap (π alone learns) and π was still
    # improving at 5 epochs.  A fixed glance fine-tune and Stage III on π's mean patches.
    # The glance gets 2 epochs: it then finds the digit but reads it on only ~20 % of
    # canvases on every seed and thread count, far from the 3-5 epochs where it learns to
    # read the blob (and where floating-point differences between CPUs decided whether
    # the focus steps had anything left to show).
    # The end-to-end stage (--policy-training differentiable) follows Stage I for 3 epochs.
    TrainConfig(batch_size=64, glance_epochs=2, glance_patience=0, stage1_epochs=5, stage2_epochs=8, stage3_epochs=1,
                glance_lr=0.02, lr_encoder=0.01, lr_classifier=0.1, scale_lr=False, run_stage3=True, stage3_locations="mean",
                end2end_epochs=3),
    pretrained=Weights.LITE0,
    sized_by_data=True,
    description="the whole pipeline on the built-in data in minutes",
)

IMAGENETTE_LITE0 = Recipe(
    "imagenette-lite0",
    GFNetConfig(backbone="tf_efficientnet_lite0", num_classes=10, patch_size=96, T=4, image_size=224),
    # The release's recipe at batch 64 (its rates scaled from 256, dropout, drop-path, Stage
    # III on sampled patches when run); appendix A.3's epochs: Stage I 30, Stage II 15.
    TrainConfig(batch_size=64, stage1_epochs=30, stage2_epochs=15),
    pretrained=Weights.LITE0,
    description="measured reproduction on Imagenette",
)

IMAGENETTE_LITE0_WHOLE = Recipe(
    "imagenette-lite0-whole",
    # Beyond the paper (RANet, DRNet): the recipe's glance and one patch, then the whole image
    # at 224 px for the images they leave unsure; fW is fine-tuned at 224 px by the whole
    # stage, as fG is at 96 px, and frozen after (the family freezes fG).
    GFNetConfig(backbone="tf_efficientnet_lite0", num_classes=10, patch_size=96, T=3, image_size=224,
                reads=("glance", "patch", "whole:224")),
    IMAGENETTE_LITE0.train,
    pretrained=Weights.LITE0,
    description="Imagenette: glance, patch, then the whole image at 224 px",
)

RECIPES: dict[str, Recipe] = {
    **TABLE2,
    "default": Recipe("default", GFNetConfig(), sized_by_data=True, description="ResNet-50, 96 px, T = 5"),
    "demo": DEMO,
    "imagenette-lite0": IMAGENETTE_LITE0,
    "imagenette-lite0-whole": IMAGENETTE_LITE0_WHOLE,
}


@dataclass(frozen=True)
class Resolved:
    """One run's final configs, every default filled (the family's included): what training,
    the demo, the reproduction and :meth:`GFNet.from_recipe` build from."""

    recipe: Recipe
    model: GFNetConfig
    train: TrainConfig
    pretrained: Pretrained


def resolve(recipe: str | Recipe = "default", *, source: SizedSource | None = None, pretrained: Pretrained | None = None,
            model: Mapping[str, Any] = {}, train: Mapping[str, Any] = {}, ppo: Mapping[str, Any] = {}) -> Resolved:
    """A recipe (by name, or a :class:`Recipe` of your own) with overrides (a ``None`` value keeps
    the recipe's), resolved once.

    ``pretrained`` replaces the recipe's weights; package weights given to the ``default``
    recipe pick their own network, and any package weights fix the architecture and input
    normalisation they were trained with (:meth:`Weights.configure`).  A recipe sized by the
    data serves ``source``'s native canvases uncropped unless an image size is given.
    Differentiable policy training defaults to the differentiable crop.
    """
    found = recipe if isinstance(recipe, Recipe) else _lookup(recipe)
    pretrained = found.pretrained if pretrained is None else pretrained
    tc = replace(found.train, **_given(train), ppo=replace(found.train.ppo, **_given(ppo)))
    fields = _given(model)
    if tc.policy_training == "differentiable":
        fields.setdefault("crop", "resample")
    if fields.get("reads") is not None:
        fields.setdefault("T", len(fields["reads"]))  # a plan of reads says how many steps there are
    weights = Weights.parse(pretrained)
    if weights is not None and found.name == "default":
        fields.setdefault("backbone", weights.value.arch)
    if found.sized_by_data and source is not None and source.native_size and "image_size" not in fields:
        fields = {"image_size": source.native_size, "crop_pct": 1.0, **fields}
    config = replace(found.model, **fields)
    config = (weights.configure(config) if weights is not None else config).resolved()
    return Resolved(found, config, tc.for_model(config), pretrained)


def _given(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _lookup(name: str) -> Recipe:
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown recipe {name!r}.{hint} Known recipes: {', '.join(RECIPES)} (glancefocus recipes).")
    return RECIPES[name]
