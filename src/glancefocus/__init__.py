"""glancefocus: GFNet (Glance and Focus Networks, NeurIPS 2020) in PyTorch.

Names are imported on first use, so ``glancefocus.runtime`` (ONNX Runtime inference, the
serving engine and server) runs where torch is not installed.
"""

from __future__ import annotations

from .runtime.lazy import lazy_exports

_EXPORTS = {
    "DataConfig": "config",
    "GFNet": "models.gfnet",
    "GFNetConfig": "config",
    "GFNetOutput": "models.gfnet",
    "PAPER_QS": "models.budget",
    "PPOConfig": "config",
    "TABLE2": "config.recipes",
    "Prediction": "models.gfnet",
    "RECIPES": "config.recipes",
    "Recipe": "config.recipes",
    "Resolved": "config.recipes",
    "StepScores": "models.budget",
    "TrainConfig": "config",
    "Weights": "config.weights",
    "budgeted_accuracy": "models.budget",
    "budgeted_curve": "models.budget",
    "crop_patches": "models.patches",
    "exit_fractions": "models.budget",
    "exit_steps": "models.budget",
    "find_thresholds": "models.budget",
    "glance_resize": "models.patches",
    "resolve": "config.recipes",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, lambda: list(globals()))
