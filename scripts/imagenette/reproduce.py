"""Measured reproduction of GFNet on Imagenette with offline EfficientNet-Lite0 weights.

    python -m scripts.imagenette reproduce --data ../shared/data/imagenette --out results/imagenette

Trains a GFNet (tf_efficientnet_lite0, 224 px images, 96 px patches, T = 4) with the
``imagenette-lite0`` recipe, the authors' release's (dropout and drop-path, rates scaled from
batch 256, its augmentation): the glance fine-tune until its held-out accuracy stops
improving, Stage I for appendix A.3's 30 epochs (evaluated after epochs 5, 10, 20 and 30:
the learning curve), Stage II for 15, and Stage III with ``--stage3`` (appendix A.3 skips it
for EfficientNet; with it both models are reported).  The static backbone is fine-tuned at
96..224 px with the same recipe until its held-out accuracy stops improving.  Writes JSON +
PNG results; the ``table`` subcommand prints RESULTS.md's tables from them.  An option left
out takes the recipe's value (``glancefocus.config.recipes.resolve``), shown in ``--help``.

Levers beyond the paper's recipe, each recorded in results.json: ``--patch-size 128``,
``--T 5``, ``--stage3``, ``--distill W`` (the static 224 px model's soft targets teach fL
and fC in Stages I/III), ``--train-glance`` (fG trainable in Stage I), and for Stage II
``--stage2-images plain``, ``--ppo-lr`` and ``--ppo-baseline greedy``.  A lever run of its
own (``--work runs/lever-NAME --out results/imagenette/levers/NAME --stop-after stage1
--skip-static``, the same ``--stage1-epochs`` for every run) is compared with the others in
the report's levers table; one that goes on to Stage II or III (``--no-grid`` skips the
step-2 grid of places) also in its Stage II table.  ``--policy-bound N`` measures how far
π's first place can go: copies of π fitted on N training images to the exact step-2
objective over the grid (``policy_bound.py``).

Resumable and splittable: a rerun continues from ``--work``.  Each finished part (the glance
fine-tune, the learning curve, each model's evaluation, each static size) is also written
under ``--out/parts/``; ``--stop-after STAGE --export FILE`` ends after STAGE with its weights
in FILE (weights only, safetensors), and ``--from-weights FILE`` continues from such a file
on a machine with no ``--work`` (with ``--out/parts/`` from the earlier invocations);
``--skip-static`` and ``--static-only`` put the static baselines in an invocation of their own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import get_args

from glancefocus import GFNet
from glancefocus.models.checkpoint import load_checkpoint, read_meta
from glancefocus.runtime.files import atomic_write, atomic_write_text
from glancefocus.config import DataConfig, PatchScale, PolicyTraining, PPOBaseline, Stage2Images, TrainConfig
from glancefocus.distributed import init_world
from glancefocus.config.recipes import Resolved, resolve
from glancefocus.training.runlog import RunLog
from glancefocus.training.trainer import Run
from glancefocus.training.pipeline import fit, new_model
from glancefocus.training.stages import PIPELINES, STAGES
from glancefocus.config.weights import imagenet_indices

from .data import load_imagenette
from .grid import location_grid
from .heads import pretrained_head
from .parts import Parts, StaticModels, assemble, evaluate_gfnet, learning_curve, policy_curve, write_outputs
from .policy_bound import policy_bound
from .report import markdown_table

RECIPE = "imagenette-lite0"


def options() -> argparse.ArgumentParser:
    """The run's options, shared by ``reproduce`` and ``gather`` (which records them)."""
    p = argparse.ArgumentParser(add_help=False)
    d = resolve(RECIPE)  # an option left out (None) takes the recipe's value, resolved for its family: shown in its help
    p.add_argument("--data", type=Path, default=Path("../shared/data/imagenette"))
    p.add_argument("--out", type=Path, default=Path("results/imagenette"))
    p.add_argument("--work", type=Path, default=Path("runs/imagenette"), help="checkpoints, logs, decoded-image cache")
    p.add_argument("--T", type=int, help=f"steps (the recipe's: {d.model.T})")
    p.add_argument("--patch-size", type=int, help=f"the recipe's: {d.model.patch_size}")
    p.add_argument("--batch-size", type=int, help=f"the recipe's: {d.train.batch_size}")
    p.add_argument("--glance-epochs", type=int, help=f"most epochs of the glance fine-tune (the recipe's: {d.train.glance_epochs})")
    p.add_argument("--glance-patience", type=int,
                   help=f"stop the glance fine-tune after this many epochs without gain (the recipe's: {d.train.glance_patience})")
    p.add_argument("--stage1-epochs", type=int, help=f"the recipe's: {d.train.stage1_epochs}, appendix A.3's for EfficientNet")
    p.add_argument("--curve-epochs", type=int, nargs="+", default=[5, 10, 20, 30], help="Stage I epochs evaluated on val")
    p.add_argument("--stage2-epochs", type=int, help=f"the recipe's: {d.train.stage2_epochs}, appendix A.2's")
    p.add_argument("--stage2-curve-epochs", type=int, nargs="*", default=[],
                   help="Stage II epochs whose π is also evaluated on val (learned, random and fixed patches), whatever epoch is kept")
    p.add_argument("--stage2-images", choices=get_args(Stage2Images),
                   help="Stage II rolls out on augmented training images (the release) or on them as evaluation crops them "
                        "(beyond the paper)")
    p.add_argument("--ppo-lr", type=float, help=f"Adam LR of π in Stage II (the recipe's: {d.train.ppo.lr:g}, appendix A.2's)")
    p.add_argument("--ppo-baseline", choices=get_args(PPOBaseline),
                   help="Stage II advantage baseline: the critic (Eq. 7) or π's mean locations on the same image (beyond the paper)")
    p.add_argument("--policy-training", choices=get_args(PolicyTraining),
                   help="ppo: the paper's Stages I-III; differentiable: one end-to-end stage after the glance fine-tune (beyond the paper)")
    p.add_argument("--patch-scale", choices=get_args(PatchScale),
                   help="focus region side: fixed (the patch size) or learned by π within --scale-range (beyond the paper)")
    p.add_argument("--scale-range", type=int, nargs=2, metavar=("LO", "HI"), help="region sides of a learned scale (default: P, 224)")
    p.add_argument("--end2end-epochs", type=int, help="epochs of the end-to-end stage")
    p.add_argument("--end2end-random", type=float, help="end-to-end stage: fraction of images reading random regions")
    p.add_argument("--end2end-after", choices=["glance", "stage1"], default="stage1",
                   help="what the end-to-end stage starts from: a Stage I on random regions (the library's pipeline: fL and "
                        "fC have read every place and scale before π chooses), or the glance fine-tune (AdaFocusV2's one stage)")
    p.add_argument("--lr-policy", type=float, help="end-to-end stage: π's SGD LR (at batch 256)")
    p.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True,
                   help="measure step 2 over a 7×7 grid of places after Stages II and III (lever runs may skip it)")
    p.add_argument("--policy-bound", type=int, default=0, metavar="IMAGES",
                   help="after Stages II and III, also fit copies of π to the exact step-2 reward (and to step 2's correctness) over "
                        "the 7×7 grid on this many training images and measure them on val: how far π's first place can go (0: skip)")
    p.add_argument("--stage3", action=argparse.BooleanOptionalAction,
                   help="also run Stage III (the recipe skips it for EfficientNet, as appendix A.3 does) and report both models")
    p.add_argument("--stage3-epochs", type=int, default=5, help="this reproduction's Stage III (the family's would be Stage I's 30)")
    p.add_argument("--distill", type=float,
                   help=f"weight of distillation from the static 224 px model in Stages I/III (beyond the paper; the recipe's: {d.train.distill_weight:g}, none)")
    p.add_argument("--train-glance", action="store_true", help="fG trainable in Stage I (beyond the paper for EfficientNet)")
    p.add_argument("--static-epochs", type=int, default=30, help="most fine-tuning epochs of each static baseline")
    p.add_argument("--static-patience", type=int, default=2, help="stop a static baseline after this many epochs without gain")
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160, 192, 224])
    p.add_argument("--skip-static", action="store_true", help="train no static baseline in this invocation")
    p.add_argument("--static-only", action="store_true", help="train only the static baselines in this invocation")
    p.add_argument("--stop-after", choices=[*STAGES, "static"], help="end this invocation after this part")
    p.add_argument("--export", type=Path, help="write the last GFNet stage's weights here (weights only, safetensors)")
    p.add_argument("--from-weights", type=Path, help="continue after the stage whose weights (from --export) this file holds")
    p.add_argument("--amp", choices=["none", "bf16"], help=f"mixed precision of training (the recipe's: {d.train.amp})")
    p.add_argument("--limit", type=int, default=0, help="use only this many train and val images (smoke runs)")
    p.add_argument("--workers", type=int, default=0, help="in-memory data: loader processes would only compete with compute")
    return p


