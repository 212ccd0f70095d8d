"""The subcommands of ``glancefocus``, one function each.  Torch is imported inside the
functions that need it, so ``predict --onnx`` and ``serve`` run without it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DataConfig
from .flags import given_fields

STAGE_NAMES = {"glance": ["glance"], "whole": ["whole"], "1": ["stage1"], "2": ["stage2"], "3": ["stage3"],
               "end2end": ["end2end"], "all": []}  # all: the pipeline of --policy-training (stages.PIPELINES)


def _pretrained(value: str) -> bool | str:
    return {"false": False, "no": False, "none": False, "true": True, "yes": True}.get(value.lower(), value)


def _resolve(args: argparse.Namespace, source):
    """The recipe of ``--recipe`` (``default`` without it) with the flags given, resolved."""
    from ..config.recipes import resolve

    train = given_fields(args, "train")
    if args.epochs is not None:
        for name in ("glance_epochs", "stage1_epochs", "stage2_epochs", "stage3_epochs", "end2end_epochs"):
            train.setdefault(name, args.epochs)
    train.update(batch_size=args.batch_size, amp=args.amp, channels_last=args.channels_last)
    pretrained = _pretrained(args.pretrained) if args.pretrained is not None else None
    return resolve(args.recipe or "default", source=source, pretrained=pretrained, train=train, ppo=given_fields(args, "ppo"),
                   model={**given_fields(args, "model"), "num_classes": len(source.classes())})


def train(args: argparse.Namespace) -> None:
    from ..data.sources import data_source
    from ..distributed import init_world
    from ..training.runlog import RunLog
    from ..training.trainer import Run
    from ..training.pipeline import train
    from ..training.stages import PIPELINES

    world = init_world(args.device)
    data = DataConfig(**given_fields(args, "data"))
    source = data_source(data.root)
    run_config = _resolve(args, source)
    tc = run_config.train
    args.out.mkdir(parents=True, exist_ok=True)
    run = Run(args.out, world, resume=args.resume, log=RunLog(args.out, world), quiet=args.quiet)
    stages = STAGE_NAMES[args.stage] or PIPELINES[tc.policy_training]
    last, _ = train(run_config, stages, data=data, run=run, init=args.init)
    run.log.close()
    if args.stage == "all":  # every process evaluates its shard; rank 0 writes
        _evaluate_into(last, world, data.root, batch_size=tc.batch_size, workers=data.workers,
                       channels_last=args.channels_last, amp=args.amp, quiet=args.quiet)


def _evaluate_into(checkpoint: Path, world, root: str | None, *, json_out: Path | None = None, plot: Path | None = None,
                   quiet: bool = False, **kw) -> dict:
    from ..evaluation.evaluate import evaluate_checkpoint

    json_out = json_out or checkpoint.with_suffix(".results.json")
    plot = plot or json_out.with_suffix(".png")
    results = evaluate_checkpoint(checkpoint, world=world, root=root, json_out=json_out, plot=plot, **kw)
    if world.is_main and not quiet:
        acc = " ".join(f"{a:.1f}" for a in results["anytime_accuracy"])
        madds = " ".join(f"{m / 1e6:.1f}" for m in results["madds"])
        print(f"anytime top-1 (%) per step: {acc}\nMAdds (M) per step: {madds}\nresults: {json_out}  plot: {plot}")
    return results


def evaluate(args: argparse.Namespace) -> None:
    from ..distributed import init_world

    data = given_fields(args, "data")
    _evaluate_into(
        args.checkpoint, init_world(args.device), data.get("root"), json_out=args.json, plot=args.plot, patches=args.patches,
        batch_size=args.batch_size, channels_last=args.channels_last, amp=args.amp,
        skip_bad_images=data.get("skip_bad_images", False), workers=data.get("workers"), quiet=args.quiet,
    )


def _load(checkpoint: Path, device: str | None, *, channels_last: bool = True):
    from ..distributed import pick_device
    from ..models.gfnet import GFNet

    model, meta = GFNet.from_checkpoint(checkpoint, device=pick_device(device), channels_last=channels_last)
    return model.eval(), meta


def predict(args: argparse.Namespace) -> None:
    from ..runtime.predictions import print_predictions
    from ..runtime.preprocess import image_files

    files = image_files(args.images)
    rows, skipped, point = (_predict_onnx if args.onnx else _predict_torch)(args, files)
    print_predictions(rows, point, skipped, args.json)


def _predict_torch(args: argparse.Namespace, files: list[Path]) -> tuple[list, list, dict]:
    from ..inference import predict_files, select_thresholds
    from ..distributed import AMP_DTYPES

    model, meta = _load(args.checkpoint, args.device, channels_last=args.channels_last)
    thresholds, point = select_thresholds(meta, args.budget)
    rows, skipped = predict_files(model, files, thresholds, meta.get("classes", []), batch_size=args.batch_size,
                                  amp=AMP_DTYPES.get(args.amp), skip_bad=args.skip_bad_images)
    return rows, skipped, point


def _predict_onnx(args: argparse.Namespace, files: list[Path]) -> tuple[list, list, dict]:
    from ..runtime.deploy import OnnxGFNet

    model = OnnxGFNet(args.onnx, threads=args.threads)
    thresholds, point = model.thresholds(args.budget)
    rows, skipped = model.predict_files(files, thresholds, batch_size=args.batch_size, skip_bad=args.skip_bad_images)
    return rows, skipped, point


def export(args: argparse.Namespace) -> None:
    from ..runtime.deploy import MANIFEST, read_manifest
    from ..export.bundle import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, force=args.force, quantize=args.quantize,
                            calibration_data=args.calibration_data, calibration_images=args.calibration_images)
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"wrote {out}: {files}\nrun it: glancefocus predict --onnx {out} IMAGES... (see {out / MANIFEST})")
    if args.quantize:
        q = read_manifest(out)["quantization"]
        agreement = ", ".join(f"{a:.1%}" for a in q["agreement_with_fp32"])
        print(f"{q['type']} ({q['format']}), calibrated on {q['calibration_images']} images; the fp32 class kept per step: "
              f"{agreement}; thresholds set on the {q['type']} model's probabilities")


def visualize(args: argparse.Namespace) -> None:
    from ..inference import load_images, select_thresholds
    from ..evaluation.plots import visualize
    from ..runtime.preprocess import image_files

    model, meta = _load(args.checkpoint, args.device)
    files = image_files(args.images)
    images = load_images(files, model).to(next(model.parameters()).device)
    exits = None
    if args.budget is not None:
        exits = model.predict(images, select_thresholds(meta, args.budget)[0]).exit_step
    visualize(model, images, args.out, classes=meta.get("classes", []), titles=[f.name for f in files], exit_steps=exits)
    print(f"wrote {args.out}")


def demo(args: argparse.Namespace) -> None:
    from ..config.recipes import resolve
    from ..data.sources import data_source
    from ..demo import run_demo
    from ..distributed import init_world

    source = data_source(args.data)
    pretrained = _pretrained(args.pretrained) if args.pretrained is not None else None
    model = {"backbone": args.backbone, "patch_scale": args.patch_scale, "num_classes": len(source.classes())}
    train = {"policy_training": args.policy_training, "seed": args.seed}
    run_config = resolve("demo", source=source, pretrained=pretrained, model=model, train=train)
    run_demo(run_config, args.data, args.out, world=init_world(args.device), quiet=args.quiet)


def recipes(args: argparse.Namespace) -> None:
    from ..config.recipes import RECIPES

    for name, r in RECIPES.items():
        cfg = r.model
        image = f"{cfg.image_size} (or the data's own size)" if r.sized_by_data else cfg.image_size
        print(f"{name:32s} backbone={cfg.backbone} patch={cfg.patch_size} T={cfg.T} image={image}  ({r.description})")


def import_release(args: argparse.Namespace) -> None:
    from ..models.checkpoint import read_meta
    from ..models.release import import_release

    model = import_release(args.release_checkpoint, args.out)
    cfg = model.config
    kept = "with" if "results" in read_meta(args.out) else "without (run evaluate to set them)"
    print(f"wrote {args.out}: {cfg.backbone} patch {cfg.patch_size} T={cfg.T}, {kept} the release's thresholds")

