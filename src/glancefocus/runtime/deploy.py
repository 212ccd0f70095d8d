"""Early-exit GFNet inference under ONNX Runtime, with ``onnxruntime`` and ``numpy`` only.

An export directory (written by ``glancefocus export``) holds ``glance.onnx``, ``focus.onnx``
(one focus step, reused for every patch step), ``whole<R>.onnx`` for each size R of a plan's
whole-image reads (``GFNetConfig.reads``), for a cascade fC (MobileNet-V3, EfficientNet) its
per-step linear layers in ``cascade.npz``, which the focus graph takes as inputs, and
``manifest.json`` (classes, thresholds per budget point, sizes, normalisation, MAdds per
step, versions and each file's SHA-256).
:class:`OnnxGFNet` runs glance → focus steps and, after each step, drops the images whose
confidence reaches η_t from the batch, exactly as :meth:`glancefocus.GFNet.predict` does.

    model = OnnxGFNet("deployed/")
    thresholds, point = model.thresholds(budget=3e8)
    rows, skipped = model.predict_files(image_files(["photos/"]), thresholds)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .predictions import choose_budget_point, predict_in_batches
from .preprocess import Transform

MANIFEST = "manifest.json"
FORMAT = "glancefocus-onnx"
FORMAT_VERSION = 2  # 2: steps may read the whole image (``reads``); a version-1 runtime refuses such an export
READABLE_VERSIONS = (1, 2)  # 1: the paper's plan, written so by exports without whole-image reads
STATE = ("feature_map", "classifier_state", "policy_state")
GRAPHS = {
    "glance": {"inputs": ("images",), "outputs": ("probs", *STATE)},
    "focus": {"inputs": ("images", *STATE, "cascade_weight", "cascade_bias"),
              "outputs": ("probs", "location", *(f"next_{s}" for s in STATE))},
    "whole": {"inputs": ("images", *STATE, "cascade_weight", "cascade_bias"), "outputs": ("probs", *(f"next_{s}" for s in STATE))},
}
GRAPH_OF_READ = {"glance": "glance", "patch": "focus", "whole": "whole"}  # a read's graph: whole<R> per size R


def graph_name(read: str) -> str:
    """The graph file (without .onnx) that runs a read such as ``"whole:224"``."""
    kind, _, size = read.partition(":")
    return f"whole{size}" if kind == "whole" else GRAPH_OF_READ[kind]


def paper_reads(T: int, patch_size: int) -> list[str]:
    """The paper's plan: the glance, then T − 1 patches (what a manifest without ``reads`` ran)."""
    return [f"glance:{patch_size}"] + [f"patch:{patch_size}"] * (T - 1)
CASCADE = "cascade.npz"


@dataclass(frozen=True)
class OnnxPrediction:
    """Early-exit result for B images, as :class:`glancefocus.models.gfnet.Prediction` in numpy."""

    labels: np.ndarray  # (B,) predicted class at the exit step
    probs: np.ndarray  # (B, C) softmax at the exit step
    exit_step: np.ndarray  # (B,) exit step, 1..T
    locations: np.ndarray  # (K, B, A) regions of the K patch steps (row, col[, scale fraction]), step-first; NaN after the exit


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an export directory, after checking that every graph it names is
    there and is the file that was exported (SHA-256)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has no {MANIFEST}: not a glancefocus ONNX export. "
            "Write one with `glancefocus export --checkpoint MODEL.safetensors --out DIR`"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{path} is not a {FORMAT} manifest of version {' or '.join(map(str, READABLE_VERSIONS))} "
            f"(found {manifest.get('format')!r} version {manifest.get('format_version')!r}): re-export the model"
        )
    for name, entry in manifest["files"].items():
        file = directory / entry["file"]
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing from the export: re-export with `glancefocus export ... --force`")
        if sha256(file) != entry["sha256"]:
            raise ValueError(
                f"{file} does not match {MANIFEST} (SHA-256 differs): the {name} file was changed or comes from "
                "another export. Re-export the whole directory with `glancefocus export ... --force`"
            )
    return manifest


