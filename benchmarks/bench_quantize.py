"""int8 vs fp32 export of the Imagenette GFNet: accuracy at every budget point, each step's speed.

    python -m benchmarks.bench_quantize [--calibration N] [--batch B] [--step-batch B] [--quick]

The recipe's model (``results/imagenette/gfnet-patches.safetensors``, EfficientNet-Lite0, 96 px
patches, T = 4) is exported twice with the budget points of its ``results.json`` entry: fp32, and
``--quantize int8`` calibrated on N (default 800) evenly spaced images of the reproduction's
held-out split of Imagenette train (``holdout_split`` with the recipe's seed and 10 %: the
images the fp32 thresholds were set on, never trained on), whose thresholds the export finds
again on those images.  On the full val set (3,925 images, batch 64, one ONNX Runtime thread)
each export gives its probabilities at every step; the top-1 accuracy at each of the 39 budget
points follows from them with the export's own thresholds (``budgeted_accuracy``), and
``OnnxGFNet.predict`` is run at three points to check that early exit gives the same.  Then
each step's images per second at batch 32, fp32 and int8 in turn (round-robin), and how often
the two give the same class.  ``--quick``: 48 calibration and 96 val images.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from glancefocus.export.quantize import all_steps
from glancefocus.models.budget import budgeted_accuracy
from glancefocus.runtime.deploy import OnnxGFNet
from glancefocus.runtime.preprocess import read_images
from scripts.imagenette.data import labelled_files

from ._common import compare, parser, setup, write
from ._serve_parts import DATA, PATCHES_MODEL, RESULTS, calibration_folder, export_imagenette

CHECKED_QS = (0.05, 1.0, 1.95)  # the cheapest, a middle and the dearest budget point, run by predict


def accuracies(model: OnnxGFNet, images: np.ndarray, labels: np.ndarray, batch: int) -> dict:
    """Top-1 at every budget point (from all-steps probabilities) and, at CHECKED_QS, by predict."""
    probs = np.concatenate([all_steps(model, images[i : i + batch])[0] for i in range(0, len(images), batch)], axis=1)
    points = model.manifest["budget_points"]
    thresholds = torch.tensor([[float(v) for v in p["thresholds"]] for p in points])
    accuracy, madds = budgeted_accuracy(torch.from_numpy(probs), torch.from_numpy(labels), model.manifest["madds"], thresholds)
    checked = {}
    for k in (i for i, p in enumerate(points) if p["q"] in CHECKED_QS):
        labels_out = np.concatenate([model.predict(images[i : i + batch], thresholds[k].numpy()).labels
                                     for i in range(0, len(images), batch)])
        checked[points[k]["q"]] = float((labels_out == labels).mean() * 100)
    return {"probs": probs, "accuracy": accuracy.tolist(), "madds": madds.tolist(), "predict_accuracy": checked}


def step_speeds(models: dict[str, OnnxGFNet], images: np.ndarray, *, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Images per second of each step at batch len(images), every export fed the fp32 states."""
    _, feeds = all_steps(models["fp32"], images)  # one batch: a glance feed, then one focus feed per step
    inputs = feeds["glance"] + feeds["focus"]
    runs = {f"{name} {t}": (lambda m=m, t=t: m.sessions["focus" if t else "glance"].run(None, inputs[t]))
            for name, m in models.items() for t in range(m.T)}
    timed = compare(runs, torch.device("cpu"), repeats=repeats, warmup=warmup)
    return {name: [len(images) / timed[f"{name} {t}"]["median_s"] for t in range(m.T)] for name, m in models.items()}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--calibration", type=int, default=800, help="held-out training images to calibrate on (default 800)")
    p.add_argument("--batch", type=int, default=64, help="batch of the accuracy runs (default 64)")
    p.add_argument("--step-batch", type=int, default=32, help="batch of the step timings (default 32)")
    args = p.parse_args()
    device = setup(args)
    repeats, warmup = args.repeats or (2 if args.quick else 10), args.warmup if args.warmup is not None else 2
    results = json.loads((RESULTS / "results.json").read_text())["variants"]["recipe"]
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        calibration = calibration_folder(48 if args.quick else args.calibration, work)
        exports = {"fp32": export_imagenette(PATCHES_MODEL, results, work / "fp32"),
                   "int8": export_imagenette(PATCHES_MODEL, results, work / "int8", quantize="int8",
                                             calibration_data=calibration, calibration_images=10**6)}
        models = {name: OnnxGFNet(path, threads=1) for name, path in exports.items()}
        sizes = {name: {f: (path / f).stat().st_size for f in ("glance.onnx", "focus.onnx")} for name, path in exports.items()}
        files, labels, _ = labelled_files(DATA / "val")
        labels = np.array(labels)
        if args.quick:
            files, labels = files[:: len(files) // 96][:96], labels[:: len(files) // 96][:96]
        images = np.stack(read_images(files, models["fp32"].transform)[0])
        measured = {name: accuracies(m, images, labels, args.batch) for name, m in models.items()}
        speeds = step_speeds(models, images[: args.step_batch], repeats=repeats, warmup=warmup)
    quantization = models["int8"].manifest["quantization"]
    figures = summarise(models, measured, speeds, sizes, quantization, args.step_batch)
    write("bench_quantize", args, device, figures, calibration_images=quantization["calibration_images"],
          val_images=len(labels), threads=1)


def summarise(models: dict, measured: dict, speeds: dict, sizes: dict, quantization: dict, step_batch: int) -> list[dict]:
    """One figure (and one printed line) per budget point, per step's speed and for agreement."""
    points, figures = models["fp32"].manifest["budget_points"], []
    for k, point in enumerate(points):
        f = {"figure": "accuracy", "q": point["q"], **{f"{n}_{key}": measured[n][key][k] for n in measured for key in ("accuracy", "madds")}}
        f["int8_minus_fp32"] = f["int8_accuracy"] - f["fp32_accuracy"]
        figures.append(f)
        print(f"q={point['q']:.2f} top-1 fp32 {f['fp32_accuracy']:.2f}% ({f['fp32_madds'] / 1e6:.0f} MMAdds), int8 "
              f"{f['int8_accuracy']:.2f}% ({f['int8_madds'] / 1e6:.0f} MMAdds): {f['int8_minus_fp32']:+.2f} points")
    for n in measured:
        figures.append({"figure": "predict_check", "export": n, "predict_accuracy": measured[n]["predict_accuracy"]})
        print(f"{n} OnnxGFNet.predict top-1 at q={list(measured[n]['predict_accuracy'])}: {list(measured[n]['predict_accuracy'].values())}")
    for t in range(models["fp32"].T):
        fp32, int8 = speeds["fp32"][t], speeds["int8"][t]
        figures.append({"figure": "step_speed", "step": t + 1, "batch": step_batch, "fp32_images_per_s": fp32,
                        "int8_images_per_s": int8, "speedup": int8 / fp32})
        print(f"step {t + 1} at batch {step_batch}, 1 thread: fp32 {fp32:.0f} images/s, int8 {int8:.0f} images/s ({int8 / fp32:.2f}x)")
    same = (measured["fp32"]["probs"].argmax(axis=2) == measured["int8"]["probs"].argmax(axis=2)).mean(axis=1)
    figures.append({"figure": "agreement", "val_per_step": same.tolist(), "calibration_per_step": quantization["agreement_with_fp32"],
                    "sizes_bytes": sizes})
    print(f"int8 gives fp32's class per step on val {np.round(same * 100, 2).tolist()} %, on the calibration images "
          f"{np.round(np.array(quantization['agreement_with_fp32']) * 100, 2).tolist()} %; graph sizes {sizes}")
    return figures


if __name__ == "__main__":
    main()
