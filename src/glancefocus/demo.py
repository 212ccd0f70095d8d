"""``glancefocus demo``: a recipe trained through every stage, evaluated and reported.

Writes ``report.json`` (MAdds, anytime accuracy for learned, random and centre-then-corners
patches, the oracle exit, where π looks, the budgeted curve), ``results.json``,
``budgeted.png``, ``anytime.png`` and ``patches.png``.  The ``demo`` recipe fits the
built-in cluttered-digits data on two CPU cores in minutes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .models.checkpoint import read_meta
from .runtime.files import atomic_write_text
from .config import DataConfig
from .data.sources import load_data, make_loader
from .distributed import World
from .evaluation.evaluate import evaluate_checkpoint
from .inference import select_thresholds
from .config.recipes import Resolved
from .evaluation.ablation import examples, policy_report, write_figures
from .training.runlog import RunLog
from .training.trainer import Run
from .training.pipeline import train
from .training.stages import PIPELINES


def run_demo(run_config: Resolved, root: str, out: Path, *, world: World, quiet: bool = False) -> dict[str, Any]:
    """Train ``run_config`` (the ``demo`` recipe, :func:`~glancefocus.config.recipes.resolve`d
    for ``root``) through its pipeline into ``out``, evaluate and report it."""
    started = time.time()
    data = DataConfig(root=root)
    tc = run_config.train
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out, world, log=RunLog(out, world), quiet=quiet)
    final, model = train(run_config, PIPELINES[tc.policy_training], data=data, run=run)
    run.log.close()
    splits = load_data(data, model.config, seed=tc.seed)
    print("evaluating ...", flush=True)
    results = evaluate_checkpoint(final, world=world, root=root, json_out=out / "results.json", plot=out / "budgeted.png")
    val_loader = make_loader(splits.val, batch_size=tc.batch_size, world=world, train=False)
    ablation = policy_report(model, val_loader, world, results)
    by_patches = ablation["anytime_accuracy_by_policy"]
    report = {
        "data": root, "config": model.config.to_dict(), "madds": results["madds"], "anytime_accuracy": by_patches,
        "oracle": results["oracle"], "policy_locations": ablation["policy_locations"], "budgeted": results["budgeted"],
        "seconds": round(time.time() - started, 1),
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    shown = examples(splits.val, list(range(min(6, len(splits.val)))), splits.classes, world.device)
    write_figures(out, model, results, by_patches, shown, classes=splits.classes,
                  thresholds=select_thresholds(read_meta(final))[0], title="Anytime prediction: accuracy after each step")
    print(f"demo done in {report['seconds']:.0f} s.\n{comparison(by_patches, report['oracle']['accuracy'])}\n"
          f"report: {out}/report.json, budgeted.png, anytime.png, patches.png")
    return report


def comparison(by_patches: dict[str, list[float]], oracle: float) -> str:
    """The demo's conclusion as one table: val top-1 after each step for π's regions, uniformly
    random ones and centre-then-corners, and the oracle exit."""
    steps = len(by_patches["learned"])
    names = {"learned": "learned (π)", "random": "random", "fixed": "centre-then-corners"}
    lines = [f"{'val top-1 (%)':<20}" + "".join(f"{f'step {t + 1}':>9}" for t in range(steps))]
    lines += [f"{label:<20}" + "".join(f"{a:>9.1f}" for a in by_patches[key]) for key, label in names.items()]
    return "\n".join([*lines, f"{'oracle exit':<20}{oracle:>9.1f}"])
