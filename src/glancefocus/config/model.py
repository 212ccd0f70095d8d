"""The architecture of a GFNet (SPEC "The model")."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

from .choices import ClassifierKind, Crop, GlanceResize, PatchScale, PolicyTrunk, check_choices, fill
from .families import CLASSIFIER_HIDDEN, FAMILY_DEFAULTS, IMAGENET_MEAN, IMAGENET_STD, POLICY_HIDDEN, Family, family_of
from .reads import Read, parse_reads

@dataclass(frozen=True)
class GFNetConfig:
    """Architecture of a GFNet (SPEC "The model").

    ``None`` fields are filled from the backbone family's defaults by :meth:`resolved`.
    ``glance_resize``, ``glance_head`` and ``policy_conv_bias`` default to our choices;
    :mod:`glancefocus.models.release` sets them to the authors' release's so that its published
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
    # Beyond the paper (RANet, DRNet): steps that read the whole image at a higher resolution.
    reads: tuple[str, ...] | None = field(default=None, metadata={
        "help": "what each step reads, comma-separated: glance, patch, whole:R (the whole image at R px, R up to image_size), "
                "e.g. glance,patch,whole:224; T is their number (default: the paper's glance then T-1 patches)"})

    def __post_init__(self) -> None:
        check_choices(self)
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
        if self.reads is not None:
            if self.T != len(self.reads):
                raise ValueError(f"T ({self.T}) must equal the number of reads ({len(self.reads)}: {','.join(self.reads)}); "
                                 "leave --T out when you give --reads")
            parse_reads(self.reads, patch_size=self.patch_size, image_size=self.image_size)  # a clear error now, not at step t
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
        return fill(self, {
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

    @functools.cached_property
    def plan(self) -> tuple[Read, ...]:
        """What each step reads, steps 1..T: the paper's glance then T−1 patches, or ``reads``."""
        if self.reads is None:
            return (Read("glance", self.patch_size),) + (Read("patch", self.patch_size),) * (self.T - 1)
        return parse_reads(self.reads, patch_size=self.patch_size, image_size=self.image_size)

    @property
    def patch_steps(self) -> int:
        """How many steps π chooses a region for (the paper's T − 1); they follow the glance."""
        return sum(r.kind == "patch" for r in self.plan)

    @property
    def whole_size(self) -> int | None:
        """The largest whole-image read, which the whole-image encoder fW is fine-tuned at (None: no such read)."""
        return max((r.size for r in self.plan if r.kind == "whole"), default=None)

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
        for name in ("scale_range", "reads"):
            if saved.get(name) is not None:
                saved[name] = tuple(saved[name])
        return cls(**saved)


# What checkpoints written before these fields existed were trained and evaluated with.
_LEGACY = {"resize_interpolation": "bicubic", "drop_rate": 0.0, "drop_path_rate": 0.0}
