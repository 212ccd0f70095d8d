"""Reading image files for prediction with PIL and numpy alone (no torch), so a deployed
model needs only ``onnxruntime`` and ``numpy``.

:class:`Transform` is the one definition of how a model is served its images (size, evaluation
crop, normalisation, interpolation), for every reader: called on a PIL image it is the
evaluation view in numpy (resize the shorter side to floor(size / crop_pct) with PIL's
bicubic or bilinear, centre crop, scale to [0, 1], normalise); torchvision's pipeline of the
same transform is :func:`glancefocus.data.sources.image_transform`, and a test holds the two
equal.  Files are read by :func:`glancefocus.runtime.images.load_rgb`, as by every other reader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..config import IMAGENET_MEAN, IMAGENET_STD, GFNetConfig
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
class Transform:
    """How a model is served its images: size, evaluation crop, input normalisation and the
    resize's interpolation ("bicubic" or "bilinear").  Called on a PIL image: the evaluation
    view, a normalised float32 array (3, image_size, image_size)."""

    image_size: int
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"

    @classmethod
    def of(cls, config: GFNetConfig) -> Transform:
        """The model's transform; the interpolation is its family's (bicubic for EfficientNet,
        bilinear for the others, as the release's ``dataset_interpolation``) unless set."""
        config = config.resolved()
        return cls(config.image_size, config.crop_pct, tuple(config.mean), tuple(config.std), config.resize_interpolation)

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
