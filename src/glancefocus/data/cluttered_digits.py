"""Cluttered digits: a built-in, download-free data set where *where to look* matters.

Each sample is a 112x112 RGB canvas (by default): a dark, mildly noisy background
holding one handwritten digit, upscaled bilinearly to 14x14 (then contrast-stretched
into crisp strokes) at a uniformly random position, among 8 clutter fragments:
5x5 crops of *other* digits of the same split, scattered around it (never over
it, so the label stays unambiguous), all max-blended and given one random colour
tint per canvas (colour carries no hint of where the digit is). The geometry is
chosen for a 48 px glance (the demo's patch size): there the digit shrinks to 6 px,
a blob that shows *where* it is long before a model learns *which* it is, while a 48 px patch
at full resolution holds it whole -- if it is in the right place, which a uniformly
random patch is about one time in eight. This is the setting of the cluttered MNIST
benchmark of the Recurrent Attention Model (Mnih et al., "Recurrent Models of
Visual Attention", NeurIPS 2014), which GFNet's glance-and-focus policy targets.

The source images are the 1,797 8x8 digits (17 grey levels, 10 classes) shipped
inside the scikit-learn wheel (``sklearn/datasets/data/digits.csv.gz``), so
nothing is downloaded. The digits are split per class, 80% / 20%, into disjoint
train / val pools (val digits come from writers' samples never seen in
training); by default 12,000 train and 2,000 val canvases are drawn from them.
Generation is vectorised torch code driven by a ``torch.Generator`` seeded from
``(config.seed, split)``: bit-identical on every call, independent of the
global RNG, and about two seconds for the default train + val on 2 CPU cores.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "ClutteredDigitsConfig", "ClutteredDigits", "load_digit_images", "source_indices",
    "upscale_digits", "make_cluttered_digits", "write_image_folder",
]

_SPLITS = {"train": 0, "val": 1}
_TRAIN_FRACTION = 0.8
_SPLIT_SEED = 20140624  # fixed, NOT config.seed: pools stay disjoint whatever seeds the splits use
_CHUNK = 1024  # fixed chunk size keeps memory flat without making results machine-dependent


@dataclass(frozen=True)
class ClutteredDigitsConfig:
    """Geometry and size of the cluttered-digits data set (all lengths in pixels)."""

    canvas: int = 112  # side of the square canvas
    digit: int = 14  # side of the upscaled digit
    fragments: int = 8  # clutter pieces per canvas
    fragment: int = 5  # side of a clutter piece
    train_size: int = 12000
    val_size: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("canvas", "digit", "fragment", "train_size", "val_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClutteredDigitsConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.fragments < 0:
            raise ValueError(f"ClutteredDigitsConfig.fragments must be >= 0, got {self.fragments}")
        if self.seed < 0:
            raise ValueError(f"ClutteredDigitsConfig.seed must be >= 0, got {self.seed}")
        if self.digit > self.canvas:
            raise ValueError(f"digit ({self.digit}) must fit in the canvas ({self.canvas}): need digit <= canvas")
        if self.fragment > self.digit:
            raise ValueError(
                f"fragment ({self.fragment}) is cropped from a digit ({self.digit}): need fragment <= digit"
            )


@functools.lru_cache(maxsize=1)
def _digits_array() -> np.ndarray:
    # find_spec locates the wheel without importing sklearn (a slow import we do not need)
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-learn is required: its wheel ships the 8x8 digits")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return np.loadtxt(path, delimiter=",", dtype=np.float32)


def load_digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Return scikit-learn's 1,797 digits: float images (N, 8, 8) in [0, 1] and int64 labels (N,)."""
    data = torch.from_numpy(_digits_array().copy())
    return (data[:, :64] / 16.0).reshape(-1, 8, 8), data[:, 64].long()


def source_indices(split: str) -> torch.Tensor:
    """Indices (sorted) of the source digits of ``split``: a fixed per-class 80/20 split, disjoint."""
    split_id = _split_id(split)
    _, labels = load_digit_images()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    picked = []
    for c in range(10):  # stratified, so both pools keep the class balance of the source
        members = perm[labels[perm] == c]
        cut = round(_TRAIN_FRACTION * len(members))
        picked.append(members[:cut] if split_id == 0 else members[cut:])
    return torch.cat(picked).sort().values


