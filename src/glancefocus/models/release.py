"""Import the authors' published GFNet checkpoints (``.pth.tar``) as glancefocus checkpoints.

The authors' release (Wang et al., NeurIPS 2020, github.com/blackfeather-wang/GFNet-Pytorch)
publishes one file per Table 2 configuration: a dict with ``model_name``, ``patch_size``, the
state dicts ``model_prime_state_dict`` (fG), ``model_state_dict`` (fL), ``fc`` (fC) and
``policy`` (π), and its evaluation: ``flops`` (cumulative MAdds per step, so T = len(flops)),
``anytime_classification``, ``budgeted_batch_classification`` and ``dynamic_threshold``.

:func:`import_release` maps their key names onto a :class:`~glancefocus.models.gfnet.GFNet`, sets the
config fields where the release's network differs from our defaults (see :func:`release_config`),
and writes a normal checkpoint whose metadata keeps the release's numbers under ``"release"``
and, in our ``results`` format, under ``"results"`` (so ``predict --budget`` uses its thresholds).

Files are read with ``torch.load(weights_only=True)``: tensors, containers and numbers only
(plus numpy scalars, by name); a file that needs any other code is refused, never run.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.serialization import safe_globals

from .budget import PAPER_QS, threshold_json
from .checkpoint import save_checkpoint
from ..config import GFNetConfig
from .gfnet import GFNet

REQUIRED = ("model_name", "patch_size", "model_prime_state_dict", "model_state_dict", "fc", "policy", "flops")

# numpy scalars (e.g. a MAdds count) pickle as this reconstructor plus their dtype; both under
# their numpy 1.x and 2.x module paths, as the file may come from either.
_SCALAR = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
_NUMPY_GLOBALS = [
    (_SCALAR, "numpy.core.multiarray.scalar"),
    (_SCALAR, "numpy._core.multiarray.scalar"),
    np.dtype,
    *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32")),
]


@dataclass(frozen=True)
class ReleaseModel:
    """What the release's ``configs.py`` fixes for one ``model_name``."""

    backbone: str  # our timm name
    image_size: int
    crop_pct: float
    resize_interpolation: str  # of the full image, in its evaluation transform
    glance_interpolation: str  # of the glance (its ``prime_interpolation``)


RELEASE_MODELS: dict[str, ReleaseModel] = {
    "resnet50": ReleaseModel("resnet50", 224, 0.875, "bilinear", "bicubic"),
    "densenet121": ReleaseModel("densenet121", 224, 0.875, "bilinear", "bilinear"),
    "densenet169": ReleaseModel("densenet169", 224, 0.875, "bilinear", "bilinear"),
    "densenet201": ReleaseModel("densenet201", 224, 0.875, "bilinear", "bilinear"),
    "regnety_600m": ReleaseModel("regnety_006", 224, 0.875, "bilinear", "bilinear"),
    "regnety_800m": ReleaseModel("regnety_008", 224, 0.875, "bilinear", "bilinear"),
    "regnety_1.6g": ReleaseModel("regnety_016", 224, 0.875, "bilinear", "bilinear"),
    "mobilenetv3_large_100": ReleaseModel("mobilenetv3_large_100", 224, 0.875, "bilinear", "bicubic"),
    "mobilenetv3_large_125": ReleaseModel("mobilenetv3_large_125", 224, 0.875, "bilinear", "bicubic"),
    # The release evaluates B2 with crop 0.875 (the paper's text says 0.904 for both).
    "efficientnet_b2": ReleaseModel("efficientnet_b2", 260, 0.875, "bicubic", "bicubic"),
    "efficientnet_b3": ReleaseModel("efficientnet_b3", 300, 0.904, "bicubic", "bicubic"),
}

