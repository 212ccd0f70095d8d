"""Data: the built-in cluttered digits (``cluttered_digits``), reproducible order and
augmentation (``sampling``), and the sources, transforms and train / held-out / val splits
every stage reads (``sources``).  Names are imported on first use.
"""

from __future__ import annotations

from ..runtime.lazy import lazy_exports

_EXPORTS = {
    "BuiltinDigits": "sources", "ClutteredDigits": "cluttered_digits", "ClutteredDigitsConfig": "cluttered_digits",
    "ImageFolderSource": "sources", "Splits": "sources", "data_source": "sources", "holdout_split": "sampling",
    "load_data": "sources", "make_loader": "sources", "write_image_folder": "cluttered_digits",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, lambda: list(globals()))
