"""``glancefocus export``: a trained GFNet as ONNX graphs that keep its early exit.

Writes ``glance.onnx`` (step 1), ``focus.onnx`` (one focus step, run for every patch step
with the recurrent state as inputs and outputs, batch axis dynamic), ``whole<R>.onnx`` (a
whole-image read at R px, for plans that have one), ``cascade.npz`` (a cascade fC's
per-step layers) and ``manifest.json`` (see :mod:`glancefocus.runtime.deploy`).  Every graph
passes ``onnx.checker``, and before the directory appears the export is run by ONNX Runtime
and compared with :meth:`GFNet.predict`; with ``--quantize int8`` the verified graphs are then
quantized (:mod:`.quantize`).  The files are written to a temporary folder beside ``out`` and
renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from .. import __version__
from ..config import Quantization
from ..models.budget import threshold_json
from ..models.checkpoint import read_meta
from .graphs import FocusStep, GlanceStep, WholeStep, cascade_layers
from .quantize import CALIBRATION_IMAGES, calibration_images, quantize_export
from ..inference import imagenet_descriptions
from ..models.gfnet import GFNet
from ..runtime.deploy import CASCADE, FORMAT, FORMAT_VERSION, GRAPHS, MANIFEST, OnnxGFNet, graph_name, sha256
from ..runtime.preprocess import Transform

OPSET = 18  # the first opset whose Resize can antialias (the glance)
TOLERANCE = 1e-4  # largest difference of probabilities (and locations) allowed against PyTorch


def export_checkpoint(
    checkpoint: str | os.PathLike, out: str | os.PathLike, *, force: bool = False, quantize: Quantization | None = None,
    calibration_data: str | os.PathLike | None = None, calibration_images: int = CALIBRATION_IMAGES,
) -> Path:
    """Export a GFNet checkpoint that carries evaluation results (its thresholds); with
    ``quantize="int8"``, as int8 graphs calibrated on ``calibration_data`` (see :mod:`.quantize`)."""
    meta = read_meta(checkpoint)  # a clear error for anything but a glancefocus checkpoint
    if meta.get("stage") == "glance" or "config" not in meta:
        what = "the low-resolution fine-tune of fG alone" if meta.get("stage") == "glance" else "without a GFNet configuration"
        raise ValueError(
            f"{checkpoint} is a checkpoint {what}, not a GFNet: export the checkpoint of Stage I, II or III "
            "(e.g. stage3.safetensors)"
        )
    results = meta.get("results") or {}
    if "thresholds" not in results:
        raise ValueError(f"{checkpoint} has no thresholds: run `glancefocus evaluate --checkpoint {checkpoint}` first")
    _check_target(Path(out), force)
    model, _ = GFNet.from_checkpoint(checkpoint, device="cpu", channels_last=False)
    points = [{**p, "thresholds": row} for p, row in zip(results["budgeted"], results["thresholds"])]
    source = {"checkpoint": Path(checkpoint).name, "stage": meta.get("stage"), "data": meta.get("data")}
    return export_gfnet(model, out, classes=meta.get("classes", []), budget_points=points, madds=results.get("madds"),
                        anytime_accuracy=results.get("anytime_accuracy"), source=source, force=force, quantize=quantize,
                        calibration_data=calibration_data, calibration_images=calibration_images)


def export_gfnet(
    model: GFNet,
    out: str | os.PathLike,
    *,
    classes: Sequence[str],
    budget_points: Sequence[dict[str, Any]],
    madds: Sequence[float] | None = None,
    anytime_accuracy: Sequence[float] | None = None,
    source: dict[str, Any] | None = None,
    force: bool = False,
    quantize: Quantization | None = None,
    calibration_data: str | os.PathLike | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
) -> Path:
    """Export ``model`` with its budget points ({"q", "madds", "accuracy", "thresholds"}); with
    ``quantize="int8"``, its graphs quantized and thresholds found again on up to
    ``calibration_images`` images of ``calibration_data`` (held-out training images)."""
    out = Path(out)
    _check_target(out, force)
    _require("onnx", "onnxruntime")
    if len(classes) != model.config.num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {model.config.num_classes} classes")
    calibration = _calibration(model, quantize, calibration_data, calibration_images)  # before any work: bad input fails fast
    model = model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the export is an ordinary folder
        files = _write_graphs(model, tmp)
        cfg = model.config
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION if cfg.whole_size else 1, "files": files, "opset": OPSET, **_versions(),
            "backbone": cfg.backbone, "classes": list(classes), "class_descriptions": imagenet_descriptions(classes),
            "T": cfg.T, "reads": [str(r) for r in cfg.plan], "patch_size": cfg.patch_size, "image_size": cfg.image_size,
            "crop_pct": cfg.crop_pct,
            "patch_scale": cfg.patch_scale, "scale_range": list(cfg.scale_range) if cfg.scale_range else None, "crop": cfg.crop,
            "interpolation": cfg.interpolation, "resize_interpolation": cfg.resize_interpolation,
            "mean": list(cfg.mean), "std": list(cfg.std),
            "madds": list(madds or model.madds()), "anytime_accuracy": anytime_accuracy,
            "budget_points": [{**p, "thresholds": [threshold_json(v) for v in p["thresholds"]]} for p in budget_points],
            "source": source or {},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _verify(model, tmp)
        if calibration is not None:
            quantize_export(tmp, calibration)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _calibration(model: GFNet, quantize: Quantization | None, data: str | os.PathLike | None, limit: int) -> np.ndarray | None:
    """The calibration images of a quantized export (None for fp32), after checking the options."""
    if quantize is None:
        if data is not None:
            raise ValueError("--calibration-data is read only to quantize: add --quantize int8, or leave it out")
        return None
    if quantize not in get_args(Quantization):
        raise ValueError(f"--quantize {quantize!r} is not one of {', '.join(get_args(Quantization))}")
    if model.config.whole_size is not None:
        raise ValueError(f"--quantize {quantize} is not available for plans with whole-image reads "
                         f"({','.join(map(str, model.config.plan))}): export them in fp32 (leave --quantize out)")
    if data is None:
        raise ValueError(f"--quantize {quantize} needs --calibration-data DIR: a folder of held-out training images "
                         "(not the val set) to calibrate the activations and set the thresholds on")
    return calibration_images(data, Transform.of(model.config), limit=limit)


def _require(*modules: str) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"exporting needs {', '.join(modules)}: pip install 'glancefocus[export]'") from e


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out} exists and is not empty: pass --force to replace it, or choose another --out")


def _replace_dir(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; an existing ``out`` is renamed aside first and then removed."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_graphs(model: GFNet, folder: Path) -> dict[str, dict[str, Any]]:
    """glance.onnx, focus.onnx, whole<R>.onnx and cascade.npz in ``folder``: {name: {"file", "sha256", ...}}."""
    import onnx

    size = model.config.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    glance, focus, layers = GlanceStep(model).eval(), FocusStep(model).eval(), cascade_layers(model)
    written = {}
    if layers:
        np.savez(folder / CASCADE, **{k: v.numpy() for k, v in layers.items()})
        written["cascade"] = {"file": CASCADE, "sha256": sha256(folder / CASCADE)}
    with torch.no_grad():
        examples = {"glance": (glance, (images,))}
        # traced on the glance's state and step 2's layer: the state's width is a dynamic axis
        after_glance = (*glance(images)[1:], *((layers["step1_weight"], layers["step1_bias"]) if layers else ()))
        for read in model.config.plan[1:]:
            name = graph_name(str(read))
            module = focus if read.kind == "patch" else WholeStep(model, read.size).eval()
            examples.setdefault(name, (module, (images, *after_glance)))
        for name, (module, args) in examples.items():
            path = folder / f"{name}.onnx"
            names = {k: list(v[: len(args)] if k == "inputs" else v) for k, v in GRAPHS[name.rstrip("0123456789")].items()}
            _export(module, args, path, names, cascade=bool(layers))
            onnx.checker.check_model(str(path), full_check=True)
            written[name] = {"file": path.name, "sha256": sha256(path), **names}
    return written


def _export(module: torch.nn.Module, args: tuple, path: Path, names: dict[str, list[str]], *, cascade: bool) -> None:
    # Dynamic: every batch axis, and the cascade state's width t·F, which grows by F a step.
    axes = {n: {0: "batch"} for n in (*names["inputs"], *names["outputs"])}
    if cascade and "cascade_weight" in names["inputs"]:
        axes.update(classifier_state={0: "batch", 1: "features"}, next_classifier_state={0: "batch", 1: "next_features"},
                    cascade_weight={0: "next_features"}, cascade_bias={})
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice and the trace's constants
        warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning))
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, input_names=names["inputs"],
                          output_names=names["outputs"], dynamic_axes=axes)


def _verify(model: GFNet, folder: Path) -> None:
    """Run the export on three images (not the traced two: the batch axis must be dynamic)
    through every step and compare with :meth:`GFNet.predict`."""
    size = model.config.image_size
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    never = torch.tensor([float("inf")] * (model.T - 1) + [float("-inf")])  # every image runs every step
    expected = model.predict(images, never)
    got = OnnxGFNet(folder, threads=1).predict(images.numpy(), never.numpy())
    differences = {
        "probabilities": float((torch.from_numpy(got.probs) - expected.probs).abs().max()),
        "locations": float((torch.from_numpy(got.locations) - expected.locations).abs().max()) if model.config.patch_steps else 0.0,
    }
    if max(differences.values()) > TOLERANCE:
        raise RuntimeError(
            f"the exported graphs disagree with PyTorch (largest differences {differences}, allowed {TOLERANCE}): "
            f"backbone {model.config.backbone!r} does not export faithfully to ONNX opset {OPSET}"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx_version": onnx.__version__, "onnxruntime_version": onnxruntime.__version__,
            "torch_version": torch.__version__, "glancefocus_version": __version__}
