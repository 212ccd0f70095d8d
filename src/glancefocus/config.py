"""Configuration: one frozen dataclass per concern, changed with :func:`dataclasses.replace`.

- :class:`GFNetConfig`: the architecture (SPEC "The model");
- :class:`TrainConfig`: optimisation of the glance fine-tune and Stages I–III (appendix A.3),
  with :class:`PPOConfig` for Stage II (appendix A.2);
- :class:`DataConfig`: where the images come from and how the training set is split.

``None`` fields are filled from the backbone family's defaults (appendix A.1–A.3, the
:data:`FAMILY_DEFAULTS` table) by :meth:`GFNetConfig.resolved` and :meth:`TrainConfig.for_model`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Literal

Family = Literal["resnet", "densenet", "regnet", "mobilenetv3", "efficientnet", "other"]
ClassifierKind = Literal["gru", "cascade"]
PolicyTrunk = Literal["mlp", "conv"]
GlanceResize = Literal["antialias", "align_corners"]
Amp = Literal["none", "bf16", "fp16"]
Stage3Locations = Literal["sample", "mean"]
Stage2Images = Literal["augmented", "plain"]
PPOBaseline = Literal["critic", "greedy"]
PatchScale = Literal["fixed", "learned"]
Crop = Literal["window", "resample"]
PolicyTraining = Literal["ppo", "differentiable"]
Patches = Literal["learned", "random", "fixed"]  # where evaluation reads: π's places, uniform ones, centre-then-corners

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


@functools.cache
def _choices(cls: type) -> dict[str, tuple]:
    """The allowed values of each ``Literal`` field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) for f in dataclasses.fields(cls) if typing.get_origin(hints[f.name]) is Literal}


def _check_choices(config) -> None:
    """A clear error for a misspelt option (Python callers bypass the CLI's choices)."""
    for name, allowed in _choices(type(config)).items():
        if (value := getattr(config, name)) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))} (got {value!r})")


def _fill(config, defaults: dict):
    """``config`` with each of its ``None`` fields named in ``defaults`` set from there."""
    return dataclasses.replace(config, **{k: v for k, v in defaults.items() if getattr(config, k) is None})


