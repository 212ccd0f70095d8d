"""Configuration: one frozen dataclass per concern, changed with :func:`dataclasses.replace`.

- :class:`GFNetConfig` (``model``): the architecture (SPEC "The model");
- :class:`TrainConfig` + :class:`PPOConfig` (``training``): optimisation of the glance
  fine-tune and Stages I–III (appendix A.3), PPO for Stage II (appendix A.2);
- :class:`DataConfig` (``data``): where the images come from and how the training set is split;
- ``families``: the per-family defaults of appendix A.1–A.3 that fill ``None`` fields
  (:meth:`GFNetConfig.resolved`, :meth:`TrainConfig.for_model`); ``choices``: the option sets;
- ``weights``: the encoders' initial weights; ``recipes``: named configurations, and
  :func:`~glancefocus.config.recipes.resolve`, the one place that turns a recipe and its
  overrides into final configs.
"""

from .choices import (Amp, ClassifierKind, Crop, Family, GlanceResize, Patches, PatchScale, PolicyTraining, PolicyTrunk,
                      PPOBaseline, Quantization, Stage2Images, Stage3Locations)
from .data import DataConfig
from .families import CLASSIFIER_HIDDEN, FAMILY_DEFAULTS, IMAGENET_MEAN, IMAGENET_STD, POLICY_HIDDEN, FamilyDefaults, family_of
from .model import GFNetConfig
from .training import PPOConfig, TrainConfig

__all__ = [
    "Amp", "CLASSIFIER_HIDDEN", "ClassifierKind", "Crop", "DataConfig", "FAMILY_DEFAULTS", "Family", "FamilyDefaults",
    "GFNetConfig", "GlanceResize", "IMAGENET_MEAN", "IMAGENET_STD", "POLICY_HIDDEN", "PPOBaseline", "PPOConfig", "PatchScale",
    "Patches", "PolicyTraining", "PolicyTrunk", "Quantization", "Stage2Images", "Stage3Locations", "TrainConfig", "family_of",
]