def configs(args: argparse.Namespace) -> Resolved:
    """The recipe with this command's options.  The options left to the recipe are then set
    to its values, so that what the run records (results.json's command and recipe) is what ran."""
    r = resolve(RECIPE, model={"patch_size": args.patch_size, "T": args.T, "patch_scale": args.patch_scale,
                               "scale_range": tuple(args.scale_range) if args.scale_range else None,
                               "crop": "resample" if args.patch_scale == "learned" else None},
                train={"batch_size": args.batch_size, "glance_epochs": args.glance_epochs, "glance_patience": args.glance_patience,
                       "stage1_epochs": args.stage1_epochs, "stage2_epochs": args.stage2_epochs,
                       "stage3_epochs": args.stage3_epochs, "run_stage3": args.stage3, "distill_weight": args.distill,
                       "amp": args.amp, "stage2_images": args.stage2_images, "policy_training": args.policy_training,
                       "end2end_epochs": args.end2end_epochs, "end2end_random": args.end2end_random, "lr_policy": args.lr_policy,
                       "freeze_glance": False if args.train_glance else None},
                ppo={"lr": args.ppo_lr, "baseline": args.ppo_baseline})
    m, t = r.model, r.train
    filled = {"T": m.T, "patch_size": m.patch_size, "batch_size": t.batch_size, "glance_epochs": t.glance_epochs,
              "glance_patience": t.glance_patience, "stage1_epochs": t.stage1_epochs, "stage2_epochs": t.stage2_epochs,
              "stage2_images": t.stage2_images, "ppo_lr": t.ppo.lr, "ppo_baseline": t.ppo.baseline, "policy_training": t.policy_training,
              "patch_scale": m.patch_scale, "end2end_epochs": t.end2end_epochs, "end2end_random": t.end2end_random,
              "lr_policy": t.lr_policy, "stage3": t.run_stage3, "distill": t.distill_weight, "amp": t.amp}
    for name, value in filled.items():
        setattr(args, name, value)
    return r


