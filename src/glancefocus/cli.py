"""Command-line interface: ``glancefocus {train,evaluate,predict,visualize,demo,presets}``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import TrainConfig
from .data import BUILTIN
from .distributed import init_world
from .engine import Context, NonFiniteLoss, RunLog
from .presets import PRESETS, preset_config
from .pretrained import PACKAGE_WEIGHTS


def _add_run_options(p: argparse.ArgumentParser, *, loads_data: bool = True) -> None:
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda if available)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="mixed precision")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (default 256)")
    if loads_data:
        p.add_argument("--workers", type=int, default=None, help="data-loading processes per training process")
        p.add_argument("--skip-bad-images", action="store_true", help="drop unreadable or too small images (counted)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format (default; faster convolutions on CPU and with AMP on GPU)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", help=f"a Table 2 configuration: {', '.join(PRESETS)}")
    g.add_argument("--backbone", help="any timm CNN name (default resnet50, the preset's, or that of --pretrained liteN)")
    g.add_argument("--patch-size", type=int, help="H' = W' of the glance and of the focus patches")
    g.add_argument("--T", type=int, help="maximum number of steps")
    g.add_argument("--image-size", type=int, help="full image side H = W")
    g.add_argument("--classifier", choices=["gru", "cascade"], help="fC variant (default: the family's)")
    g.add_argument("--policy", choices=["mlp", "conv"], help="π trunk (default: the family's)")
    g.add_argument(
        "--pretrained", default="false",
        help="encoder initialisation: false, true (timm hub), lite0/lite1/lite2 (offline packages) or a weights file",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glancefocus", description="GFNet: Glance and Focus Networks")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one stage, or the whole pipeline")
    t.add_argument("--stage", choices=["glance", "1", "2", "3", "all"], required=True)
    t.add_argument("--data", default=BUILTIN, help="ImageFolder root with train/ and val/ (default: built-in data)")
    t.add_argument("--out", type=Path, default=Path("runs/gfnet"), help="folder for checkpoints and logs")
    t.add_argument("--init", type=Path, help="checkpoint to start from (default: the previous stage's in --out)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoints in --out")
    _add_model_options(t)
    g = t.add_argument_group("optimisation (defaults: appendix A.2/A.3 for the backbone family)")
    g.add_argument("--epochs", type=int, help="epochs of every stage (overrides the per-stage values)")
    g.add_argument("--glance-epochs", type=int)
    g.add_argument("--stage1-epochs", type=int)
    g.add_argument("--stage2-epochs", type=int)
    g.add_argument("--stage3-epochs", type=int)
    g.add_argument("--lr-classifier", type=float)
    g.add_argument("--lr-encoder", type=float)
    g.add_argument("--glance-lr", type=float)
    g.add_argument("--holdout", type=float, default=0.1, help="fraction of training images held out")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    g.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap batches per epoch (quick runs)")
    g.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    _add_run_options(t)

    e = sub.add_parser("evaluate", help="anytime and budgeted evaluation of a checkpoint")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--data", default=None, help="ImageFolder root (default: the data it was trained on)")
    e.add_argument("--json", type=Path, help="write the results here")
    e.add_argument("--plot", type=Path, help="accuracy-vs-MAdds PNG (default: next to --json)")
    e.add_argument("--policy", choices=["learned", "random", "fixed"], default="learned")
    _add_run_options(e)

    pr = sub.add_parser("predict", help="early-exit classification of image files")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--checkpoint", type=Path, required=True)
    pr.add_argument("--budget", type=float, help="target mean multiply-adds per image (picks stored thresholds)")
    pr.add_argument("--json", type=Path, help="write the predictions here")
    _add_run_options(pr, loads_data=False)

    v = sub.add_parser("visualize", help="PNG of the glance and the focus patches, with probabilities")
    v.add_argument("images", nargs="+", help="image files or folders")
    v.add_argument("--checkpoint", type=Path, required=True)
    v.add_argument("--out", type=Path, default=Path("patches.png"))
    v.add_argument("--budget", type=float, help="mark each image's exit step for this budget")
    v.add_argument("--device", default=None)

    d = sub.add_parser("demo", help="train and evaluate the whole pipeline, write a report")
    d.add_argument("--data", default=BUILTIN, help="ImageFolder root (default: built-in cluttered digits)")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--backbone", default=None, help="timm CNN (default efficientnet_lite0)")
    d.add_argument("--pretrained", default=None, help="false, true, lite0/lite1/lite2 or a weights file (default lite0)")
    d.add_argument("--device", default=None)
    d.add_argument("--quiet", action="store_true")

    sub.add_parser("presets", help="list the Table 2 presets")
    return parser


def _pretrained(value: str) -> bool | str:
    return {"false": False, "no": False, "none": False, "true": True, "yes": True}.get(value.lower(), value)


def _train(args: argparse.Namespace) -> None:
    from .pipeline import STAGES, dataset_classes, default_model_config, train
    from .stages import default_workers

    world = init_world(args.device)
    classes = dataset_classes(args.data)
    pretrained = _pretrained(args.pretrained)
    backbone = args.backbone
    if backbone is None and not args.preset and isinstance(pretrained, str):
        backbone = PACKAGE_WEIGHTS.get(pretrained)  # --pretrained lite0 alone means that network
    fields = {
        "backbone": backbone, "patch_size": args.patch_size, "T": args.T, "image_size": args.image_size,
        "classifier": args.classifier, "policy": args.policy, "num_classes": len(classes),
    }
    if args.preset:
        config = preset_config(args.preset, **fields)
    else:
        config = default_model_config(args.data, **fields)
    epochs = args.epochs
    tc = TrainConfig(
        batch_size=args.batch_size or 256,
        holdout=args.holdout,
        seed=args.seed,
        amp=args.amp,
        checkpoint_every=args.checkpoint_every,
        max_steps_per_epoch=args.max_steps_per_epoch,
        skip_bad_images=args.skip_bad_images,
        channels_last=args.channels_last,
        compile=args.compile,
        workers=args.workers if args.workers is not None else default_workers(args.data, world.device),
        glance_epochs=_given(args.glance_epochs, epochs, 5),
        stage1_epochs=_given(args.stage1_epochs, epochs),
        stage3_epochs=_given(args.stage3_epochs, epochs),
        lr_encoder=args.lr_encoder,
        glance_lr=args.glance_lr,
        **({"lr_classifier": args.lr_classifier} if args.lr_classifier is not None else {}),
    )
    if (stage2_epochs := _given(args.stage2_epochs, epochs)) is not None:
        tc.ppo.epochs = stage2_epochs
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        out_dir=args.out, world=world, amp=args.amp, resume=args.resume, checkpoint_every=args.checkpoint_every,
        max_steps_per_epoch=args.max_steps_per_epoch, log=RunLog(args.out, world), quiet=args.quiet,
    )
    stages = list(STAGES) if args.stage == "all" else [args.stage]
    last, _ = train(stages, config=config, tc=tc, data=args.data, ctx=ctx, init=args.init, pretrained=pretrained)
    ctx.log.close()
    if args.stage == "all":  # every process evaluates its shard; rank 0 writes
        _evaluate_into(last, ctx, args.data, channels_last=args.channels_last, batch_size=tc.batch_size, workers=tc.workers)


def _given(*values):
    """The first value that is not None (so an explicit 0 counts)."""
    return next((v for v in values if v is not None), None)


def _evaluate_into(checkpoint: Path, ctx: Context, data: str | None, **kw) -> dict:
    from .pipeline import evaluate_checkpoint

    json_out = kw.pop("json_out", None) or checkpoint.with_suffix(".results.json")
    plot = kw.pop("plot", None) or json_out.with_suffix(".png")
    results = evaluate_checkpoint(checkpoint, ctx=ctx, data=data, json_out=json_out, plot=plot, **kw)
    if ctx.world.is_main:
        acc = " ".join(f"{a:.1f}" for a in results["anytime_accuracy"])
        madds = " ".join(f"{m / 1e6:.1f}" for m in results["madds"])
        print(f"anytime top-1 (%) per step: {acc}\nMAdds (M) per step: {madds}\nresults: {json_out}  plot: {plot}")
    return results


def _evaluate(args: argparse.Namespace) -> None:
    from .stages import default_workers

    world = init_world(args.device)
    ctx = Context(out_dir=args.checkpoint.parent, world=world, amp=args.amp, quiet=args.quiet)
    _evaluate_into(
        args.checkpoint, ctx, args.data, json_out=args.json, plot=args.plot, policy=args.policy,
        batch_size=args.batch_size or 256, channels_last=args.channels_last, skip_bad_images=args.skip_bad_images,
        workers=args.workers if args.workers is not None else default_workers(args.data or "", world.device),
    )


def _load(checkpoint: Path, device: str | None, *, channels_last: bool = True):
    from .distributed import pick_device
    from .pipeline import load_model

    model, meta = load_model(checkpoint, pick_device(device), channels_last=channels_last)
    return model.eval(), meta


def _predict(args: argparse.Namespace) -> None:
    import json

    import torch

    from .checkpoint import atomic_write_text
    from .inference import image_files, predict_files, select_thresholds

    model, meta = _load(args.checkpoint, args.device, channels_last=args.channels_last)
    thresholds, point = select_thresholds(meta, args.budget)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    rows = predict_files(model, image_files(args.images), thresholds, meta.get("classes", []),
                         batch_size=args.batch_size or 64, amp=amp)
    for r in rows:
        print(f"{r['file']}\t{r['class']}\tp={r['probability']:.3f}\texit step {r['exit_step']}\t{r['madds'] / 1e6:.1f} MMAdds")
    mean = sum(r["madds"] for r in rows) / len(rows)
    print(f"{len(rows)} images, mean {mean / 1e6:.1f} MMAdds (budget point q={point['q']}: {point['madds'] / 1e6:.1f} M, {point['accuracy']:.1f}% on val)")
    if args.json:
        atomic_write_text(args.json, json.dumps({"budget_point": point, "predictions": rows}, indent=2))


def _visualize(args: argparse.Namespace) -> None:
    from .inference import image_files, load_images, select_thresholds
    from .visualize import visualize

    model, meta = _load(args.checkpoint, args.device)
    files = image_files(args.images)
    images = load_images(files, model).to(next(model.parameters()).device)
    exits = None
    if args.budget is not None:
        exits = model.predict(images, select_thresholds(meta, args.budget)[0]).exit_step
    visualize(model, images, args.out, classes=meta.get("classes", []), titles=[f.name for f in files], exit_steps=exits)
    print(f"wrote {args.out}")


def _demo(args: argparse.Namespace) -> None:
    from .demo import DemoConfig, run_demo

    demo = DemoConfig()
    if args.backbone:
        demo.backbone = args.backbone
    if args.pretrained is not None:
        demo.pretrained = _pretrained(args.pretrained)
    run_demo(args.data, args.out, world=init_world(args.device), demo=demo, quiet=args.quiet)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "predict":
            _predict(args)
        elif args.command == "visualize":
            _visualize(args)
        elif args.command == "demo":
            _demo(args)
        elif args.command == "presets":
            for name, cfg in PRESETS.items():
                print(f"{name:32s} backbone={cfg.backbone} patch={cfg.patch_size} T={cfg.T} image={cfg.image_size}")
    except (ValueError, FileNotFoundError, NonFiniteLoss) as e:
        print(f"glancefocus: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