# (pattern, replacement) renames from the release's names to ours, per component.
_PYCLS_TO_TIMM = [  # RegNets: pycls AnyNet -> timm RegNet
    (r"\.proj\.", ".downsample.conv."), (r"(\.b\d+)\.bn\.", r"\1.downsample.bn."),
    (r"\.f\.a\.", ".conv1.conv."), (r"\.f\.a_bn\.", ".conv1.bn."),
    (r"\.f\.b\.", ".conv2.conv."), (r"\.f\.b_bn\.", ".conv2.bn."),
    (r"\.f\.c\.", ".conv3.conv."), (r"\.f\.c_bn\.", ".conv3.bn."),
    (r"\.f\.se\.f_ex\.0\.", ".se.fc1."), (r"\.f\.se\.f_ex\.2\.", ".se.fc2."), (r"^fc\.", "head.fc."),
]
_GRU = [(r"^rnn\.(weight|bias)_(ih|hh)_l0$", r"cell.\1_\2"), (r"^fc\.", "fc.")]
_POLICY = [(r"^gru\.(weight|bias)_(ih|hh)_l0$", r"gru.\1_\2"), (r"^actor\.0\.", "actor."), (r"^critic\.0\.", "critic.")]
_POLICY_CONV = [(r"^state_encoder\.(0|3)\.", r"trunk.\1.")]  # conv, relu, flatten, linear, relu
_POLICY_MLP = [(r"^state_encoder\.0\.", "trunk.1."), (r"^state_encoder\.2\.", "trunk.3.")]  # ours starts with Flatten


