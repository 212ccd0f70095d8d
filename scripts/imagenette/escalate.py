"""Steps that escalate to more pixels, measured on Imagenette against the plain cascade.

    python -m scripts.imagenette escalate --reads glance,patch,whole:224 --name glance-patch-whole224
    python -m scripts.imagenette cascade --sizes 160 224

``escalate`` trains a GFNet whose plan of reads (``GFNetConfig.reads``) ends with whole-image
reads, from the committed recipe's weights (``--from-weights``) and the static model at R px
(``--work/staticR.safetensors``, from ``reproduce --static-only --sizes R``):

- fG, fL and π are the recipe's.  With the cascade fC, step t's layer reads ē_1..ē_t only, so
  the steps before a whole read are what the recipe's Stages I–III trained, whatever follows.
- fW is the backbone fine-tuned on whole images at R px, as the library's ``whole`` stage
  fine-tunes it (the recipe of the static baselines and of the glance fine-tune), and frozen
  after, as the family freezes fG; each whole step's fC layer starts as fW's own head.
- then ``--epochs`` of Stage III (π's patches; fL and fC learn, the whole steps' layers
  included), and the evaluation of the reproduction (held-out thresholds, full val) as a
  variant under ``--out/variants/NAME``.

``cascade`` measures the baseline a user could build without GFNet: the recipe's glance (fG
and its head at 96 px, step 1 of every model here), then the static model at R px for the
images whose glance confidence is below the threshold set on the held-out images, with
GFNet's evaluation (:func:`glancefocus.evaluation.cascade.evaluate_cascade`); written as
variants named ``cascade-96-R``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from glancefocus import GFNet
from glancefocus.config import DataConfig
from glancefocus.config.recipes import resolve
from glancefocus.config.weights import create_backbone
from glancefocus.data.sources import Splits, make_loader
from glancefocus.distributed import World, init_world
from glancefocus.evaluation.cascade import evaluate_cascade
from glancefocus.evaluation.evaluate import evaluate_model
from glancefocus.evaluation.plots import plot_results
from glancefocus.models.checkpoint import load_checkpoint, save_checkpoint, update_meta
from glancefocus.runtime.files import atomic_write, atomic_write_text
from glancefocus.training.pipeline import fit, new_model
from glancefocus.training.runlog import RunLog
from glancefocus.training.stages import ReadClassifier
from glancefocus.training.trainer import Run

from .data import load_imagenette
from .heads import encoder_heads
from .parts import Resized, evaluate_gfnet, madds_at
from .variants import KEYS, best_gfnet, is_cascade, variants_measured

RECIPE = "imagenette-lite0"


def options(p: argparse.ArgumentParser, *, cascade: bool) -> None:
    p.add_argument("--data", type=Path, default=Path("../shared/data/imagenette"))
    p.add_argument("--out", type=Path, default=Path("results/imagenette"))
    p.add_argument("--work", type=Path, default=Path("runs/imagenette"), help="the static models, the decoded-image cache")
    p.add_argument("--from-weights", type=Path, default=Path("results/imagenette/gfnet-patches.safetensors"),
                   help="the recipe's GFNet (fG, fL, π, fC)")
    p.add_argument("--limit", type=int, default=0, help="use only this many train and val images (smoke runs)")
    if cascade:
        p.add_argument("--sizes", type=int, nargs="+", default=[160, 224], help="the static model's side after the glance")
    else:
        p.add_argument("--reads", required=True, help="the plan, e.g. glance,patch,whole:224")
        p.add_argument("--name", required=True, help="the variant's folder under --out/variants")
        p.add_argument("--epochs", type=int, default=1, help="Stage III epochs on the plan")
        p.add_argument("--export", type=Path, help="also write the trained plan, its evaluation in its metadata, here")


def _static(work: Path, size: int, device) -> torch.nn.Module:
    """The static baseline at ``size`` px that ``reproduce --static-only`` fine-tuned."""
    path = work / f"static{size}.safetensors"
    if not path.exists():
        sys.exit(f"no static {size} px model at {path}: run `python -m scripts.imagenette reproduce --static-only "
                 f"--sizes {size} --work {work}` first")
    return {k.removeprefix("net."): v for k, v in load_checkpoint(path, device=device)[0].items()}


def _compose(model: GFNet, args, device) -> None:
    """The recipe's weights where the plan has them, fW from the static model, whole layers from fW's head."""
    committed, own = load_checkpoint(args.from_weights, device=device)[0], model.state_dict()
    kept = {k: v for k, v in committed.items() if k in own and own[k].shape == v.shape}
    missing = model.load_state_dict(kept, strict=False).missing_keys
    whole_layers = {f"classifier.layers.{t - 1}." for t, r in enumerate(model.config.plan) if r.kind == "whole"}
    unexpected = [k for k in missing if not k.startswith("whole_encoder.") and k[:-len(k.split(".")[-1])] not in whole_layers]
    if unexpected:
        raise ValueError(f"{args.from_weights} lacks {unexpected[:3]}: not the {RECIPE} recipe's weights")
    model.whole_encoder.model.load_state_dict(_static(args.work, model.config.whole_size, device))
    model.init_whole_steps()


def escalate(args: argparse.Namespace) -> None:
    started, world = time.time(), init_world()
    r = resolve(RECIPE, model={"reads": tuple(args.reads.split(","))})
    tc = replace(r.train, run_stage3=True, stage3_epochs=args.epochs)
    model = new_model(r.model, pretrained=r.pretrained, seed=tc.seed).to(world.device)
    splits = load_imagenette(args.data, args.work / "cache", model.config, seed=tc.seed, holdout=DataConfig().holdout, limit=args.limit)
    run = Run(args.work / "escalate" / args.name, world, resume=True, log=RunLog(args.work / "escalate" / args.name, world))
    run.out_dir.mkdir(parents=True, exist_ok=True)
    initial = run.out_dir / "composed.safetensors"
    if not initial.exists():
        _compose(model, args, world.device)
        save_checkpoint(initial, model.state_dict(), {"config": model.config.to_dict(), "stage": "composed"})
    fit(model, splits, ["stage3"], config=tc, run=run, data=DataConfig(root=str(args.data), workers=0), init=initial)
    trained = time.time() - started
    done = args.out / "variants" / args.name / "results.json"
    if done.exists() and json.loads(done.read_text()).get("reads") == args.reads:  # measured already: only export
        _export(run.checkpoint("stage3"), json.loads(done.read_text()), args.export)
        return
    if model.config.patch_steps:
        results = evaluate_gfnet(model, splits, run, tc.batch_size)
    else:  # no patch for a policy to choose: the ablation would repeat the same numbers
        heldout, val = _loaders(splits, world, tc.batch_size)
        results = {**evaluate_model(model, heldout, val, world), "encoder_heads": encoder_heads(model, val, world)}
    report = {**results, "patch_size": model.config.patch_size, "T": model.T, "reads": args.reads,
              "epochs": {"stage3_on_plan": args.epochs, "before": f"the {RECIPE} recipe ({args.from_weights})",
                         "whole_encoder": f"static{model.config.whole_size} (reproduce --static-only)"},
              "seconds": {"stage3_on_plan": round(trained), "evaluation": round(time.time() - started - trained)},
              "recipe": {"reads": args.reads, "stage3_epochs": args.epochs, "whole_encoder_frozen": tc.freeze_glance},
              "command": "python -m scripts.imagenette escalate " + " ".join(sys.argv[2:])}
    _write(args.out / "variants" / args.name, report)
    _export(run.checkpoint("stage3"), report, args.export)


def _export(checkpoint: Path, results: dict, to: Path | None) -> None:
    """The trained plan with its evaluation in its metadata (so `glancefocus export`,
    `predict` and `serve` take it as it is), copied to ``to``."""
    keep = ("num_val", "num_heldout", "madds", "anytime_accuracy", "thresholds", "budgeted", "oracle")
    update_meta(checkpoint, results={"patches": "learned", **{k: results[k] for k in keep if k in results}}, madds=results["madds"])
    if to is not None:
        to.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(to, lambda tmp: shutil.copyfile(checkpoint, tmp))
        print(f"wrote {to}")


def cascade(args: argparse.Namespace) -> None:
    world = init_world()
    r = resolve(RECIPE)
    model = GFNet.from_checkpoint(args.from_weights, device=world.device)[0]  # its glance, whatever its T
    splits = load_imagenette(args.data, args.work / "cache", model.config, seed=r.train.seed, holdout=DataConfig().holdout,
                             limit=args.limit)
    heldout, val = _loaders(splits, world, r.train.batch_size)
    glance, glance_madds = ReadClassifier(model), model.madds()[0]  # fG + its head: step 1 of every model here
    for size in args.sizes:
        started = time.time()
        static = _static_model(args.work, size, world.device)
        results = evaluate_cascade([glance, static], [glance_madds, madds_at(static.net, size)], heldout, val, world)
        report = {**results, "patch_size": model.config.patch_size, "T": 2, "reads": f"glance:96, then static:{size}",
                  "epochs": {"static": f"static{size} (reproduce --static-only)"},
                  "seconds": {"evaluation": round(time.time() - started)},
                  "recipe": {"cascade": ["glance (fG and its head, 96 px)", f"static Lite0 at {size} px"]},
                  "command": f"python -m scripts.imagenette cascade --sizes {size}"}
        _write(args.out / "variants" / f"cascade-96-{size}", report)
    _encoder_choice(model, _static_model(args.work, max(args.sizes), world.device), val, world, args.out / "parts")


@torch.inference_mode()
def _encoder_choice(model: GFNet, static: Resized, val, world: World, parts: Path) -> None:
    """Which encoder should read the whole image: val accuracy of each candidate's own head
    on whole images at the static model's size, before any training on them."""
    size, hits = static.size, {"fL (the recipe's, trained on 96 px patches)": [], "fG (the recipe's, fine-tuned at 96 px)": [],
                               f"fW (the backbone fine-tuned at {static.size} px)": []}
    for images, targets in val:
        images, targets = images.to(world.device), targets.to(world.device)
        view = model.view(images, size=size)
        for name, logits in zip(hits, (model.local_encoder.head(model.local_encoder(view)[1]),
                                       model.global_encoder.head(model.global_encoder(view)[1]), static(images))):
            hits[name].append(logits.argmax(1) == targets)
    choice = {"size": size, "accuracy": {name: 100 * float(torch.cat(h).float().mean()) for name, h in hits.items()}}
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_text(parts / "whole_encoder_choice.json", json.dumps(choice, indent=2))
    print(choice)


