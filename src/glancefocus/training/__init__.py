"""Training: the paper's stages (``stages``, appendix A.2–A.3) run by the epoch loop they share
(``trainer``), with their losses (``losses``), Stage II's PPO (``ppo``), logs (``runlog``), and
``pipeline`` (``train``: a seeded model, its splits and every stage in order).  Names are
imported on first use.
"""

from __future__ import annotations

from ..runtime.lazy import lazy_exports

_EXPORTS = {
    "NonFiniteLoss": "trainer", "PIPELINES": "stages", "Run": "trainer", "STAGES": "stages", "Trainer": "trainer",
    "deep_supervision_loss": "losses", "fine_tune_classifier": "pipeline", "fit": "pipeline", "new_model": "pipeline", "train": "pipeline",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, lambda: list(globals()))
