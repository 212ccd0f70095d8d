"""The model and its parts (SPEC "The model").

``patches`` (the glance resize and the crops), ``backbones`` (any timm CNN as an encoder),
``classifier`` (fC), ``policy`` (π), ``gfnet`` (:class:`GFNet`: one ``step`` for training,
evaluation, early exit and the multiply-add count), ``budget`` (thresholds and budgeted
accuracy), ``checkpoint`` (the safetensors format) and ``release`` (the authors' checkpoints
imported).  Names are imported on first use.
"""

from __future__ import annotations

from ..runtime.lazy import lazy_exports

_EXPORTS = {
    "CLASSIFIERS": "classifier", "GFNet": "gfnet", "GFNetOutput": "gfnet", "PatchPolicy": "policy", "Prediction": "gfnet",
    "StepScores": "budget", "budgeted_accuracy": "budget", "budgeted_curve": "budget", "create_encoder": "backbones",
    "crop_patches": "patches", "exit_fractions": "budget", "exit_steps": "budget", "find_thresholds": "budget",
    "glance_resize": "patches", "import_release": "release", "load_checkpoint": "checkpoint", "read_meta": "checkpoint",
    "resample_patches": "patches", "save_checkpoint": "checkpoint",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, lambda: list(globals()))