def _loaders(splits: Splits, world: World, batch: int):
    return tuple(make_loader(split, batch_size=batch, world=world, train=False) for split in (splits.heldout, splits.val))


def _static_model(work: Path, size: int, device) -> Resized:
    net = create_backbone("tf_efficientnet_lite0", pretrained=False, num_classes=10)
    net.load_state_dict(_static(work, size, device))
    return Resized(net.to(device), size).eval()


def _write(folder: Path, report: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "results.json", json.dumps({k: report[k] for k in KEYS if k in report}, indent=2))
    _figure(folder.parents[1])
    budget = report["budgeted"]
    print(f"{folder.name}: anytime {[round(a, 2) for a in report['anytime_accuracy']]} at "
          f"{[round(m / 1e6, 1) for m in report['madds']]} MMAdds; budgeted {budget[0]['accuracy']:.2f}..{budget[-1]['accuracy']:.2f} %")


def _figure(out: Path) -> None:
    """``escalation.png``: the budgeted curve of each plan and cascade measured so far under
    ``out/variants``, beside the static model at each size."""
    measured = {n: v for n, v in variants_measured(out / "variants").items() if "reads" in v}
    if not measured or not (out / "results.json").exists():
        return
    if all(is_cascade(n) for n in measured):
        return
    best = best_gfnet(measured)
    static = json.loads((out / "results.json").read_text())["static"]
    extra = {f"{n} (budgeted)": {"madds": [p["madds"] for p in v["budgeted"]], "accuracy": [p["accuracy"] for p in v["budgeted"]]}
             for n, v in measured.items() if n != best}
    extra["static Lite0 (96..224 px)"] = {"madds": [s["madds"] for s in static], "accuracy": [s["accuracy"] for s in static]}
    plot_results(measured[best], out / "escalation.png", title=f"Escalating to the whole image: {best}",
                 extra=extra)
