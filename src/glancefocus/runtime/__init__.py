"""The serving side of glancefocus, torch-free: ONNX Runtime early exit, the early-exit
engine that batches across requests and steps, and the HTTP server.

It needs numpy, Pillow and onnxruntime (``pip install "glancefocus[runtime]"``, which adds
FastAPI, uvicorn and prometheus-client for ``glancefocus serve``); nothing here imports
torch, timm or torchvision.  Names are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": "engine",
    "EngineConfig": "engine",
    "EvalTransform": "preprocess",
    "OnnxGFNet": "deploy",
    "OnnxPrediction": "deploy",
    "OnnxSteps": "deploy",
    "QueueFull": "engine",
    "ServeConfig": "config",
    "Steps": "engine",
    "create_app": "server",
    "image_files": "preprocess",
    "prediction_rows": "predictions",
    "read_manifest": "deploy",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
