"""The ``glancefocus`` argument parser: one subparser per subcommand, its function set as
``func``; the model, training and data flags are made from the config fields (:mod:`.flags`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from ..config import (Amp, DataConfig, GFNetConfig, Patches, PatchScale, PolicyTraining, PPOConfig, Quantization,
                      TrainConfig)
from ..export.quantize import CALIBRATION_IMAGES, MIN_IMAGES
from ..runtime.serve_cli import add_serve_parser
from . import commands
from .flags import add_fields


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
    t.add_argument("--stage", choices=list(commands.STAGE_NAMES), required=True)
    t.add_argument("--out", type=Path, default=Path("runs/gfnet"), help="folder for checkpoints and logs")
    t.add_argument("--init", type=Path, help="checkpoint to start from (default: the previous stage's in --out)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoints in --out")
    g = t.add_argument_group("model")
    g.add_argument("--recipe", help="a named recipe (`glancefocus recipes` lists them; default: default)")
    add_fields(g, GFNetConfig, "model", only=("backbone", "patch_size", "T", "image_size", "classifier", "policy_trunk",
                                              "drop_rate", "drop_path_rate", "resize_interpolation", "patch_scale",
                                              "scale_range", "crop", "reads"))
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
    t.set_defaults(func=commands.train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glancefocus", description="GFNet: Glance and Focus Networks")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_train_parser, _evaluate_parser, _predict_parser, _export_parser, add_serve_parser, _visualize_parser,
                _demo_parser, _release_parsers):
        add(sub)
    return parser


def _evaluate_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="anytime and budgeted evaluation of a checkpoint")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--json", type=Path, help="write the results here")
    e.add_argument("--plot", type=Path, help="accuracy-vs-MAdds PNG (default: next to --json)")
    e.add_argument("--patches", choices=get_args(Patches), default="learned",
                   help="focus patches: π's (learned), uniformly random, or centre then corners (fixed)")
    _data_options(e, default_root=None)
    _run_options(e, batch_size=256)
    e.set_defaults(func=commands.evaluate)


def _predict_parser(sub) -> None:
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
    pr.set_defaults(func=commands.predict)


def _export_parser(sub) -> None:
    x = sub.add_parser("export", help="ONNX graphs of a trained GFNet, for early exit under ONNX Runtime")
    x.add_argument("--checkpoint", type=Path, required=True, help="a trained and evaluated checkpoint")
    x.add_argument("--out", type=Path, required=True, help="directory to write (must be new or empty)")
    x.add_argument("--force", action="store_true", help="replace a non-empty --out")
    q = x.add_argument_group("int8 quantization (ONNX Runtime static, QDQ; docs/deploying.md)")
    q.add_argument("--quantize", choices=get_args(Quantization),
                   help="int8: int8 weights per channel and uint8 activations (ranges: the central 99.99 %% of the "
                        "calibration values) for Conv/MatMul/Gemm, the stem left fp32, thresholds found again on "
                        "the calibration images (default: fp32)")
    q.add_argument("--calibration-data", type=Path, metavar="DIR",
                   help="with --quantize: held-out training images (an ImageFolder tree or a folder of images, "
                        "not the val set) to calibrate the activations and set the thresholds on")
    q.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES, metavar="N",
                   help=f"with --quantize: use at most N images of DIR, evenly spaced (default {CALIBRATION_IMAGES}; "
                        f"at least {MIN_IMAGES})")
    x.set_defaults(func=commands.export)


def _visualize_parser(sub) -> None:
    v = sub.add_parser("visualize", help="PNG of the glance and the focus patches, with probabilities")
    v.add_argument("images", nargs="+", help="image files or folders")
    v.add_argument("--checkpoint", type=Path, required=True)
    v.add_argument("--out", type=Path, default=Path("patches.png"))
    v.add_argument("--budget", type=float, help="mark each image's exit step for this budget")
    v.add_argument("--device", default=None)
    v.set_defaults(func=commands.visualize)


def _demo_parser(sub) -> None:
    d = sub.add_parser("demo", help="train and evaluate the whole pipeline, write a report")
    d.add_argument("--data", default="builtin", help="ImageFolder root (default: built-in cluttered digits)")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--backbone", default=None, help="timm CNN (default efficientnet_lite0)")
    d.add_argument("--pretrained", default=None, help="false, true, lite0/lite1/lite2 or a weights file (default lite0)")
    d.add_argument("--device", default=None)
    d.add_argument("--policy-training", choices=get_args(PolicyTraining),
                   help="ppo: the paper's Stages I-III; differentiable: Stage I, then one end-to-end stage (beyond the paper)")
    d.add_argument("--patch-scale", choices=get_args(PatchScale), help="fixed (the paper) or learned region sides")
    d.add_argument("--seed", type=int, help="seed of the model's initial weights, data order and augmentation (default 0)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=commands.demo)


def _release_parsers(sub) -> None:
    """The recipes and the authors' checkpoints: ``recipes`` and ``import-release``."""
    sub.add_parser("recipes", help="list the named recipes").set_defaults(func=commands.recipes)

    ir = sub.add_parser("import-release", help="convert an authors' published GFNet .pth.tar into a glancefocus checkpoint")
    ir.add_argument("release_checkpoint", type=Path, help="the authors' .pth.tar (read without running code from it)")
    ir.add_argument("--out", type=Path, required=True, help="the glancefocus checkpoint to write (.safetensors)")
    ir.set_defaults(func=commands.import_release)