@dataclass(frozen=True)
class GFNetConfig:
    """Architecture of a GFNet (SPEC "The model").

    ``None`` fields are filled from the backbone family's defaults by :meth:`resolved`.
    ``glance_resize``, ``glance_head`` and ``policy_conv_bias`` default to our choices;
    :mod:`glancefocus.release` sets them to the authors' release's so that its published
    checkpoints compute what they computed.  Dropout and drop-path act in training only.
    """

    backbone: str = "resnet50"
    num_classes: int = 1000
    patch_size: int = 96  # H' = W'
    T: int = 5  # maximum number of steps (glance + T-1 focus)
    image_size: int = 224  # full image side H = W
    crop_pct: float = 0.875  # evaluation: resize to image_size / crop_pct, centre crop
    classifier: ClassifierKind | None = None
    classifier_hidden: int | None = None
    policy_trunk: PolicyTrunk | None = None
    policy_hidden: int | None = None
    policy_std: float = 0.1  # Gaussian std of the location action (appendix A.3)
    interpolation: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN  # input normalisation of the weights
    std: tuple[float, float, float] = IMAGENET_STD
    # Glance x̃1: anti-aliased resize (ours), or the release's align_corners=True without it.
    glance_resize: GlanceResize = "antialias"
    # Step 1's logits from fG's own head instead of fC (the cascade always does; the
    # release's RegNets do too, while still feeding ē1 to the GRU).
    glance_head: bool | None = None
    policy_conv_bias: bool = True  # π's 1x1 conv has a bias (the release's has none)
    resize_interpolation: str | None = field(
        default=None, metadata={"help": "full-image resize of the data transforms (default: the family's, as the release)"})
    drop_rate: float | None = field(
        default=None, metadata={"help": "dropout on each encoder's pooled features, in training (default: the family's)"})
    drop_path_rate: float | None = field(
        default=None, metadata={"help": "stochastic depth (drop-connect) in both encoders (default: the family's)"})
    # Beyond the paper (AdaFocusV2 / Uni-AdaFocus): a focus step reads a square region of side
    # s, resampled to P×P, at the same multiply-adds whatever s is.
    patch_scale: PatchScale = field(default="fixed", metadata={
        "help": "focus region side: fixed (s = patch size, the paper) or learned by π per image and step within --scale-range"})
    scale_range: tuple[int, int] | None = field(default=None, metadata={
        "help": "smallest and largest region side in pixels of the full image for a learned scale (default: patch size, image size)"})
    crop: Crop | None = field(default=None, metadata={
        "help": "how a region becomes the patch: window (integer corner, the paper's crop) or resample (bilinear, differentiable; "
                "default: resample with a learned scale, window otherwise)"})

    def __post_init__(self) -> None:
        _check_choices(self)
        if self.T < 1:
            raise ValueError(f"T must be >= 1 (got {self.T}); T=1 is the glance step alone.")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (got {self.num_classes}).")
        if self.patch_size < 8:
            raise ValueError(f"patch_size must be >= 8 pixels (got {self.patch_size}).")
        for name in ("drop_rate", "drop_path_rate"):
            if (rate := getattr(self, name)) is not None and not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1) (got {rate})")
        if self.patch_size >= self.image_size:
            raise ValueError(
                f"patch_size ({self.patch_size}) must be smaller than image_size ({self.image_size}): "
                "a focus patch is a window of the full image. Lower --patch-size or raise --image-size."
            )
        if self.patch_scale == "learned" and self.crop == "window":
            raise ValueError("a learned patch scale resamples its region: use crop='resample' (--crop resample) or leave crop unset")
        if self.scale_range is not None:
            lo, hi = self.scale_range
            if not 1 <= lo <= hi <= self.image_size:
                raise ValueError(f"scale_range {tuple(self.scale_range)} must satisfy 1 <= lo <= hi <= image_size ({self.image_size})")

    @property
    def family(self) -> Family:
        return family_of(self.backbone)

    def resolved(self) -> GFNetConfig:
        """A copy with every ``None`` field set from the family defaults."""
        d = FAMILY_DEFAULTS[self.family]
        classifier = self.classifier or d.classifier
        trunk = self.policy_trunk or d.policy_trunk
        if classifier == "cascade" and self.glance_head is False:
            raise ValueError("the cascade classifier's step 1 is fG's own head: glance_head must be True (or None)")
        return _fill(self, {
            "glance_head": classifier == "cascade",
            "classifier": classifier,
            "classifier_hidden": CLASSIFIER_HIDDEN[classifier],
            "policy_trunk": trunk,
            "policy_hidden": POLICY_HIDDEN[trunk],
            "interpolation": d.interpolation,
            "resize_interpolation": d.resize_interpolation,
            "drop_rate": d.drop_rate,
            "drop_path_rate": d.drop_path_rate,
            "crop": "resample" if self.patch_scale == "learned" else "window",
            "scale_range": (self.patch_size, self.image_size) if self.patch_scale == "learned" else None,
        })

    @property
    def action_dims(self) -> int:
        """Numbers π chooses per focus step: (row, col), plus the scale fraction σ if learned."""
        return 3 if self.patch_scale == "learned" else 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> GFNetConfig:
        """The config a checkpoint stored.  Older checkpoints say ``policy`` for the trunk, and
        lack the fields added since: they get what the code that wrote them did (a bicubic
        data resize, no dropout), not today's family defaults."""
        saved = {**_LEGACY, **saved}
        if "policy" in saved:
            saved["policy_trunk"] = saved.pop("policy")
        saved["mean"], saved["std"] = tuple(saved.get("mean", IMAGENET_MEAN)), tuple(saved.get("std", IMAGENET_STD))
        if saved.get("scale_range") is not None:
            saved["scale_range"] = tuple(saved["scale_range"])
        return cls(**saved)


