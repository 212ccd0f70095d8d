"""The 14 GFNet configurations of the paper's Table 2 (appendix), by name.

Names read ``<timm backbone>-<patch size>-t<T>``.  Full images are 224 px with crop 0.875,
except EfficientNet-B2 (260) and B3 (300) with crop 0.904 (SPEC "Table 2").
"""

from __future__ import annotations

import difflib
from typing import Any

from .config import GFNetConfig, TrainConfig

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

PRESETS: dict[str, GFNetConfig] = {
    f"{backbone}-{patch}-t{T}": GFNetConfig(
        backbone=backbone,
        patch_size=patch,
        T=T,
        image_size=_IMAGE_SIZE.get(backbone, (224, 0.875))[0],
        crop_pct=_IMAGE_SIZE.get(backbone, (224, 0.875))[1],
    )
    for backbone, patch, T in _TABLE2
}


def preset_config(name: str, **overrides: Any) -> GFNetConfig:
    """The :class:`GFNetConfig` of a Table 2 preset, with ``overrides`` applied."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown preset {name!r}.{hint} Known presets: {', '.join(PRESETS)}.")
    base = PRESETS[name].to_dict()
    base.update({k: v for k, v in overrides.items() if v is not None})
    return GFNetConfig(**base)


def preset_train_config(name: str, **overrides: Any) -> TrainConfig:
    """Training hyper-parameters of a preset (appendix A.2/A.3 family defaults)."""
    return TrainConfig(**overrides).for_model(preset_config(name))