class OnnxGFNet:
    """A GFNet export run by ONNX Runtime with early exit and batch compaction.

    Args:
        directory: an export directory written by :func:`glancefocus.export.bundle.export_checkpoint`.
        threads: ONNX Runtime intra-op threads (default: its own choice).
        providers: ONNX Runtime execution providers, in order of preference.
        options: an ``onnxruntime.SessionOptions`` to start from (e.g. with spinning off on a
            shared machine); ``threads`` is set on it.
    """

    def __init__(
        self, directory: str | Path, *, threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",), options: Any = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("ONNX Runtime inference needs onnxruntime: pip install 'glancefocus[deploy]'") from e
        self.directory = Path(directory)
        self.manifest = m = read_manifest(self.directory)
        options = options or ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.T: int = m["T"]
        self.reads: list[str] = m.get("reads") or paper_reads(self.T, m["patch_size"])
        self.graphs = [graph_name(read) for read in self.reads]  # step t runs self.graphs[t]
        self.patch_steps = self.graphs.count("focus")
        self.sessions = {
            name: ort.InferenceSession(str(self.directory / m["files"][name]["file"]), options, providers=list(providers))
            for name in dict.fromkeys(self.graphs) if name in m["files"]
        }
        for name, session in self.sessions.items():
            self._check_interface(name, session)
        self.cascade: dict[str, np.ndarray] = {}
        if "cascade" in m["files"]:
            with np.load(self.directory / m["files"]["cascade"]["file"], allow_pickle=False) as arrays:
                self.cascade = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
        focus = self.sessions.get("focus")
        if focus is not None and ("cascade_weight" in {i.name for i in focus.get_inputs()}) != bool(self.cascade):
            raise ValueError(f"{self.directory}: the focus graph and {CASCADE} do not belong together: re-export with --force")
        self.action_dims: int = 3 if m.get("patch_scale") == "learned" else 2  # (row, col[, scale fraction])
        self.classes: list[str] = m["classes"]
        self.transform = Transform(m["image_size"], m["crop_pct"], tuple(m["mean"]), tuple(m["std"]),
                                       m.get("resize_interpolation", "bicubic"))

    def _check_interface(self, name: str, session: Any) -> None:
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        expected = GRAPHS[name.rstrip("0123456789")]  # whole224 -> whole
        # A GRU fC's focus graph has no cascade layer inputs.
        if outputs != list(expected["outputs"]) or inputs != list(expected["inputs"][: len(inputs)]):
            raise ValueError(
                f"{self.directory / self.manifest['files'][name]['file']} has inputs {inputs} and outputs "
                f"{outputs}, not those of a glancefocus {name} step: re-export with `glancefocus export ... --force`"
            )

    def thresholds(self, budget: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """η_1..η_T of the budget point chosen as ``glancefocus predict --budget`` does."""
        points = self.manifest["budget_points"]
        point = points[choose_budget_point(points, budget)]
        summary = {k: point[k] for k in ("q", "madds", "accuracy")}
        return np.array([float(v) for v in point["thresholds"]], dtype=np.float32), summary

    def step(self, t: int, images: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        """Run step ``t`` (0 = glance) on normalised images (B, 3, H, W).  Returns a patch
        step's [probs, location, *state], any other step's [probs, *state]."""
        return self.sessions[self.graphs[t]].run(None, self.feed(t, images, state))

    def feed(self, t: int, images: np.ndarray, state: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs of step ``t``'s graph by name (a cascade fC's step-t layer included);
        also what calibrating a quantized export feeds each graph."""
        if t == 0:
            return {"images": images}
        feed = dict(zip(GRAPHS["focus"]["inputs"], [images, *state]))
        if self.cascade:
            feed["cascade_weight"], feed["cascade_bias"] = self.cascade[f"step{t}_weight"], self.cascade[f"step{t}_bias"]
        return feed

    def predict(self, images: np.ndarray, thresholds: np.ndarray) -> OnnxPrediction:
        """Early-exit inference on normalised images (B, 3, H, W): after each step the images
        whose max probability reaches η_t leave the batch (SPEC "Early exit")."""
        thresholds = np.asarray(thresholds, dtype=np.float32).ravel()
        if thresholds.size != self.T:
            raise ValueError(f"expected {self.T} thresholds (one per step, T={self.T}), got {thresholds.size}")
        images = np.ascontiguousarray(images, dtype=np.float32)
        B = images.shape[0]
        probs = np.zeros((B, len(self.classes)), dtype=np.float32)
        exit_step = np.full(B, self.T, dtype=np.int64)
        locations = np.full((self.patch_steps, B, self.action_dims), np.nan, dtype=np.float32)
        index, state = np.arange(B), []
        for t in range(self.T):
            step_probs, *state = self.step(t, images, state)
            if self.graphs[t] == "focus":
                location, *state = state
                locations[t - 1, index] = location
            done = step_probs.max(axis=1) >= thresholds[t] if t < self.T - 1 else np.ones(len(index), dtype=bool)
            probs[index[done]] = step_probs[done]
            exit_step[index[done]] = t + 1
            keep = ~done
            if not keep.any():
                break
            images, index, state = images[keep], index[keep], [s[keep] for s in state]
        return OnnxPrediction(probs.argmax(axis=1), probs, exit_step, locations)

    def predict_files(
        self, files: Sequence[Path], thresholds: np.ndarray, *, batch_size: int = 64, skip_bad: bool = False
    ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """Rows as ``glancefocus predict`` writes them, and the files skipped as unreadable."""
        def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            out = self.predict(images, thresholds)
            return out.probs, out.exit_step, out.locations

        return predict_in_batches(
            files, self.transform, run, madds=self.manifest["madds"], classes=self.classes,
            descriptions=self.manifest.get("class_descriptions"), batch_size=batch_size, skip_bad=skip_bad,
        )


class OnnxSteps:
    """:class:`OnnxGFNet`'s steps as the serving engine runs them (numpy arrays throughout)."""

    def __init__(self, model: OnnxGFNet) -> None:
        self.model, self.T, self.num_classes, self.action_dims = model, model.T, len(model.classes), model.action_dims
        self.patch_steps = model.patch_steps

    def put(self, images: np.ndarray) -> np.ndarray:
        return images

    def step(self, t: int, images: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None, list]:
        probs, *rest = self.model.step(t, images, state)
        return (probs, rest[0], rest[1:]) if self.model.graphs[t] == "focus" else (probs, None, rest)

    @staticmethod
    def take(x: np.ndarray, index: np.ndarray) -> np.ndarray:
        return x[index]

    @staticmethod
    def cat(xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs)
