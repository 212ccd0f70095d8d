"""The serving side of glancefocus, torch-free: ONNX Runtime early exit, the early-exit
engine that batches across requests and steps, and the HTTP server.

It needs numpy, Pillow and onnxruntime (``pip install "glancefocus[runtime]"``, which adds
FastAPI, uvicorn and prometheus-client for ``glancefocus serve``); nothing here imports
torch, timm or torchvision.  Names are imported on first use.
"""

from __future__ import annotations

from .lazy import lazy_exports

_EXPORTS = {
    "Engine": "engine",
    "EngineConfig": "engine",
    "Transform": "preprocess",
    "OnnxGFNet": "deploy",
    "OnnxPrediction": "deploy",
    "OnnxSteps": "deploy",
    "QueueFull": "engine",
    "ServeConfig": "config",
    "Steps": "engine",
    "create_app": "server",
    "decode_rgb": "images",
    "image_files": "preprocess",
    "load_rgb": "images",
    "prediction_rows": "predictions",
    "read_manifest": "deploy",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, lambda: list(globals()))