# What checkpoints written before these fields existed were trained and evaluated with.
_LEGACY = {"resize_interpolation": "bicubic", "drop_rate": 0.0, "drop_path_rate": 0.0}


@dataclass(frozen=True)
class PPOConfig:
    """Stage II hyper-parameters (appendix A.2)."""

    lr: float = field(default=3e-4, metadata={"help": "Adam LR of π in Stage II (appendix A.2's 3e-4; not scaled with the batch)"})
    betas: tuple[float, float] = (0.9, 0.999)
    gamma: float = 0.7
    clip: float = 0.2  # ε
    value_coef: float = 0.5  # c1
    entropy_coef: float = 0.01  # c2
    normalize_returns: bool = True  # as the authors' release; the paper is silent
    baseline: PPOBaseline = field(default="critic", metadata={
        "help": "PPO's advantage baseline: the critic V(s_t) (Eq. 7), or the return of π's mean (greedy) locations on "
                "the same image (self-critical; beyond the paper)"})

    def __post_init__(self) -> None:
        _check_choices(self)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of the glance fine-tune and Stages I–III (appendix A.2–A.3).

    ``None`` fields come from the family defaults (:meth:`for_model`).  The defaults follow
    the authors' release where the paper is silent: SGD rates scaled with the batch from
    256, Stage III on sampled locations; the glance fine-tune (appendix B.1, which gives no
    epoch count) runs until its held-out accuracy stops improving.
    """

    batch_size: int = field(default=256, metadata={"help": "global batch size"})
    momentum: float = 0.9
    lr_classifier: float = field(default=0.1, metadata={"help": "Stage I LR of fC (at lr_reference_batch)"})
    lr_classifier_stage3: float = field(default=0.01, metadata={"help": "Stage III LR of fC (at lr_reference_batch)"})
    lr_encoder: float | None = field(default=None, metadata={"help": "LR of fG and fL (default: the family's, at lr_reference_batch)"})
    scale_lr: bool = field(default=True, metadata={
        "help": "scale the SGD learning rates linearly by batch_size / lr_reference_batch (appendix A.3's rates are for 256)"})
    lr_reference_batch: int = field(default=256, metadata={"help": "the batch size the SGD learning rates are given for"})
    weight_decay: float | None = None
    aux_weight: float | None = field(default=None, metadata={"help": "λ of the deep-supervision loss"})
    freeze_glance: bool | None = None
    glance_epochs: int = field(default=30, metadata={"help": "most epochs of the glance fine-tune (see glance_patience)"})
    glance_patience: int = field(default=2, metadata={
        "help": "stop the glance fine-tune after this many epochs without a better held-out accuracy and keep the best "
                "epoch (0: run glance_epochs, keep the last)"})
    stage1_epochs: int | None = None
    stage2_epochs: int = 15
    stage3_epochs: int | None = None
    run_stage3: bool | None = None
    stage3_locations: Stage3Locations = field(default="sample", metadata={
        "help": "Stage III patches: sampled from N(π's mean, std²) clipped to [0, 1], as the release, or π's mean"})
    glance_lr: float | None = field(default=None, metadata={"help": "LR of the low-resolution fine-tune of fG (at lr_reference_batch)"})
    stage2_images: Stage2Images = field(default="augmented", metadata={
        "help": "Stage II images: the training augmentation, as the release, or the training images as evaluation serves "
                "them (resize and centre crop), the view π acts on at test time (beyond the paper; the built-in set has "
                "no augmentation to leave out)"})
    ppo: PPOConfig = field(default_factory=PPOConfig)
    policy_training: PolicyTraining = field(default="ppo", metadata={
        "help": "how π learns: ppo (the paper: Stage I random patches, Stage II PPO, Stage III) or differentiable (beyond the "
                "paper, after AdaFocusV2: Stage I, then one end-to-end stage in which π's regions get gradients from the "
                "classification loss through the resampling crop; needs --crop resample)"})
    end2end_epochs: int = field(default=5, metadata={"help": "epochs of the end-to-end stage, after Stage I"})
    lr_policy: float = field(default=0.001, metadata={"help": "end-to-end stage: SGD LR of π (at lr_reference_batch)"})
    end2end_random: float = field(default=0.5, metadata={
        "help": "end-to-end stage: fraction of each batch's images that read uniformly random regions instead of π's "
                "(AdaFocusV2's diversity augmentation: fL and fC keep learning from every place)"})
    amp: Amp = field(default="none", metadata={"help": "mixed precision"})
    channels_last: bool = True  # oneDNN convs: a CPU Stage I step 1.9x faster (benchmarks/bench_memory_format.py)
    compile: bool = field(default=False, metadata={"help": "torch.compile the encoders"})
    seed: int = 0
    checkpoint_every: int = field(default=0, metadata={"help": "also checkpoint every N optimiser steps"})
    keep_epochs: tuple[int, ...] = ()  # also keep the weights after these epochs, as <stage>.epoch<N>.safetensors
    distill_weight: float = field(default=0.0, metadata={
        "help": "Stages I/III: weight of a distillation loss from a teacher's soft targets (beyond the paper; 0: none)"})
    distill_temperature: float = field(default=1.0, metadata={"help": "softmax temperature of the distillation loss"})
    max_steps_per_epoch: int = field(default=0, metadata={"help": "cap batches per epoch (0: no cap), for quick runs"})

    def __post_init__(self) -> None:
        if self.lr_reference_batch < 1 or self.batch_size < 1:
            raise ValueError(f"batch_size and lr_reference_batch must be >= 1 (got {self.batch_size}, {self.lr_reference_batch})")
        if self.glance_patience < 0:
            raise ValueError(f"glance_patience must be >= 0 (got {self.glance_patience})")
        if not 0.0 <= self.end2end_random <= 1.0:
            raise ValueError(f"end2end_random must be in [0, 1] (got {self.end2end_random})")
        _check_choices(self)

    @property
    def lr_scale(self) -> float:
        """The factor of every SGD learning rate: the linear scaling rule from the batch of
        appendix A.3 (256) to ``batch_size``, or 1 without ``scale_lr``.  PPO's Adam rate
        is not scaled."""
        return self.batch_size / self.lr_reference_batch if self.scale_lr else 1.0

    def for_model(self, model_config: GFNetConfig) -> TrainConfig:
        d = FAMILY_DEFAULTS[model_config.family]
        return _fill(self, {
            "lr_encoder": d.encoder_lr,
            "weight_decay": d.weight_decay,
            "aux_weight": d.aux_weight,
            "freeze_glance": d.freeze_glance,
            "stage1_epochs": d.stage1_epochs,
            "stage3_epochs": d.stage1_epochs,
            "run_stage3": d.stage3,
            "glance_lr": d.encoder_lr,
        })

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how the training images are split."""

    root: str = field(default="builtin", metadata={"help": "ImageFolder root with train/ and val/, or 'builtin'"})
    holdout: float = field(default=0.1, metadata={"help": "fraction of training images held out (selection, thresholds)"})
    skip_bad_images: bool = field(default=False, metadata={"help": "drop unreadable or too small images (counted)"})
    workers: int | None = field(default=None, metadata={"help": "loader processes per training process (default: the source's)"})

    def __post_init__(self) -> None:
        # No held-out images would mean thresholds and the kept epoch chosen on the very images
        # trained on: results that look valid and are not.  An error, not a warning, because
        # the fix costs nothing and a warning in a log is missed when the curve is read later.
        if not 0 < self.holdout < 1:
            raise ValueError(
                f"--holdout {self.holdout} must be a fraction between 0 and 1, exclusive: the held-out training "
                "images choose the kept epoch and set the early-exit thresholds, and with none they would be set "
                "on the images trained on. Use --holdout 0.1 (the default, appendix B.2)"
            )
