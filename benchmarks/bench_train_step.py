"""A Stage I training step of the Imagenette reproduction's model, one option at a time.

    python -m benchmarks.bench_train_step [--quick] [--device cpu|cuda] [--batch N]

The step is the library's own (``stages.stage1``'s step under the Trainer's autocast,
backward, SGD): ``tf_efficientnet_lite0`` with the offline Lite0 weights, 224 px images,
96 px patches, T = 4, batch 64, fG frozen as for EfficientNet, dropout and drop-path as the
release.  Against the default (fp32, eager, the device's crop) it times:

- ``bf16``: autocast to bfloat16 (``--amp bf16``);
- ``compile``: ``torch.compile`` of both encoders (``--compile``), fp32, compiled before timing;
- ``glance_no_grad``: fG's glance under an explicit ``torch.no_grad()``;
- ``crop_gather`` / ``crop_slices``: the crop by one gather (the GPU's way) or by slices and
  a stack (the CPU's way), whichever the device does not use by default.

Before timing, each variant is checked against the default on the same batch and the same
random patches: the explicit no_grad and the other crop must give bit-identical gradients;
bf16 and compile must agree on the eval-mode logits within a tolerance (reported).
"""

from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from glancefocus import GFNet
from glancefocus.models import gfnet as model_module
from glancefocus.config import GFNetConfig, TrainConfig
from glancefocus.data.sources import Splits
from glancefocus.distributed import World
from glancefocus.models.patches import crop_patches
from glancefocus.config.recipes import resolve
from glancefocus.data.sampling import SeededAugmentation
from glancefocus.distributed import autocast
from glancefocus.training.trainer import Run, Trainer
from glancefocus.training.stages import Setup, stage1

from ._common import compare, parser, setup, write


def build(args, device: torch.device) -> GFNet:
    if args.quick:  # a tiny EfficientNet-like net with the light families' fC and π
        cfg = GFNetConfig(backbone="test_efficientnet", num_classes=10, patch_size=32, T=3, image_size=64,
                          classifier="cascade", policy_trunk="conv", drop_rate=0.3, drop_path_rate=0.2)
        pretrained = False
    else:
        resolved = resolve("imagenette-lite0")
        cfg, pretrained = resolved.model, resolved.pretrained
    torch.manual_seed(0)
    return GFNet(cfg, pretrained=pretrained).to(device, memory_format=torch.channels_last)


