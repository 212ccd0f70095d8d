"""Configuration dataclasses and the per-family defaults of SPEC / appendix A.

A GFNet is described by a :class:`GFNetConfig` (architecture) and trained with a
:class:`TrainConfig` (optimisation).  Both start from the defaults of the backbone's
family (appendix A.1–A.3) and every field can be overridden.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

Family = Literal["resnet", "densenet", "regnet", "mobilenetv3", "efficientnet", "other"]
ClassifierKind = Literal["gru", "cascade"]
PolicyKind = Literal["mlp", "conv"]

# Name prefixes of timm models, in the order they are tested.
_FAMILY_PREFIXES: tuple[tuple[str, Family], ...] = (
    ("resnet", "resnet"),
    ("resnext", "resnet"),
    ("wide_resnet", "resnet"),
    ("densenet", "densenet"),
    ("regnet", "regnet"),
    ("mobilenetv3", "mobilenetv3"),
    ("tf_mobilenetv3", "mobilenetv3"),
    ("efficientnet", "efficientnet"),
    ("tf_efficientnet", "efficientnet"),
)


def family_of(backbone: str) -> Family:
    """The paper's backbone family of a timm model name ("other" for any other CNN)."""
    for prefix, family in _FAMILY_PREFIXES:
        if backbone.startswith(prefix):
            return family
    return "other"


@dataclass(frozen=True)
class FamilyDefaults:
    """What appendix A fixes per backbone family."""

    classifier: ClassifierKind  # fC: GRU (ResNet/DenseNet/RegNet) or cascade of linears
    policy: PolicyKind  # π: flatten+MLP (ResNet/DenseNet) or 1x1 conv to 32 ch (others)
    interpolation: str  # glance resize: bicubic or bilinear (SPEC "The model")
    aux_weight: float  # λ of the deep-supervision loss
    encoder_lr: float
    weight_decay: float
    stage1_epochs: int
    freeze_glance: bool  # fG fixed after the low-resolution fine-tune
    stage3: bool  # appendix A.3 skips Stage III for EfficientNet


# Widths follow the kind, whichever family asks for it (SPEC "The model"): a GRU fC has
# 1024 hidden units (0: the cascade has none); π's GRU has 1024 after the MLP trunk, 256
# after the light conv trunk.
CLASSIFIER_HIDDEN: dict[ClassifierKind, int] = {"gru": 1024, "cascade": 0}
POLICY_HIDDEN: dict[PolicyKind, int] = {"mlp": 1024, "conv": 256}

FAMILY_DEFAULTS: dict[Family, FamilyDefaults] = {
    "resnet": FamilyDefaults("gru", "mlp", "bicubic", 1.0, 0.01, 1e-4, 60, False, True),
    "densenet": FamilyDefaults("gru", "mlp", "bilinear", 1.0, 0.01, 1e-4, 60, False, True),
    "regnet": FamilyDefaults("gru", "conv", "bilinear", 1.0, 0.02, 5e-5, 60, False, True),
    "mobilenetv3": FamilyDefaults("cascade", "conv", "bicubic", 5.0, 0.005, 1e-4, 90, True, True),
    "efficientnet": FamilyDefaults("cascade", "conv", "bicubic", 5.0, 0.005, 1e-4, 30, True, False),
    # Any other timm CNN: the RegNet recipe (GRU fC, light conv π) is the cheapest generic choice.
    "other": FamilyDefaults("gru", "conv", "bicubic", 1.0, 0.01, 1e-4, 60, False, True),
}


@dataclass(frozen=True)
class GFNetConfig:
    """Architecture of a GFNet (SPEC "The model").

    ``None`` fields are filled from the backbone family's defaults by :meth:`resolved`.
    """

    backbone: str = "resnet50"
    num_classes: int = 1000
    patch_size: int = 96  # H' = W'
    T: int = 5  # maximum number of steps (glance + T-1 focus)
    image_size: int = 224  # full image side H = W
    crop_pct: float = 0.875  # evaluation: resize to image_size / crop_pct, centre crop
    classifier: ClassifierKind | None = None
    classifier_hidden: int | None = None
    policy: PolicyKind | None = None
    policy_hidden: int | None = None
    policy_std: float = 0.1  # Gaussian std of the location action (appendix A.3)
    interpolation: str | None = None
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # input normalisation of the weights
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.T < 1:
            raise ValueError(f"T must be >= 1 (got {self.T}); T=1 is the glance step alone.")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (got {self.num_classes}).")
        if self.patch_size < 8:
            raise ValueError(f"patch_size must be >= 8 pixels (got {self.patch_size}).")
        if self.patch_size >= self.image_size:
            raise ValueError(
                f"patch_size ({self.patch_size}) must be smaller than image_size ({self.image_size}): "
                "a focus patch is a window of the full image. Lower --patch-size or raise --image-size."
            )

    @property
    def family(self) -> Family:
        return family_of(self.backbone)

    def resolved(self) -> GFNetConfig:
        """A copy with every ``None`` field set from the family defaults."""
        d = FAMILY_DEFAULTS[self.family]
        classifier = self.classifier or d.classifier
        policy = self.policy or d.policy
        fill = {
            "classifier": classifier,
            "classifier_hidden": CLASSIFIER_HIDDEN[classifier],
            "policy": policy,
            "policy_hidden": POLICY_HIDDEN[policy],
            "interpolation": d.interpolation,
        }
        return dataclasses.replace(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PPOConfig:
    """Stage II hyper-parameters (appendix A.2)."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    gamma: float = 0.7
    clip: float = 0.2  # ε
    value_coef: float = 0.5  # c1
    entropy_coef: float = 0.01  # c2
    epochs: int = 15
    normalize_returns: bool = True  # as the authors' release; the paper is silent


@dataclass
class TrainConfig:
    """Optimisation of the glance fine-tune and Stages I–III (appendix A.3).

    ``None`` fields come from the family defaults (:meth:`for_model`).
    """

    batch_size: int = 256
    momentum: float = 0.9
    lr_classifier: float = 0.1
    lr_classifier_stage3: float = 0.01
    lr_encoder: float | None = None
    weight_decay: float | None = None
    aux_weight: float | None = None
    freeze_glance: bool | None = None
    stage1_epochs: int | None = None
    stage3_epochs: int | None = None
    run_stage3: bool | None = None
    glance_epochs: int = 5
    glance_lr: float | None = None
    ppo: PPOConfig = field(default_factory=PPOConfig)
    holdout: float = 0.1  # fraction of training images kept out for model selection and thresholds
    skip_bad_images: bool = False  # drop unreadable / too small images up front instead of failing
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = True  # oneDNN convs: a CPU Stage I step 1.9x faster (benchmarks/bench_memory_format.py)
    compile: bool = False
    workers: int = 2
    seed: int = 0
    checkpoint_every: int = 0  # also checkpoint every N optimiser steps (0: each epoch only)
    max_steps_per_epoch: int = 0  # cap batches per epoch (0: no cap), for quick runs

    def for_model(self, model_config: GFNetConfig) -> TrainConfig:
        d = FAMILY_DEFAULTS[model_config.family]
        fill = {
            "lr_encoder": d.encoder_lr,
            "weight_decay": d.weight_decay,
            "aux_weight": d.aux_weight,
            "freeze_glance": d.freeze_glance,
            "stage1_epochs": d.stage1_epochs,
            "stage3_epochs": d.stage1_epochs,
            "run_stage3": d.stage3,
            "glance_lr": d.encoder_lr,
        }
        return dataclasses.replace(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