def upscale_digits(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinearly upscale (N, 8, 8) digits to (N, size, size) in [0, 1], then contrast-stretch them."""
    up = F.interpolate(images[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    # bilinear upscaling gives fat blurry blobs; the stretch makes crisp, thinner, MNIST-like strokes
    return ((up - 0.4) / 0.4).clamp(0, 1)


def _split_id(split: str) -> int:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    return _SPLITS[split]


def _paste_max(canvas: torch.Tensor, patches: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> None:
    """Max-blend patch i (B, s, s) into canvas i (B, H, W) at (top[i], left[i]), in place, all i at once."""
    ar = torch.arange(patches.shape[-1])
    n = torch.arange(len(canvas))[:, None, None]
    rows, cols = (top[:, None] + ar)[:, :, None], (left[:, None] + ar)[:, None, :]
    canvas[n, rows, cols] = torch.maximum(canvas[n, rows, cols], patches)


@overload
def make_cluttered_digits(split: str, config: ClutteredDigitsConfig = ..., *,
                          return_positions: Literal[False] = ...) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def make_cluttered_digits(split: str, config: ClutteredDigitsConfig = ..., *,
                          return_positions: Literal[True]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...
def make_cluttered_digits(split: str, config: ClutteredDigitsConfig = ClutteredDigitsConfig(), *,
                          return_positions: bool = False):
    """Generate the ``split`` ("train" or "val") canvases deterministically from ``config``.

    Returns uint8 images (N, 3, canvas, canvas) and int64 labels (N,); with ``return_positions``
    also the int64 (N, 2) (top, left) corner of each canvas's digit.
    """
    gen = torch.Generator().manual_seed(2 * config.seed + _split_id(split))
    images, labels = load_digit_images()
    pool = source_indices(split)
    up, pool_labels = upscale_digits(images[pool], config.digit), labels[pool]
    n = config.train_size if split == "train" else config.val_size
    size, d, f = config.canvas, config.digit, config.fragment
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    out_labels = torch.empty(n, dtype=torch.long)
    positions = torch.empty(n, 2, dtype=torch.long)
    lo = (d - f) // 4  # crop fragments away from the digit's empty border so they carry strokes
    for start in range(0, n, _CHUNK):
        b = min(_CHUNK, n - start)
        which = torch.randint(len(pool), (b,), generator=gen)
        pos = torch.randint(size - d + 1, (b, 2), generator=gen)
        canvas = torch.zeros(b, size, size)
        for _ in range(config.fragments):  # a loop over the few clutter slots, never over samples
            # a nonzero offset modulo the pool never picks the target digit itself
            other = (which + torch.randint(1, max(len(pool), 2), (b,), generator=gen)) % len(pool)
            off = lo + torch.randint(d - f - 2 * lo + 1, (b, 2), generator=gen)
            ar = torch.arange(f)
            crops = up[other[:, None, None], (off[:, :1] + ar)[:, :, None], (off[:, 1:] + ar)[:, None, :]]
            where = torch.randint(size - f + 1, (b, 2), generator=gen)
            # redraw positions that would cover the target, so its label stays unambiguous
            # (only cramped configs, barely larger than the digit, can keep an overlap after 32 tries)
            for _ in range(32):
                hit = ((where - pos > -f) & (where - pos < d)).all(1)
                if not hit.any():
                    break
                where = torch.where(hit[:, None], torch.randint(size - f + 1, (b, 2), generator=gen), where)
            _paste_max(canvas, crops, where[:, 0], where[:, 1])
        _paste_max(canvas, up[which], pos[:, 0], pos[:, 1])
        # one random tint per canvas for digit and clutter alike: RGB, yet colour says nothing of location
        tint = 0.3 + 0.7 * torch.rand(b, 3, generator=gen)
        tint = tint / tint.amax(1, keepdim=True)
        # dark noisy background (noise also grains the strokes); values stay in [0, 1] before the tint
        grey = canvas.add_(torch.rand(b, size, size, generator=gen).mul_(0.08).add_(0.04)).clamp_(max=1.0)
        rgb = grey[:, None] * (255.0 * tint)[:, :, None, None]
        out[start:start + b] = rgb.add_(0.5).to(torch.uint8)  # +0.5 then truncation: round to nearest
        out_labels[start:start + b], positions[start:start + b] = pool_labels[which], pos
    return (out, out_labels, positions) if return_positions else (out, out_labels)


class ClutteredDigits(Dataset):
    """Map-style data set of one split; items are (float image (3, H, W) in [0, 1], int label).

    With ``fresh_each_epoch``, :meth:`set_epoch` draws a new set of canvases for each
    (stage, epoch) from the same source digits: an endless supply, as RAM's cluttered MNIST
    is generated on the fly, so no model can memorise canvases (a few thousand fixed ones
    are learnt by heart within a few epochs, the glance first, and then the focus steps
    have nothing left to teach).
    """

    classes = [str(c) for c in range(10)]

    def __init__(self, split: str, config: ClutteredDigitsConfig = ClutteredDigitsConfig(),
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                 fresh_each_epoch: bool = False) -> None:
        self.split, self.config, self.transform, self.fresh_each_epoch = split, config, transform, fresh_each_epoch
        self.images, self.labels = make_cluttered_digits(split, config)
        self.targets: list[int] = self.labels.tolist()  # like torchvision's ImageFolder
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def set_epoch(self, epoch: int, stage: str = "") -> None:
        if not self.fresh_each_epoch:
            return
        seed = zlib.crc32(f"{self.config.seed}:{stage}:{epoch}".encode())
        self.images, self.labels = make_cluttered_digits(self.split, replace(self.config, seed=seed))
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float() / 255.0
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def _write_png(image: torch.Tensor, path: Path) -> None:
    """Save a uint8 (3, H, W) tensor as PNG (PIL: torchvision's own codecs are deprecated)."""
    from PIL import Image  # local: only writing needs it

    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)


def write_image_folder(root: str | os.PathLike, config: ClutteredDigitsConfig = ClutteredDigitsConfig()) -> None:
    """Write ``root/{train,val}/<class>/<index>.png`` for ImageFolder-style tools.

    Everything goes to a temporary sibling directory renamed to ``root`` at the end, so an
    interrupted write leaves no half-made folder. ``root`` must not exist yet. All ten class
    folders are always made, so ImageFolder's class indices equal the labels (it needs each
    folder non-empty: true for any split size worth training on).
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists; remove it or choose another root")
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split in _SPLITS:
            images, labels = make_cluttered_digits(split, config)
            for c in ClutteredDigits.classes:
                (tmp / split / c).mkdir(parents=True)
            for i, (image, label) in enumerate(zip(images, labels.tolist())):
                _write_png(image, tmp / split / str(label) / f"{i:05d}.png")
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