def load_release(path: str | os.PathLike) -> dict[str, Any]:
    """The release's checkpoint dict, loaded without running any code from the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"release checkpoint {path} does not exist")
    try:
        with safe_globals(_NUMPY_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler names the global it refused; keep that message
        raise ValueError(
            f"{path} is not a loadable GFNet release checkpoint: it needs more than tensors, numbers and "
            f"containers to load, which is refused rather than executed ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} holds a {type(ckpt).__name__}, not the release's checkpoint dict")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a GFNet release checkpoint: missing {missing} (has {sorted(map(str, ckpt))})")
    if ckpt["model_name"] not in RELEASE_MODELS:
        raise ValueError(f"unknown release model_name {ckpt['model_name']!r}; known: {', '.join(RELEASE_MODELS)}")
    if not isinstance(ckpt["patch_size"], int) or not isinstance(ckpt["flops"], (list, tuple)) or not ckpt["flops"]:
        raise ValueError(f"{path}: patch_size must be an int and flops a non-empty list (one entry per step)")
    return ckpt


def release_config(ckpt: dict[str, Any]) -> GFNetConfig:
    """The GFNetConfig that computes what the release's network computes.

    Besides backbone, patch size, T = len(flops) and the evaluation transform, it sets the
    fields where the release differs from our defaults: the glance is resized with
    ``align_corners=True`` and no anti-aliasing, π's 1×1 conv has no bias, and the RegNets'
    step 1 answers with fG's own head.
    """
    spec = RELEASE_MODELS[ckpt["model_name"]]
    fc = _tensors(ckpt["fc"], "fc")
    output = fc.get("fc.weight", fc.get("fc_2.weight"))  # fC's last layer: GRU's, or the cascade's first
    return GFNetConfig(
        backbone=spec.backbone,
        num_classes=output.shape[0] if output is not None and output.dim() == 2 else 1000,
        patch_size=int(ckpt["patch_size"]),
        T=len(ckpt["flops"]),
        image_size=spec.image_size,
        crop_pct=spec.crop_pct,
        interpolation=spec.glance_interpolation,
        glance_resize="align_corners",
        glance_head=True if spec.backbone.startswith("regnet") else None,
        policy_conv_bias=False,
        resize_interpolation=spec.resize_interpolation,
    )


def _tensors(sd: Any, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"the release checkpoint's {what!r} is not a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in sd.items()}  # saved from DataParallel


def _rename(sd: dict[str, torch.Tensor], rules: list[tuple[str, str]], prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[prefix + key] = value
    return out


def convert_state_dict(ckpt: dict[str, Any], model: GFNet) -> dict[str, torch.Tensor]:
    """The release's four state dicts under ``model``'s keys; ValueError on any mismatch."""
    cfg = model.config
    encoder_rules = _PYCLS_TO_TIMM if cfg.family == "regnet" else []
    fc = _tensors(ckpt["fc"], "fc")
    if cfg.classifier == "cascade":  # the release always has fc_2..fc_5; steps beyond T never run
        fc = {k: v for k, v in fc.items() if not (m := re.match(r"fc_(\d+)\.", k)) or int(m.group(1)) <= cfg.T}
        fc_rules = [(r"^fc_(\d)\.", lambda m: f"layers.{int(m.group(1)) - 2}.")]
    else:
        fc_rules = _GRU
    policy_rules = _POLICY + (_POLICY_CONV if cfg.policy_trunk == "conv" else _POLICY_MLP)
    out = {
        **_rename(_tensors(ckpt["model_prime_state_dict"], "model_prime_state_dict"), encoder_rules, "global_encoder.model."),
        **_rename(_tensors(ckpt["model_state_dict"], "model_state_dict"), encoder_rules, "local_encoder.model."),
        **_rename(fc, fc_rules, "classifier."),
        **_rename(_tensors(ckpt["policy"], "policy"), policy_rules, "policy."),
    }
    _check_matches(out, model.state_dict(), ckpt)
    return out


def _check_matches(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], ckpt: dict[str, Any]) -> None:
    missing, unexpected = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    shapes = sorted(
        f"{k}: {tuple(got[k].shape)} in the file, {tuple(want[k].shape)} expected"
        for k in want.keys() & got.keys()
        if got[k].shape != want[k].shape
    )
    if missing or unexpected or shapes:
        raise ValueError(
            f"the weights do not fit GFNet {ckpt['model_name']} at patch size {ckpt['patch_size']} "
            f"with T={len(ckpt['flops'])}: missing {_some(missing)}, unexpected {_some(unexpected)}, "
            f"wrong shapes {_some(shapes)}. Is this an unmodified GFNet release checkpoint?"
        )


def _some(items: list[str]) -> str:
    return f"{items[:5]}{' ...' if len(items) > 5 else ''} ({len(items)})"


def _floats(values: Any) -> list:
    """Numbers (tensors, numpy scalars, nested lists) as plain Python floats, for JSON."""
    if isinstance(values, (torch.Tensor, np.ndarray, np.generic)):
        values = values.tolist()
    if isinstance(values, (list, tuple)):
        return [_floats(v) for v in values]
    return float(values)


def _threshold(v: float) -> float:
    # The release writes ±1e8 for "nobody exits" / "everybody exits": our ±inf.
    return math.inf if v >= 1e8 else -math.inf if v <= -1e8 else v


def release_meta(ckpt: dict[str, Any], model: GFNet, source: Path) -> dict[str, Any]:
    """Metadata of the imported checkpoint: ours, plus the release's numbers (marked as such)."""
    from timm.data import ImageNetInfo

    keys = ("flops", "model_flops", "policy_flops", "fc_flops", "anytime_classification",
            "budgeted_batch_classification", "dynamic_threshold")
    try:
        published = {k: _floats(ckpt[k]) for k in keys if k in ckpt}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: the release's evaluation results are not numbers ({e})") from e
    meta = {
        "config": model.config.to_dict(),
        "classes": ImageNetInfo().label_names() if model.config.num_classes == 1000 else [],
        "stage": "release",
        "madds": model.madds(),
        "backbone": model.config.backbone,
        "patch_size": model.config.patch_size,
        "T": model.T,
        "image_size": model.config.image_size,
        "release": {"source": source.name, "model_name": ckpt["model_name"], **published,
                    "note": "as published in the authors' checkpoint: their MAdds count and their ImageNet results"},
    }
    if {"dynamic_threshold", "budgeted_batch_classification", "anytime_classification"} <= published.keys():
        meta["results"] = _release_results(published)
    return meta


def _release_results(published: dict[str, Any]) -> dict[str, Any]:
    """The release's evaluation in the format ``evaluate`` writes (budgets q = k/20, k = 1..39)."""
    flops, accuracy = published["budgeted_batch_classification"]
    return {
        "source": "release",
        "patches": "learned",
        "madds": published["flops"],
        "anytime_accuracy": published["anytime_classification"],
        "thresholds": [[threshold_json(_threshold(v)) for v in row] for row in published["dynamic_threshold"]],
        "budgeted": [{"q": q, "madds": m, "accuracy": a} for q, m, a in zip(PAPER_QS, flops, accuracy)],
    }


def import_release(src: str | os.PathLike, out: str | os.PathLike) -> GFNet:
    """Convert the release checkpoint ``src`` into the glancefocus checkpoint ``out``.

    Everything is checked before anything is written, and the write is atomic: a refused or
    broken file leaves ``out`` untouched.  Returns the imported model (eval mode, CPU).
    """
    src = Path(src)
    ckpt = load_release(src)
    model = GFNet(release_config(ckpt))
    weights = convert_state_dict(ckpt, model)
    model.load_state_dict(weights)
    model.eval()
    save_checkpoint(out, weights, release_meta(ckpt, model, src))
    return model
