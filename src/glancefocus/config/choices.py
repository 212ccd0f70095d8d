"""The option sets of the configs (``Literal`` types, so the CLI's choices and Python's
checks come from one place), and the two helpers every config uses."""

from __future__ import annotations

import dataclasses
import functools
import typing
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
Quantization = Literal["int8"]  # `glancefocus export --quantize`: ONNX Runtime static quantization


@functools.cache
def choices(cls: type) -> dict[str, tuple]:
    """The allowed values of each ``Literal`` field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) for f in dataclasses.fields(cls) if typing.get_origin(hints[f.name]) is Literal}


def check_choices(config) -> None:
    """A clear error for a misspelt option (Python callers bypass the CLI's choices)."""
    for name, allowed in choices(type(config)).items():
        if (value := getattr(config, name)) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))} (got {value!r})")


def fill(config, defaults: dict):
    """``config`` with each of its ``None`` fields named in ``defaults`` set from there."""
    return dataclasses.replace(config, **{k: v for k, v in defaults.items() if getattr(config, k) is None})
