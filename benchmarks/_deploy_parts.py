"""Pieces of bench_deploy.py: the static model as ONNX, and where to crop the focus patch."""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from glancefocus.config import GFNetConfig
from glancefocus.export.bundle import OPSET
from glancefocus.export.graphs import gather_patches


def export_static(model: torch.nn.Module, size: int, path: Path) -> Path:
    """The plain timm classifier on the full image, batch axis dynamic."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning))
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["images"], output_names=["logits"], dynamic_axes={"images": {0: "batch"}})
    return path


def host_crop(images: np.ndarray, locations: np.ndarray, patch: int) -> np.ndarray:
    """crop_patches in numpy: corners floor(l · (H − P)) in float64, one gather of windows."""
    B, _, H, W = images.shape
    corners = np.floor(np.clip(locations.astype(np.float64), 0, 1) * [H - patch, W - patch]).astype(np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(images, (patch, patch), axis=(2, 3))
    return windows[np.arange(B), :, corners[:, 0], corners[:, 1]]


class _Crop(torch.nn.Module):
    def __init__(self, patch: int, size: int) -> None:
        super().__init__()
        self.patch, self.size = patch, size

    def forward(self, images: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        return gather_patches(images, locations, self.patch, self.size)


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def crop_costs(config: GFNetConfig, threads: int, repeats: int = 300) -> dict[str, float]:
    """Batch 1: the crop inside the focus graph (the GatherElements pair, alone in a graph)
    against a numpy crop on the host plus the second ``session.run`` that splitting the focus
    step around a host crop costs (π, then the encoder), timed on an Identity graph."""
    P, H = config.patch_size, config.image_size
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    images = np.random.default_rng(0).standard_normal((1, 3, H, H), dtype=np.float32)
    locations = np.array([[0.3, 0.7]], dtype=np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "crop.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning))
            torch.onnx.export(_Crop(P, H), (torch.from_numpy(images), torch.from_numpy(locations)), str(path), dynamo=False,
                              opset_version=OPSET, input_names=["images", "locations"], output_names=["patch"])
        crop = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    identity = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, P, P])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, P, P])]), opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(identity)
    extra = ort.InferenceSession(identity.SerializeToString(), options, providers=["CPUExecutionProvider"])
    patch = np.ascontiguousarray(host_crop(images, locations, P))
    assert np.array_equal(crop.run(None, {"images": images, "locations": locations})[0], patch)
    in_graph = _median_ms(lambda: crop.run(None, {"images": images, "locations": locations}), repeats)
    host = _median_ms(lambda: np.ascontiguousarray(host_crop(images, locations, P)), repeats)
    extra_run = _median_ms(lambda: extra.run(None, {"x": patch}), repeats)
    return {"in_graph_ms": in_graph, "host_numpy_ms": host, "extra_run_ms": extra_run, "host_total_ms": host + extra_run}
