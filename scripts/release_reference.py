"""The authors' GFNet release, imported from ``../shared/reference/gfnet-release`` as a
reference for the parity tests and ``scripts.release_parity``.  Nothing of it is copied: it is loaded from that folder.

The release is CUDA-only and written for PyTorch 1.3: on CPU its ``.cuda()`` calls are made
no-ops (only while its code runs) and the removed ``torch._six`` module is supplied.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

RELEASE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gfnet-release"

# Our recipe name -> the release's model_name.
RELEASE_NAMES = {
    "resnet50": "resnet50",
    "densenet121": "densenet121",
    "densenet169": "densenet169",
    "densenet201": "densenet201",
    "regnety_006": "regnety_600m",
    "regnety_008": "regnety_800m",
    "regnety_016": "regnety_1.6g",
    "mobilenetv3_large_100": "mobilenetv3_large_100",
    "mobilenetv3_large_125": "mobilenetv3_large_125",
    "efficientnet_b2": "efficientnet_b2",
    "efficientnet_b3": "efficientnet_b3",
}

#: Images per parity comparison.
BATCH = 8


def randomize_norms(*nets: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine terms, so their mapping is checked too."""
    g = torch.Generator().manual_seed(1)
    for net in nets:
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@contextlib.contextmanager
def cpu_only() -> Iterator[None]:
    """Make ``.cuda()`` a no-op on tensors and modules while the release's code runs."""
    saved = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = saved


def _install_six() -> None:
    if "torch._six" in sys.modules:
        return
    import collections.abc

    six = types.ModuleType("torch._six")
    six.container_abcs = collections.abc
    six.string_classes = (str, bytes)
    six.int_classes = int
    sys.modules["torch._six"] = six


@functools.cache
def release() -> types.SimpleNamespace:
    """The release's modules: network, configs, models, inference functions, pycls."""
    _install_six()
    sys.path.insert(0, str(RELEASE))
    argv, strategy = sys.argv, torch.multiprocessing.get_sharing_strategy()
    sys.argv = ["inference.py"]  # inference.py parses its arguments at import (all have defaults)
    try:
        with cpu_only():
            modules = {name: importlib.import_module(name) for name in ("network", "configs", "models", "inference")}
            from pycls.core.config import cfg
            from pycls.models.regnet import RegNet
    finally:
        sys.argv = argv
        torch.multiprocessing.set_sharing_strategy(strategy)  # the release changes it at import
        sys.path.remove(str(RELEASE))
    return types.SimpleNamespace(**modules, pycls_cfg=cfg, RegNet=RegNet)


def build_encoder(model_name: str, num_classes: int = 1000) -> nn.Module:
    """One release encoder (fG or fL) with random weights, in eval mode."""
    ref = release()
    if model_name == "resnet50":
        return ref.models.resnet50(pretrained=False, num_classes=num_classes).eval()
    if model_name.startswith("densenet"):
        return getattr(ref.models, model_name)(pretrained=False, num_classes=num_classes).eval()
    if model_name.startswith("regnet"):
        cfg = ref.pycls_cfg
        cfg.defrost()
        cfg.merge_from_file(str(RELEASE / ref.configs.model_configurations[model_name]["cfg_file"]))
        cfg.MODEL.NUM_CLASSES = num_classes
        return ref.RegNet().eval()
    drop = 0.3 if model_name.startswith("efficientnet") else 0.2
    return ref.models.create_model(
        model_name, pretrained=False, num_classes=num_classes, drop_rate=drop, drop_connect_rate=0.2
    ).eval()


def build_gfnet(model_name: str, patch_size: int, num_classes: int = 1000) -> dict[str, nn.Module]:
    """fG, fL, fC and π of the release (random weights, eval mode), as its inference.py builds them."""
    ref = release()
    conf = ref.configs.model_configurations[model_name]
    state_dim = conf["feature_map_channels"] * math.ceil(patch_size / 32) ** 2
    with cpu_only():
        policy = ref.network.ActorCritic(conf["feature_map_channels"], state_dim, conf["policy_hidden_dim"], conf["policy_conv"])
        fc = ref.network.Full_layer(conf["feature_num"], conf["fc_hidden_dim"], conf["fc_rnn"], class_num=num_classes)
    encoders = {"model_prime": build_encoder(model_name, num_classes), "model": build_encoder(model_name, num_classes)}
    return {**encoders, "fc": fc.eval(), "policy": policy.eval()}


@torch.no_grad()
def run_gfnet(nets: dict[str, nn.Module], model_name: str, images: torch.Tensor, patch_size: int, T: int):
    """Logits (T, B, C) and locations (T-1, B, 2) of the release's inference loop
    (``generate_logits`` in its inference.py, without the data loader and softmax)."""
    ref = release()
    prime, local, fc, policy = nets["model_prime"], nets["model"], nets["fc"], nets["policy"]
    memory = ref.network.Memory()
    interpolation = ref.configs.model_configurations[model_name]["prime_interpolation"]
    logits, locations = [], []
    with cpu_only():
        output, state = prime(ref.inference.get_prime(images, patch_size, interpolation))
        if "resnet" in model_name or "densenet" in model_name:
            output = fc(output, restart=True)
        else:
            fc(output, restart=True)
            output = (prime.fc if "regnet" in model_name else prime.classifier)(output)
        logits.append(output)
        for step in range(1, T):
            action = policy.act(state, memory, restart_batch=step == 1)
            output, state = local(ref.inference.get_patch(images, action, patch_size))
            logits.append(fc(output, restart=False))
            locations.append(action)
    return torch.stack(logits), torch.stack(locations)


def save_checkpoint(path: Path, nets: dict[str, nn.Module], model_name: str, patch_size: int, T: int, **extra) -> None:
    """Write ``nets`` as the release's published ``.pth.tar`` (encoders saved from
    DataParallel, hence the ``module.`` prefix) with made-up evaluation results."""
    prefixed = {k: {f"module.{n}": v for n, v in nets[k].state_dict().items()} for k in ("model_prime", "model")}
    ckpt = {
        "model_name": model_name,
        "patch_size": patch_size,
        "model_prime_state_dict": prefixed["model_prime"],
        "model_state_dict": prefixed["model"],
        "fc": nets["fc"].state_dict(),
        "policy": nets["policy"].state_dict(),
        "flops": [float(0.5e9 * (t + 1)) for t in range(T)],
        "model_flops": 0.5e9,
        "policy_flops": 1e6,
        "fc_flops": 2e6,
        "anytime_classification": [60.0 + t for t in range(T)],
        "budgeted_batch_classification": [[0.6e9 + 1e7 * k for k in range(39)], [60.0 + 0.1 * k for k in range(39)]],
        "dynamic_threshold": torch.rand(39, T),
        **extra,
    }
    torch.save(ckpt, path)