def levers(args: argparse.Namespace, model: GFNet, c: TrainConfig) -> dict:
    """What this run's recipe is, for results.json."""
    cfg = model.config
    return {"patch_size": cfg.patch_size, "T": cfg.T, "stage3": args.stage3, "distill_weight": args.distill,
            "glance_trainable_in_stage1": not c.freeze_glance, "drop_rate": cfg.drop_rate, "drop_path_rate": cfg.drop_path_rate,
            "lr_scale": c.lr_scale, "resize_interpolation": cfg.resize_interpolation, "stage3_locations": c.stage3_locations,
            "amp": c.amp, "stage1_epochs": c.stage1_epochs, "stage2_epochs": c.stage2_epochs,
            "stage2_images": c.stage2_images, "ppo_lr": c.ppo.lr, "ppo_baseline": c.ppo.baseline,
            "policy_training": c.policy_training, "patch_scale": cfg.patch_scale, "scale_range": cfg.scale_range, "crop": cfg.crop,
            "end2end_epochs": c.end2end_epochs if c.policy_training == "differentiable" else 0, "end2end_random": c.end2end_random,
            "lr_policy": c.lr_policy, "end2end_after": args.end2end_after if c.policy_training == "differentiable" else None}


def import_weights(path: Path | None, run: Run) -> str | None:
    """Put an exported stage's weights where ``fit`` finds a finished stage; returns its name."""
    if path is None:
        return None
    stage = read_meta(path)["stage"]
    if stage not in STAGES:
        raise SystemExit(f"{path} holds {stage!r} weights, not a GFNet stage's ({', '.join(STAGES)})")
    target = run.checkpoint(stage)
    if not target.exists():  # atomic: a finished stage's file is never half there
        atomic_write(target, lambda tmp: shutil.copyfile(path, tmp))
    print(f"continuing after {stage} from {path}")
    return stage


