"""``glancefocus export --quantize int8``: an export's graphs as ONNX Runtime static int8 graphs.

QDQ format (``quantize_static``): Conv, MatMul and Gemm read int8 weights, one scale per
output channel, and uint8 activations whose ranges are calibrated on held-out images: each
tensor's histogram over all calibration images, cut at its 0.005 % and 99.995 % percentiles
(ONNX Runtime's Percentile calibration at :data:`PERCENTILE`), so the few outlying values do
not stretch a range over the many.  The stem, the first Conv (MatMul, Gemm) after the images in
each graph, stays fp32: it reads the normalised image, and on the Imagenette model quantizing
it alone cost 1.2 points of top-1 at the cheapest budget, for about 3 % of the MAdds.  ONNX
Runtime fuses each QuantizeLinear → op → DequantizeLinear into an integer kernel (u8s8, what
VNNI multiplies).  On the Imagenette model (``benchmarks/bench_quantize.py``) the former recipe, every layer and
the mean of calibration batches' min and max on 400 images, cost 1.5 to 2.4 points of top-1;
this one costs 0.2 to 0.54 (0.41 at q = 0.05, 0.25 at q = 1) at the same 1.6 to 1.7x speed-up
(the recipes tried and what each cost: docs/deploying.md).
The focus graph is calibrated on the state that the fp32 graphs produce at steps 2..T, so each
of its inputs is realistic.  The cascade fC's step layer is an input of the focus graph, a
different weight every step: its MatMul stays fp32 (one range for every step's weights would
lose them, and it is a few thousand multiply-adds).

Quantization moves the probabilities, so every budget point's thresholds are found again
by :func:`~glancefocus.models.budget.find_thresholds` (the point's q, :func:`exit_fractions`)
from the quantized model's own probabilities on the calibration images; the q, MAdds and
accuracy stored with each point stay the fp32 model's (measuring accuracy needs labelled val
images).  The fp32 check against PyTorch (1e-4) cannot hold for int8; the rule instead: at
every step the quantized export gives the fp32 export's class on at least
:data:`MIN_AGREEMENT` of the calibration images, or the export is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.deploy import MANIFEST, OnnxGFNet, sha256
from ..runtime.preprocess import Transform, image_files, read_images

# torch is imported where thresholds are searched: the CLI's parser reads the constants below.
MIN_IMAGES = 32  # fewer would set each threshold from a handful of images
MIN_AGREEMENT = 0.9  # the least fraction of calibration images whose class int8 and fp32 share, at every step
OP_TYPES = ["Conv", "MatMul", "Gemm"]
CALIBRATION_IMAGES = 800  # the default: evenly spaced over the folder (400 cost 0.15 point more at the cheapest budget)
BATCH = 32  # images per calibration batch
PERCENTILE = 99.99  # the share of each activation's calibration values its int8 range covers (the rest split at both ends)


def calibration_images(folder: str | os.PathLike, transform: Transform, *, limit: int) -> np.ndarray:
    """Up to ``limit`` evenly spaced images of ``folder`` (an ImageFolder tree or a folder of
    images), in the evaluation view the export is served: (N, 3, H, W) float32."""
    folder = Path(folder)
    hint = "give a folder of held-out training images (an ImageFolder tree or plain images, not the val set)"
    if not folder.is_dir():
        raise ValueError(f"--calibration-data {folder} is not a folder: {hint}")
    try:
        files = image_files([folder])
    except ValueError:
        raise ValueError(f"--calibration-data {folder} holds no images: {hint}") from None
    if min(len(files), limit) < MIN_IMAGES:
        raise ValueError(
            f"--calibration-data {folder} gives {min(len(files), limit)} images (of {len(files)}, --calibration-images "
            f"{limit}), fewer than {MIN_IMAGES}: calibrate on at least {MIN_IMAGES}, better a few hundred, held-out images"
        )
    chosen = np.linspace(0, len(files) - 1, min(limit, len(files))).round().astype(int)  # distinct: spacing >= 1
    images, _, _ = read_images([files[i] for i in chosen], transform)
    return np.stack(images)


def quantize_export(folder: Path, images: np.ndarray) -> dict[str, Any]:
    """Replace the fp32 graphs of the export in ``folder`` by int8 graphs calibrated on
    ``images``, and its thresholds by the quantized model's; returns the manifest's
    ``quantization`` entry.  Raises if the quantized classes agree too little with fp32."""
    fp32 = OnnxGFNet(folder, threads=1)
    manifest = fp32.manifest
    if any(not p.get("q", 0) > 0 for p in manifest["budget_points"]):
        raise ValueError("every budget point needs its q > 0 to find its thresholds again on the quantized model")
    expected, feeds = all_steps(fp32, images)
    for name in fp32.sessions:
        path = folder / manifest["files"][name]["file"]
        _quantize_graph(path, feeds[name])
        manifest["files"][name]["sha256"] = sha256(path)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    probs, _ = all_steps(OnnxGFNet(folder, threads=1), images)
    agreement = (probs.argmax(axis=2) == expected.argmax(axis=2)).mean(axis=1)  # per step
    if agreement.min() < MIN_AGREEMENT:
        raise RuntimeError(
            f"the int8 graphs give the fp32 class on only {agreement.min():.1%} of the calibration images at step "
            f"{int(agreement.argmin()) + 1} (per step {np.round(agreement, 3).tolist()}, at least {MIN_AGREEMENT:.0%} "
            "needed): calibrate on more, representative images, or export without --quantize"
        )
    manifest["budget_points"] = requantized_points(manifest["budget_points"], probs)
    manifest["quantization"] = quantization = {
        "type": "int8", "format": "QDQ", "weights": "int8, per channel",
        "activations": f"uint8, ranges the central {PERCENTILE} % of the calibration values", "op_types": OP_TYPES,
        "fp32_nodes": "the stem (the first Conv, MatMul or Gemm after the images) and the cascade fC's MatMul",
        "calibration_images": len(images), "agreement_with_fp32": agreement.tolist(), "min_agreement": MIN_AGREEMENT,
        "budget_points": "thresholds from the int8 graphs' probabilities on the calibration images; "
                         "q, madds and accuracy are the fp32 model's",
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return quantization


def requantized_points(points: list[dict[str, Any]], probs: np.ndarray) -> list[dict[str, Any]]:
    """``points`` with the thresholds that the library's search sets on held-out ``probs`` (T, N, C)."""
    import torch

    from ..models.budget import exit_fractions, find_thresholds, threshold_json

    fractions = torch.stack([exit_fractions(p["q"], probs.shape[0]) for p in points])
    thresholds = find_thresholds(torch.from_numpy(probs), fractions)
    return [{**p, "thresholds": [threshold_json(v) for v in row]} for p, row in zip(points, thresholds.tolist())]


