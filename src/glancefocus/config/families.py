"""What appendix A fixes per backbone family, as a keyword-built table: the paper's families
by timm name prefix, and the ImageNet normalisation most weights expect."""

from __future__ import annotations

from dataclasses import dataclass

from .choices import ClassifierKind, Family, PolicyTrunk

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
    policy_trunk: PolicyTrunk  # π: flatten+MLP (ResNet/DenseNet) or 1x1 conv to 32 ch (others)
    interpolation: str  # glance resize: bicubic or bilinear (SPEC "The model")
    resize_interpolation: str  # full-image resize and crop of the data (the release's dataset_interpolation)
    drop_rate: float  # dropout on the pooled ē_t (the release's drop_rate)
    drop_path_rate: float  # stochastic depth in the encoders (the release's drop_connect_rate)
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
POLICY_HIDDEN: dict[PolicyTrunk, int] = {"mlp": 1024, "conv": 256}

# Dropout and drop-path as the release builds its encoders: only its timm-made MobileNet-V3
# (0.2 / 0.2) and EfficientNets (0.3 / 0.2) have them; its ResNets, DenseNets and RegNets none.
# Data resize: bicubic for EfficientNet, bilinear for the others (the release's configs.py).
_GRU_FAMILY = {"classifier": "gru", "aux_weight": 1.0, "freeze_glance": False, "stage3": True, "stage1_epochs": 60,
               "resize_interpolation": "bilinear", "drop_rate": 0.0, "drop_path_rate": 0.0}
_LIGHT_FAMILY = {"classifier": "cascade", "policy_trunk": "conv", "interpolation": "bicubic", "aux_weight": 5.0,
                 "encoder_lr": 0.005, "weight_decay": 1e-4, "freeze_glance": True, "drop_path_rate": 0.2}
FAMILY_DEFAULTS: dict[Family, FamilyDefaults] = {
    "resnet": FamilyDefaults(**_GRU_FAMILY, policy_trunk="mlp", interpolation="bicubic", encoder_lr=0.01, weight_decay=1e-4),
    "densenet": FamilyDefaults(**_GRU_FAMILY, policy_trunk="mlp", interpolation="bilinear", encoder_lr=0.01, weight_decay=1e-4),
    "regnet": FamilyDefaults(**_GRU_FAMILY, policy_trunk="conv", interpolation="bilinear", encoder_lr=0.02, weight_decay=5e-5),
    "mobilenetv3": FamilyDefaults(**_LIGHT_FAMILY, stage1_epochs=90, stage3=True, resize_interpolation="bilinear", drop_rate=0.2),
    "efficientnet": FamilyDefaults(**_LIGHT_FAMILY, stage1_epochs=30, stage3=False, resize_interpolation="bicubic", drop_rate=0.3),
    # Any other timm CNN: the RegNet recipe (GRU fC, light conv π) is the cheapest generic choice.
    "other": FamilyDefaults(**{**_GRU_FAMILY, "resize_interpolation": "bicubic"}, policy_trunk="conv", interpolation="bicubic",
                            encoder_lr=0.01, weight_decay=1e-4),
}

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