def export(path: Path, run: Run, stage: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # weights and metadata only: resume state lives beside, in .state.pt
    atomic_write(path, lambda tmp: shutil.copyfile(run.checkpoint(stage), tmp))
    print(f"wrote {stage}'s weights to {path}")


def measure(stage: str, args, model: GFNet, splits, run: Run, tc: TrainConfig, parts: Parts) -> None:
    """What is reported of a stage, once: the glance fine-tune's epochs, Stage I's learning
    curve; after Stages II and III, the model's evaluation and step 2 over a grid of places."""
    if stage == "glance":
        wanted = {"glance": lambda: glance_epochs(run)}
    elif stage == "stage1":
        wanted = {"learning_curve": lambda: learning_curve(model, splits, run, tc.batch_size, args.curve_epochs, tc.stage1_epochs)}
    else:
        wanted = {f"gfnet_{stage}": lambda: evaluate_gfnet(model, splits, run, tc.batch_size)}
        if args.grid:
            wanted[f"location_grid_{stage}"] = lambda: location_grid(model, splits, run, tc.batch_size)
        if args.policy_bound:
            wanted[f"policy_bound_{stage}"] = lambda: policy_bound(model, splits, run, tc.batch_size, images=args.policy_bound)
        if stage == "stage2" and args.stage2_curve_epochs:
            wanted["stage2_curve"] = lambda: policy_curve(model, splits, run, tc.batch_size, args.stage2_curve_epochs)
    for name, measured in wanted.items():
        if not parts.has(name):
            parts.save(name, measured())


def glance_epochs(run: Run) -> dict:
    history = read_meta(run.checkpoint("glance"))["history"]
    return {"epochs": len(history), "kept_epoch": max(history, key=lambda m: m["heldout_accuracy"])["epoch"]}


def train_gfnet(args, model: GFNet, splits, run: Run, tc: TrainConfig, parts: Parts, teacher) -> str | None:
    """The stages not yet done, each followed by what is measured of it; returns the last
    stage trained or imported (None: stopped before any)."""
    skipped = set() if args.stage3 else {"stage3"}
    if not model.config.whole_size:
        skipped.add("whole")  # the paper's plan has no whole-image read to fine-tune fW for
    if args.policy_training == "differentiable" and args.end2end_after == "glance":
        skipped.add("stage1")  # AdaFocusV2's one stage, from the glance fine-tune
    order = [s for s in PIPELINES[args.policy_training] if s not in skipped]
    done = import_weights(args.from_weights, run)
    if done is not None and done not in order:
        raise SystemExit(f"{args.from_weights} holds {done} weights: pass --stage3 to continue from them")
    data = DataConfig(root=str(args.data), workers=args.workers)
    last = done
    for stage in order[order.index(done) + 1 if done else 0:]:
        kept = {"stage1": [e for e in args.curve_epochs if e < tc.stage1_epochs], "stage2": args.stage2_curve_epochs}.get(stage, [])
        config = replace(tc, keep_epochs=tuple(kept))
        finished, started = run.checkpoint(stage).exists(), time.time()
        init = run.checkpoint(order[order.index(stage) - 1]) if stage == "end2end" else None  # glance or stage1
        fit(model, splits, [stage], config=config, run=run, data=data, teacher=teacher, init=init)  # loads a finished stage
        if not finished:
            parts.timing(stage, time.time() - started)
        last = stage
        measure(stage, args, model, splits, run, tc, parts)
        if stage == args.stop_after:
            break
    if last is not None and last == done:  # nothing trained here: the imported weights are the model
        model.load_state_dict(load_checkpoint(run.checkpoint(done), device=run.world.device)[0])
    if args.export and last is not None:
        export(args.export, run, last)
    return last


def _run(args: argparse.Namespace) -> Run:
    args.work.mkdir(parents=True, exist_ok=True)
    world = init_world()
    # resume=True: a rerun continues each stage from its last checkpoint (finished ones are kept).
    return Run(args.work, world, resume=True, log=RunLog(args.work, world))


def gather(args: argparse.Namespace) -> None:
    """Reassemble ``--out/results.json`` from ``--out/parts`` and the variant runs (no data read)."""
    model, run, parts = GFNet(configs(args).model), _run(args), Parts(args.out / "parts")
    report = assemble(args, model, "stage3", run, parts, parts.load("recipe"))
    earlier = args.out / "results.json"
    if earlier.exists():  # gather trains and draws nothing: the command and figures stay those of the run
        report.update({k: v for k, v in json.loads(earlier.read_text()).items() if k in ("command", "figures_from")})
    atomic_write_text(args.out / "results.json", json.dumps(report, indent=2))
    print(markdown_table(report))


def reproduce(args: argparse.Namespace) -> None:
    """Train and measure what is not done yet; with the last part, write results.json and the figures."""
    started, run, r = time.time(), _run(args), configs(args)
    world, tc, parts = run.world, r.train, Parts(args.out / "parts")
    model = new_model(r.model, pretrained=r.pretrained, seed=tc.seed)
    splits = load_imagenette(args.data, args.work / "cache", model.config, seed=tc.seed, holdout=DataConfig().holdout, limit=args.limit)
    recipe = levers(args, model, tc)
    if not args.static_only:  # what a lever run under --out/levers/ is, for the report's levers table
        parts.save("recipe", recipe)
    rows = imagenet_indices(splits.classes)
    for encoder in (model.global_encoder, model.local_encoder):
        pretrained_head(encoder.model, rows)
    statics = StaticModels(args, model, splits, run, rows, tc, parts)
    teacher = statics.model(224) if args.distill and not args.static_only else None
    last = None if args.static_only else train_gfnet(args, model, splits, run, tc, parts, teacher)
    if args.stop_after in STAGES:
        return
    if not args.skip_static:
        for size in args.sizes:
            statics.result(size)
    if args.stop_after == "static" or args.static_only or last is None:
        return
    parts.timing(f"invocation ending at {time.strftime('%Y-%m-%d %H:%M')}", time.time() - started)
    report = assemble(args, model, last, run, parts, recipe)
    write_outputs(args, report, model, splits, world.device)
    print(markdown_table(report))