class Variant:
    """One model with its Stage I plan and the context its step runs in."""

    def __init__(self, model: GFNet, images: torch.Tensor, targets: torch.Tensor, *, amp: str = "none",
                 context=contextlib.nullcontext) -> None:
        config = replace_config(len(images), amp)
        data = TensorDataset(images.cpu(), targets.cpu())
        train = SeededAugmentation(data, 0)
        splits = Splits(train=train, heldout=data, val=data, classes=[str(c) for c in range(model.config.num_classes)],
                        train_plain=train)
        trainer = Trainer(Run(Path("unused"), World(device=images.device), quiet=True), config)
        self.model, self.amp, self.context = model, amp, context
        self.plan = stage1(Setup(model, splits, config.for_model(model.config), trainer, {}))
        self.images, self.targets = images, targets

    def step(self, seed: int | None = None) -> torch.Tensor:
        if seed is not None:
            torch.manual_seed(seed)
        self.plan.train_mode()
        with self.context(), autocast(self.amp, self.images.device):
            loss, _ = self.plan.step(self.images, self.targets)
        self.plan.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.plan.optimizer.step()
        return loss.detach()

    def gradients(self, seed: int) -> list[torch.Tensor]:
        """The gradients of one step from the same weights (the step is undone)."""
        saved = copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.plan.optimizer.state_dict())
        self.step(seed)
        grads = [p.grad.clone() for g in self.plan.optimizer.param_groups for p in g["params"]]
        self.model.load_state_dict(saved[0])
        self.plan.optimizer.load_state_dict(saved[1])
        return grads

    @torch.inference_mode()
    def logits(self, where: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with autocast(self.amp, self.images.device):
            return self.model(self.images, locations=where).logits.float()


def replace_config(batch: int, amp: str) -> TrainConfig:
    return TrainConfig(batch_size=batch, amp=amp, freeze_glance=True)


@contextlib.contextmanager
def glance_no_grad(model: GFNet):
    forward = model.global_encoder.forward
    model.global_encoder.forward = torch.no_grad()(forward)
    try:
        yield
    finally:
        model.global_encoder.forward = forward


@contextlib.contextmanager
def crop_method(method: str):
    model_module.crop_patches = functools.partial(crop_patches, method=method)
    try:
        yield
    finally:
        model_module.crop_patches = crop_patches


def variants(args, device, images, targets) -> dict[str, Variant]:
    base = build(args, device)
    other_crop = "gather" if device.type == "cpu" else "slices"
    made = {
        "default": Variant(base, images, targets),
        "bf16": Variant(copy.deepcopy(base), images, targets, amp="bf16"),
        "glance_no_grad": None,
        f"crop_{other_crop}": Variant(copy.deepcopy(base), images, targets, context=lambda: crop_method(other_crop)),
    }
    no_grad_model = copy.deepcopy(base)
    made["glance_no_grad"] = Variant(no_grad_model, images, targets, context=lambda: glance_no_grad(no_grad_model))
    if not args.no_compile:
        compiled = copy.deepcopy(base)
        for encoder in (compiled.global_encoder, compiled.local_encoder):
            encoder.model.compile()  # as training.fit does
        made["compile"] = Variant(compiled, images, targets)
    return made


def check(made: dict[str, Variant], where: torch.Tensor) -> dict[str, dict]:
    """Each variant against the default: gradients (bit-identical ones) or eval logits."""
    base = made["default"]
    reference, checks = base.gradients(seed=1), {}
    ref_logits = base.logits(where)
    for name, v in made.items():
        if name == "default":
            continue
        if name == "glance_no_grad" or name.startswith("crop_"):
            same = all(torch.equal(a, b) for a, b in zip(reference, v.gradients(seed=1)))
            if not same:
                raise SystemExit(f"{name}: gradients differ from the default step's")
            checks[name] = {"gradients_identical": True}
        else:
            diff = float((v.logits(where) - ref_logits).abs().max())
            agree = float((v.logits(where).argmax(-1) == ref_logits.argmax(-1)).float().mean())
            checks[name] = {"max_abs_logit_diff": diff, "prediction_agreement": agree}
    return checks


def describe(check: dict | None) -> str:
    if check is None:
        return ""
    if check.get("gradients_identical"):
        return " (gradients bit-identical)"
    return (f" (eval logits within {check['max_abs_logit_diff']:.1e}, "
            f"{100 * check['prediction_agreement']:.1f} % of predictions agree)")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="batch size (default 64; 8 with --quick)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = p.parse_args()
    device = setup(args)
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    batch = args.batch or (8 if args.quick else 64)
    size = 64 if args.quick else 224
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, size, size, generator=gen).to(device)
    targets = torch.randint(0, 10, (batch,), generator=gen).to(device)
    made = variants(args, device, images, targets)
    cfg = made["default"].model.config
    where = torch.rand(cfg.T - 1, batch, 2, generator=gen).to(device)
    checks = check(made, where)
    timed = compare({k: v.step for k, v in made.items()}, device, repeats=repeats, warmup=warmup)
    base = timed["default"]["median_s"]
    desc = f"{cfg.backbone} patch {cfg.patch_size} image {cfg.image_size} T={cfg.T} batch {batch}"
    figures = []
    for name, t in timed.items():
        line = (f"Stage I step, {desc} ({device.type}): {name} {t['median_s'] * 1e3:.0f} ms, "
                f"speed-up over default {base / t['median_s']:.2f}x{describe(checks.get(name))}")
        print(line, flush=True)
        figures.append({"line": line, "variant": name, "timing": t, "speedup": base / t["median_s"], "check": checks.get(name)})
    write("bench_train_step", args, device, figures, config=cfg.to_dict())


if __name__ == "__main__":
    main()
