"""Command-line interface: ``glancefocus {train,evaluate,predict,export,serve,visualize,demo,presets,import-release}``.

Each subcommand is one function (``set_defaults(func=...)``); the model, training and data
flags are made from the config fields (:mod:`glancefocus.flags`).  Torch is imported by the
subcommands that need it, not here: ``predict --onnx`` and ``serve`` run without it.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from typing import get_args
from pathlib import Path

from .config import Amp, DataConfig, GFNetConfig, Patches, PatchScale, PolicyTraining, PPOConfig, TrainConfig
from .flags import add_fields, given_fields
from .runtime.serve_cli import add_serve_parser

STAGE_NAMES = {"glance": ["glance"], "1": ["stage1"], "2": ["stage2"], "3": ["stage3"], "end2end": ["end2end"],
               "all": []}  # all: the pipeline of --policy-training (stages.PIPELINES)


def _pretrained(value: str) -> bool | str:
    return {"false": False, "no": False, "none": False, "true": True, "yes": True}.get(value.lower(), value)


def _run_options(p: argparse.ArgumentParser, *, batch_size: int | None) -> None:
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda if available)")
    p.add_argument("--amp", choices=get_args(Amp), default="none", help="mixed precision")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"batch size (default {batch_size if batch_size else 'the recipe' + chr(39) + 's'})")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format (default; faster convolutions on CPU and with AMP on GPU)")


def _data_options(p: argparse.ArgumentParser, *, default_root: str | None) -> None:
    names = {"root": "--data"}
    add_fields(p, DataConfig, "data", only=("root", "skip_bad_images", "workers"), names=names, defaults={"root": default_root})
    p.add_argument("--quiet", action="store_true", help="no progress bars, no printed summary (results are still written)")


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="train one stage, or the whole pipeline")
    t.add_argument("--stage", choices=list(STAGE_NAMES), required=True)
    t.add_argument("--out", type=Path, default=Path("runs/gfnet"), help="folder for checkpoints and logs")
    t.add_argument("--init", type=Path, help="checkpoint to start from (default: the previous stage's in --out)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoints in --out")
    g = t.add_argument_group("model")
    g.add_argument("--preset", help="a named recipe (`glancefocus presets` lists them)")
    add_fields(g, GFNetConfig, "model", only=("backbone", "patch_size", "T", "image_size", "classifier", "policy_trunk",
                                              "drop_rate", "drop_path_rate", "resize_interpolation", "patch_scale",
                                              "scale_range", "crop"))
    g.add_argument("--pretrained", default=None, help="encoder initialisation: false, true (timm hub), lite0/lite1/lite2 "
                   "(offline packages) or a weights file (default: the recipe's, else false)")
    g = t.add_argument_group("optimisation (defaults: the recipe's, else appendix A.2/A.3 for the backbone family)")
    g.add_argument("--epochs", type=int, help="epochs of every stage (overrides the recipe's per-stage values)")
    # Distillation needs a teacher model, which only the reproduction script provides.
    add_fields(g, TrainConfig, "train", skip=("batch_size", "amp", "channels_last", "momentum", "distill_weight", "distill_temperature"))
    add_fields(g, PPOConfig, "ppo", only=("lr", "baseline"), names={"lr": "--ppo-lr", "baseline": "--ppo-baseline"})
    _data_options(t, default_root="builtin")
    add_fields(t, DataConfig, "data", only=("holdout",))
    _run_options(t, batch_size=None)
    t.set_defaults(func=_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glancefocus", description="GFNet: Glance and Focus Networks")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)

    e = sub.add_parser("evaluate", help="anytime and budgeted evaluation of a checkpoint")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--json", type=Path, help="write the results here")
    e.add_argument("--plot", type=Path, help="accuracy-vs-MAdds PNG (default: next to --json)")
    e.add_argument("--patches", choices=get_args(Patches), default="learned",
                   help="focus patches: π's (learned), uniformly random, or centre then corners (fixed)")
    _data_options(e, default_root=None)
    _run_options(e, batch_size=256)
    e.set_defaults(func=_evaluate)

    pr = sub.add_parser("predict", help="early-exit classification of image files (PyTorch or ONNX Runtime)")
    pr.add_argument("images", nargs="+", help="image files or folders")
    source = pr.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a trained and evaluated checkpoint (PyTorch)")
    source.add_argument("--onnx", type=Path, help="a directory written by `glancefocus export` (ONNX Runtime)")
    pr.add_argument("--budget", type=float, help="target mean multiply-adds per image (picks stored thresholds)")
    pr.add_argument("--json", type=Path, help="write the predictions here")
    pr.add_argument("--skip-bad-images", action="store_true", help="leave unreadable files out (listed and counted)")
    pr.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (with --onnx)")
    _run_options(pr, batch_size=64)
    pr.set_defaults(func=_predict)

    x = sub.add_parser("export", help="ONNX graphs of a trained GFNet, for early exit under ONNX Runtime")
    x.add_argument("--checkpoint", type=Path, required=True, help="a trained and evaluated checkpoint")
    x.add_argument("--out", type=Path, required=True, help="directory to write (must be new or empty)")
    x.add_argument("--force", action="store_true", help="replace a non-empty --out")
    x.set_defaults(func=_export)
    add_serve_parser(sub)

    v = sub.add_parser("visualize", help="PNG of the glance and the focus patches, with probabilities")
    v.add_argument("images", nargs="+", help="image files or folders")
    v.add_argument("--checkpoint", type=Path, required=True)
    v.add_argument("--out", type=Path, default=Path("patches.png"))
    v.add_argument("--budget", type=float, help="mark each image's exit step for this budget")
    v.add_argument("--device", default=None)
    v.set_defaults(func=_visualize)

    d = sub.add_parser("demo", help="train and evaluate the whole pipeline, write a report")
    d.add_argument("--data", default="builtin", help="ImageFolder root (default: built-in cluttered digits)")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--backbone", default=None, help="timm CNN (default efficientnet_lite0)")
    d.add_argument("--pretrained", default=None, help="false, true, lite0/lite1/lite2 or a weights file (default lite0)")
    d.add_argument("--device", default=None)
    d.add_argument("--policy-training", choices=get_args(PolicyTraining), default="ppo",
                   help="ppo: the paper's Stages I-III; differentiable: Stage I, then one end-to-end stage (beyond the paper)")
    d.add_argument("--patch-scale", choices=get_args(PatchScale), help="fixed (the paper) or learned region sides")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_demo)

    sub.add_parser("presets", help="list the named recipes").set_defaults(func=_presets)

    ir = sub.add_parser("import-release", help="convert an authors' published GFNet .pth.tar into a glancefocus checkpoint")
    ir.add_argument("release_checkpoint", type=Path, help="the authors' .pth.tar (read without running code from it)")
    ir.add_argument("--out", type=Path, required=True, help="the glancefocus checkpoint to write (.safetensors)")
    ir.set_defaults(func=_import_release)
    return parser


def _model_config(args: argparse.Namespace, source, num_classes: int, tc: TrainConfig) -> tuple[GFNetConfig, bool | str]:
    """The recipe's model with the flags given; ``--pretrained liteN`` alone picks that network,
    and differentiable policy training the differentiable crop."""
    from .recipes import RECIPES, recipe
    from .weights import Weights

    recipe_weights = RECIPES[args.preset].pretrained if args.preset else False
    pretrained = _pretrained(args.pretrained) if args.pretrained is not None else recipe_weights
    fields = {**given_fields(args, "model"), "num_classes": num_classes}
    if tc.policy_training == "differentiable":
        fields.setdefault("crop", "resample")
    weights = Weights.parse(pretrained)
    if weights is not None and not args.preset:
        fields.setdefault("backbone", weights.value.arch)
    config = recipe(args.preset or "default").model_config(source, **fields)
    return (weights.configure(config) if weights is not None else config), pretrained


def _train_config(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    given = given_fields(args, "train")
    if args.epochs is not None:
        for name in ("glance_epochs", "stage1_epochs", "stage2_epochs", "stage3_epochs", "end2end_epochs"):
            given.setdefault(name, args.epochs)
    batch_size = args.batch_size if args.batch_size is not None else base.batch_size
    return replace(base, **given, batch_size=batch_size, amp=args.amp, channels_last=args.channels_last,
                   ppo=replace(base.ppo, **given_fields(args, "ppo")))


def _train(args: argparse.Namespace) -> None:
    from .data import data_source
    from .distributed import init_world
    from .recipes import RECIPES
    from .runlog import RunLog
    from .trainer import Run
    from .pipeline import train
    from .stages import PIPELINES

    world = init_world(args.device)
    data = DataConfig(**given_fields(args, "data"))
    source = data_source(data.root)
    tc = _train_config(args, RECIPES[args.preset].train if args.preset else TrainConfig())
    config, pretrained = _model_config(args, source, len(source.classes()), tc)
    args.out.mkdir(parents=True, exist_ok=True)
    run = Run(args.out, world, resume=args.resume, log=RunLog(args.out, world), quiet=args.quiet)
    stages = STAGE_NAMES[args.stage] or PIPELINES[tc.policy_training]
    last, _ = train(config, stages, config=tc, data=data, run=run, pretrained=pretrained, init=args.init)
    run.log.close()
    if args.stage == "all":  # every process evaluates its shard; rank 0 writes
        _evaluate_into(last, world, data.root, batch_size=tc.batch_size, workers=data.workers,
                       channels_last=args.channels_last, amp=args.amp, quiet=args.quiet)


def _evaluate_into(checkpoint: Path, world, root: str | None, *, json_out: Path | None = None, plot: Path | None = None,
                   quiet: bool = False, **kw) -> dict:
    from .evaluate import evaluate_checkpoint

    json_out = json_out or checkpoint.with_suffix(".results.json")
    plot = plot or json_out.with_suffix(".png")
    results = evaluate_checkpoint(checkpoint, world=world, root=root, json_out=json_out, plot=plot, **kw)
    if world.is_main and not quiet:
        acc = " ".join(f"{a:.1f}" for a in results["anytime_accuracy"])
        madds = " ".join(f"{m / 1e6:.1f}" for m in results["madds"])
        print(f"anytime top-1 (%) per step: {acc}\nMAdds (M) per step: {madds}\nresults: {json_out}  plot: {plot}")
    return results


def _evaluate(args: argparse.Namespace) -> None:
    from .distributed import init_world

    data = given_fields(args, "data")
    _evaluate_into(
        args.checkpoint, init_world(args.device), data.get("root"), json_out=args.json, plot=args.plot, patches=args.patches,
        batch_size=args.batch_size, channels_last=args.channels_last, amp=args.amp,
        skip_bad_images=data.get("skip_bad_images", False), workers=data.get("workers"), quiet=args.quiet,
    )


def _load(checkpoint: Path, device: str | None, *, channels_last: bool = True):
    from .distributed import pick_device
    from .model import GFNet

    model, meta = GFNet.from_checkpoint(checkpoint, device=pick_device(device), channels_last=channels_last)
    return model.eval(), meta


def _predict(args: argparse.Namespace) -> None:
    from .runtime.predictions import report
    from .runtime.preprocess import image_files

    files = image_files(args.images)
    rows, skipped, point = (_predict_onnx if args.onnx else _predict_torch)(args, files)
    report(rows, point, skipped, args.json)


def _predict_torch(args: argparse.Namespace, files: list[Path]) -> tuple[list, list, dict]:
    from .inference import predict_files, select_thresholds
    from .trainer import AMP_DTYPES

    model, meta = _load(args.checkpoint, args.device, channels_last=args.channels_last)
    thresholds, point = select_thresholds(meta, args.budget)
    rows, skipped = predict_files(model, files, thresholds, meta.get("classes", []), batch_size=args.batch_size,
                                  amp=AMP_DTYPES.get(args.amp), skip_bad=args.skip_bad_images)
    return rows, skipped, point


def _predict_onnx(args: argparse.Namespace, files: list[Path]) -> tuple[list, list, dict]:
    from .runtime.deploy import OnnxGFNet

    model = OnnxGFNet(args.onnx, threads=args.threads)
    thresholds, point = model.thresholds(args.budget)
    rows, skipped = model.predict_files(files, thresholds, batch_size=args.batch_size, skip_bad=args.skip_bad_images)
    return rows, skipped, point


def _export(args: argparse.Namespace) -> None:
    from .runtime.deploy import MANIFEST
    from .export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, force=args.force)
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"wrote {out}: {files}\nrun it: glancefocus predict --onnx {out} IMAGES... (see {out / MANIFEST})")


def _visualize(args: argparse.Namespace) -> None:
    from .inference import load_images, select_thresholds
    from .plots import visualize
    from .runtime.preprocess import image_files

    model, meta = _load(args.checkpoint, args.device)
    files = image_files(args.images)
    images = load_images(files, model).to(next(model.parameters()).device)
    exits = None
    if args.budget is not None:
        exits = model.predict(images, select_thresholds(meta, args.budget)[0]).exit_step
    visualize(model, images, args.out, classes=meta.get("classes", []), titles=[f.name for f in files], exit_steps=exits)
    print(f"wrote {args.out}")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo
    from .distributed import init_world
    from .recipes import RECIPES

    demo = RECIPES["demo"]
    if args.pretrained is not None:
        demo = replace(demo, pretrained=_pretrained(args.pretrained))
    if args.policy_training == "differentiable":  # the differentiable crop, as `train` implies it
        demo = replace(demo, model=replace(demo.model, crop="resample"), train=replace(demo.train, policy_training="differentiable"))
    if args.patch_scale is not None:
        demo = replace(demo, model=replace(demo.model, patch_scale=args.patch_scale))
    run_demo(demo, args.data, args.out, world=init_world(args.device), backbone=args.backbone, quiet=args.quiet)


def _presets(args: argparse.Namespace) -> None:
    from .recipes import RECIPES

    for name, r in RECIPES.items():
        cfg = r.model
        image = f"{cfg.image_size} (or the data's own size)" if r.sized_by_data else cfg.image_size
        print(f"{name:32s} backbone={cfg.backbone} patch={cfg.patch_size} T={cfg.T} image={image}  ({r.description})")


def _import_release(args: argparse.Namespace) -> None:
    from .checkpoint import read_meta
    from .release import import_release

    model = import_release(args.release_checkpoint, args.out)
    cfg = model.config
    kept = "with" if "results" in read_meta(args.out) else "without (run evaluate to set them)"
    print(f"wrote {args.out}: {cfg.backbone} patch {cfg.patch_size} T={cfg.T}, {kept} the release's thresholds")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        print(f"glancefocus: error: {_message(e)}", file=sys.stderr)
        return 2
    return 0


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors reported as a message, not a traceback; NonFiniteLoss only where training ran
    (importing the trainer would import torch)."""
    trainer = sys.modules.get(f"{__package__}.trainer")
    return (ValueError, FileNotFoundError, ImportError, *((trainer.NonFiniteLoss,) if trainer else ()))


def _message(error: Exception) -> str:
    """The error's own message; a DataLoader worker's error arrives wrapped with the worker's
    traceback ("Caught ValueError in DataLoader worker ..."), whose last line is the message."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]  # "module.ErrorClass: message"
        return re.sub(r"^[\w.]+: ", "", last, count=1)
    return text


if __name__ == "__main__":
    sys.exit(main())
