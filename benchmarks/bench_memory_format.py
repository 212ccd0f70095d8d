"""channels_last vs contiguous (NCHW) memory format: GFNet training and inference steps.

    python -m benchmarks.bench_memory_format [--quick] [--device cpu|cuda] [--backbone NAME]

The library's default is channels_last (``TrainConfig.channels_last``, ``--channels-last``,
``load_model``); this measures why.  The same GFNet (random weights) in both formats runs
(1) a Stage I training step: all T steps with uniformly random patches, deep-supervision
loss, backward and an SGD step, fG frozen as for EfficientNet; (2) all T steps in eval mode
under inference_mode.  The images stay NCHW, as a data loader yields them: ``Encoder``
converts each glance and patch to the weights' format.  Outputs of the two formats are
checked to agree first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glancefocus import GFNet, GFNetConfig

from ._common import compare, parser, setup, write


def build(args, device: torch.device, channels_last: bool) -> GFNet:
    cfg = GFNetConfig(
        backbone=args.backbone or ("test_resnet" if args.quick else "tf_efficientnet_lite0"),
        patch_size=32 if args.quick else 96, T=3 if args.quick else 4,
        image_size=64 if args.quick else 224, num_classes=10,
    )
    torch.manual_seed(0)
    model = GFNet(cfg).to(device)
    model.global_encoder.requires_grad_(False)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def train_step(model: GFNet, optimizer: torch.optim.Optimizer, images: torch.Tensor, targets: torch.Tensor) -> None:
    model.train()
    out = model(images, locations="random", need_aux=True)
    flat = targets.repeat(model.T)
    loss = F.cross_entropy(out.logits.flatten(0, 1), flat) + F.cross_entropy(out.aux_logits.flatten(0, 1), flat)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default=None, help="timm backbone (default tf_efficientnet_lite0; test_resnet with --quick)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 64; 8 with --quick)")
    args = p.parse_args()
    device = setup(args)
    repeats = args.repeats or (2 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else 1
    models = {"contiguous": build(args, device, False), "channels_last": build(args, device, True)}
    cfg = models["contiguous"].config
    batch = args.batch or (8 if args.quick else 64)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen).to(device)
    targets = torch.randint(0, cfg.num_classes, (batch,), generator=gen).to(device)

    with torch.inference_mode():
        ref, cl = (m.eval()(images).logits for m in models.values())
    diff = float((ref - cl).abs().max())
    if diff > 1e-3:
        raise SystemExit(f"formats disagree: max abs logit difference {diff:.2e}")

    optimizers = {k: torch.optim.SGD([q for q in m.parameters() if q.requires_grad], lr=1e-3, momentum=0.9) for k, m in models.items()}
    trained = compare({k: (lambda k=k: train_step(models[k], optimizers[k], images, targets)) for k in models},
                      device, repeats=repeats, warmup=warmup)
    for m in models.values():
        m.eval()

    def infer(model: GFNet):
        with torch.inference_mode():
            return model(images)

    inferred = compare({k: (lambda k=k: infer(models[k])) for k in models}, device, repeats=repeats, warmup=warmup)
    desc = f"{cfg.backbone} patch {cfg.patch_size} image {cfg.image_size} T={cfg.T} batch {batch}"
    figures = []
    for what, timed in (("Stage I training step", trained), ("inference, all steps", inferred)):
        a, b = timed["contiguous"]["median_s"], timed["channels_last"]["median_s"]
        line = (f"{what}, {desc} ({device.type}): contiguous {a * 1e3:.0f} ms, channels_last {b * 1e3:.0f} ms, "
                f"speed-up {a / b:.2f}x (logits agree to {diff:.1e})")
        print(line, flush=True)
        figures.append({"line": line, "what": what, "model": desc, "contiguous": timed["contiguous"],
                        "channels_last": timed["channels_last"], "speedup": a / b, "max_abs_logit_diff": diff})
    write("bench_memory_format", args, device, figures, config=cfg.to_dict())


if __name__ == "__main__":
    main()
