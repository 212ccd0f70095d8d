"""glancefocus: GFNet (Glance and Focus Networks, NeurIPS 2020) in PyTorch.

Names are imported on first use, so ``glancefocus.runtime`` (ONNX Runtime inference, the
serving engine and server) runs where torch is not installed.
"""

from __future__ import annotations

from .runtime.lazy import lazy_exports

_EXPORTS = {
    "DataConfig": "config",
    "GFNet": "model",
    "GFNetConfig": "config",
    "GFNetOutput": "model",
    "PAPER_QS": "budget",
    "PPOConfig": "config",
    "PRESETS": "recipes",
    "Prediction": "model",
    "RECIPES": "recipes",
    "Recipe": "recipes",
    "StepScores": "budget",
    "TrainConfig": "config",
    "Weights": "weights",
    "budgeted_accuracy": "budget",
    "budgeted_curve": "budget",
    "crop_patches": "patches",
    "exit_fractions": "budget",
    "exit_steps": "budget",
    "find_thresholds": "budget",
    "glance_resize": "patches",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, lambda: list(globals()))
