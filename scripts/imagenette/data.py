"""Imagenette for the reproduction: decoded once into memory (JPEG decoding would
dominate on two cores), served with the release's transforms.

Each image is stored resized to 224×224 (its aspect ratio not kept: one tensor holds them
all). Training then crops it as the release does (``RandomResizedCrop`` with torchvision's
default scale 0.08–1, flip); evaluation resizes it to 224 / 0.875 and crops the centre, both
with the model's data interpolation (bicubic for EfficientNet, the release's).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from glancefocus.models.checkpoint import atomic_write
from glancefocus.config import GFNetConfig
from glancefocus.runtime.preprocess import Transform
from glancefocus.data.sources import Splits, image_transform, load_rgb
from glancefocus.data.sampling import SeededAugmentation, holdout_split

CACHE_SIZE = 224


class CachedImages(Dataset):
    """Decoded uint8 images held in memory."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: list[str], transform) -> None:
        self.images, self.targets, self.classes, self.transform = images, targets, classes, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), int(self.targets[i])


def labelled_files(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """An ImageFolder's files in the reproduction's order (classes, then names, sorted), their
    labels and the classes: the order its held-out split and its caches index."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    pairs = [(f, c) for c, name in enumerate(classes) for f in sorted((root / name).iterdir())]
    return [f for f, _ in pairs], [c for _, c in pairs], classes


def decode(root: Path, cache: Path, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every image of ``root`` decoded (or, with ``limit``, that many evenly spaced ones:
    a smoke run decodes and caches only what it uses)."""
    cache = cache.with_suffix(f".limit{limit}.pt") if limit else cache
    if cache.exists():
        return torch.load(cache, weights_only=False)
    files, labels, classes = labelled_files(root)
    if limit:
        keep = torch.linspace(0, len(files) - 1, min(limit, len(files))).long().tolist()
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    images = torch.empty(len(files), 3, CACHE_SIZE, CACHE_SIZE, dtype=torch.uint8)
    resize = v2.Resize((CACHE_SIZE, CACHE_SIZE), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    for i, f in enumerate(tqdm(files, desc=f"decoding {root.name}", leave=False)):
        images[i] = resize(v2.functional.pil_to_tensor(load_rgb(str(f))))
    result = (images, torch.tensor(labels), classes)
    atomic_write(cache, lambda tmp: torch.save(result, tmp))  # a later run trusts whatever file is there
    return result


def load_imagenette(root: Path, cache_dir: Path, config: GFNetConfig, *, seed: int, holdout: float, limit: int) -> Splits:
    """Train (augmented) / held-out / val splits; ``limit`` keeps that many evenly spaced
    train and val images (smoke runs)."""
    train_x, train_y, classes = decode(root / "train", cache_dir / "train.pt", limit)
    val_x, val_y, _ = decode(root / "val", cache_dir / "val.pt", limit)
    transform = Transform.of(config)
    train_idx, held_idx = holdout_split(len(train_y), holdout, seed)
    augmented = CachedImages(train_x, train_y, classes, image_transform(transform, train=True))
    plain = CachedImages(train_x, train_y, classes, image_transform(transform, train=False))
    return Splits(
        train=SeededAugmentation(Subset(augmented, train_idx), seed),
        heldout=Subset(plain, held_idx),
        val=CachedImages(val_x, val_y, classes, image_transform(transform, train=False)),
        classes=classes,
        train_plain=SeededAugmentation(Subset(plain, train_idx), seed),
    )
