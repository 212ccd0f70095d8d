"""Evaluation: per-step probabilities, anytime, oracle and budgeted accuracy of a model or a
checkpoint, step 2 over a grid of places (``evaluate``), the patch ablation and where π looks
(``ablation``), the plain cascade of static models to compare with (``cascade``), and every
figure (``plots``).  Names are imported on first use.
"""

from __future__ import annotations

from ..runtime.lazy import lazy_exports

_EXPORTS = {
    "FocusGrid": "evaluate", "anytime_accuracy": "evaluate", "collect_probs": "evaluate", "evaluate_checkpoint": "evaluate",
    "evaluate_model": "evaluate", "cascade_probs": "cascade", "evaluate_cascade": "cascade", "first_focus_grid": "evaluate", "grid_locations": "evaluate", "oracle_accuracy": "evaluate",
    "plot_results": "plots", "visualize": "plots",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, lambda: list(globals()))
