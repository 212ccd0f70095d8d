"""Export to ONNX with the early exit kept: ``graphs`` (the glance and one focus step as
exportable modules, their state as explicit tensors) and ``bundle`` (``glancefocus export``:
the graphs, the manifest and their verification against :meth:`GFNet.predict`, written as one
folder) and ``quantize`` (``--quantize int8``: the graphs as calibrated int8, thresholds
anew).  The folder is run by :mod:`glancefocus.runtime`.  Names are imported on first use.
"""

from __future__ import annotations

from ..runtime.lazy import lazy_exports

_EXPORTS = {"export_checkpoint": "bundle", "export_gfnet": "bundle"}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, lambda: list(globals()))