def all_steps(model: OnnxGFNet, images: np.ndarray) -> tuple[np.ndarray, dict[str, list[dict[str, np.ndarray]]]]:
    """Every image through all T steps, in batches: the probabilities (T, N, C) and each
    graph's inputs, batch by batch ({"glance": [...], "focus": [...]})."""
    probs, feeds = [], {"glance": [], "focus": []}
    for start in range(0, len(images), BATCH):
        batch, state, steps = images[start : start + BATCH], [], []
        for t in range(model.T):
            feeds["focus" if t else "glance"].append(model.feed(t, batch, state))
            p, *state = model.step(t, batch, state)
            state = state[1:] if t else state  # a focus step also answers its location
            steps.append(p)
        probs.append(np.stack(steps))
    return np.concatenate(probs, axis=1), feeds


def _quantize_graph(path: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """``path`` rewritten as its QDQ int8 graph, calibrated on ``feeds``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        prepared, cache = Path(work) / "prepared.onnx", Path(work) / "ranges.json"
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        save_tensors_data(_calibrate(prepared, feeds, Path(work)), cache)
        graph = _graph(prepared)
        fed = [n.name for n in graph.node if "cascade_weight" in n.input]
        quantize_static(str(prepared), str(path), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=OP_TYPES,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile, nodes_to_exclude=fed + stem(graph),
                        calibration_cache_path=cache)


def stem(graph) -> list[str]:
    """The names of the first Conv, MatMul or Gemm nodes on every path from the ``images``
    input of ``graph`` (an ``onnx.GraphProto``): whatever the backbone, its stem."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found, seen, tensors = [], set(), ["images"]
    while tensors:
        for node in consumers.get(tensors.pop(), []):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type in OP_TYPES:
                found.append(node.name)
            else:
                tensors.extend(node.output)
    return found


def _calibrate(model: Path, feeds: list[dict[str, np.ndarray]], work: Path):
    """The ranges of the tensors around every Conv, MatMul and Gemm of ``model``: the central
    :data:`PERCENTILE` % of their values over ``feeds``, run by one ONNX Runtime thread (the
    calibrator's own session takes every core)."""
    import contextlib
    import io

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(model, OP_TYPES, augmented_model_path=str(work / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Percentile,
                                   extra_options={"percentile": PERCENTILE, "symmetric": False})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as the calibrator's own session
    calibrator.infer_session = ort.InferenceSession(str(work / "augmented.onnx"), options, providers=["CPUExecutionProvider"])
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints a line per batch
        for feed in feeds:  # a batch at a time: the histograms add up, and the last, smaller batch is welcome
            calibrator.collect_data(_Feeds([feed]))
        return calibrator.compute_data()


class _Feeds:
    """A CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def _graph(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False).graph
