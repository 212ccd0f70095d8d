"""Reading image files for prediction with PIL and numpy alone (no torch), so a deployed
model needs only ``onnxruntime`` and ``numpy``.

:class:`EvalTransform` is the evaluation transform of :func:`glancefocus.data.sources.image_transform`
(resize the shorter side to floor(size / crop_pct) with PIL's bicubic or bilinear, centre crop, scale to
[0, 1], normalise) written in numpy; it gives the same array as torchvision's.  Files are
read by :func:`glancefocus.runtime.images.load_rgb`, as by every other reader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .images import load_rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the named folders."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    if not files:
        raise ValueError(f"no images found in {', '.join(map(str, paths))}")
    return files


@dataclass(frozen=True)
class EvalTransform:
    """PIL image → normalised float32 array (3, image_size, image_size), as evaluation sees it."""

    image_size: int
    crop_pct: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"  # of the shorter-side resize: "bicubic" or "bilinear"

    def __call__(self, image: Image.Image) -> np.ndarray:
        short = math.floor(self.image_size / self.crop_pct)
        w, h = image.size
        # torchvision's rule for the longer side: int(short * long / short_side), no rounding.
        size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        if size != image.size:
            image = image.resize(size, Image.Resampling[self.interpolation.upper()])
        # torchvision centres with Python's round (half to even), so we do too.
        top = int(round((size[1] - self.image_size) / 2.0))
        left = int(round((size[0] - self.image_size) / 2.0))
        pixels = np.asarray(image, dtype=np.uint8)[top : top + self.image_size, left : left + self.image_size]
        scaled = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return (scaled - mean) / std


def read_images(
    files: Sequence[Path], transform: Callable[[Image.Image], Any], *, skip_bad: bool = False
) -> tuple[list[Any], list[Path], list[dict[str, str]]]:
    """``transform`` of every readable file: (images, their files, skipped).

    An unreadable file raises a ValueError naming it, or with ``skip_bad`` is left out and
    listed in ``skipped`` as {"file", "error"}.
    """
    images, kept, skipped = [], [], []
    for f in files:
        try:
            image = load_rgb(str(f))
        except ValueError as e:
            if not skip_bad:
                raise ValueError(f"{e} (or pass --skip-bad-images to leave such files out)") from e
            skipped.append({"file": str(f), "error": str(e.__cause__ or e)})
            continue
        images.append(transform(image))
        kept.append(f)
    return images, kept, skipped
