"""Datasets, transforms and samplers for training and evaluation.

``--data builtin`` is the cluttered-digits set made from data inside scikit-learn (see
:mod:`glancefocus.cluttered_digits`); anything else is a folder with ``train/`` and ``val/``
in torchvision's ImageFolder layout.
"""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler, Subset
from torchvision import datasets, transforms
from torchvision.transforms import InterpolationMode
from tqdm.auto import tqdm

from .cluttered_digits import ClutteredDigits, ClutteredDigitsConfig

BUILTIN = "builtin"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(path: str) -> Image.Image:
    """Open any image as RGB (grayscale, RGBA, CMYK and palette images are converted)."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise ValueError(
            f"cannot read image {path}: {e}. The file is corrupt or truncated: replace or delete it."
        ) from e
    return image.convert("RGB")


@dataclass(frozen=True)
class ImageLoader:
    """:func:`load_rgb` that also refuses images smaller than ``min_size`` (the patch size):
    a focus patch of an upscaled thumbnail would read only blur.  Picklable, for workers."""

    min_size: int = 1

    def __call__(self, path: str) -> Image.Image:
        image = load_rgb(path)
        if min(image.size) < self.min_size:
            raise ValueError(
                f"image {path} is {image.size[0]}x{image.size[1]} pixels, smaller than the {self.min_size} px patch: "
                "remove it, upscale it yourself, or pass --skip-bad-images"
            )
        return image


def drop_bad_images(dataset: datasets.ImageFolder, loader: ImageLoader) -> list[str]:
    """Remove the samples ``loader`` cannot read from ``dataset``; returns their paths."""
    good, bad = [], []
    for path, target in tqdm(dataset.samples, desc=f"checking images in {dataset.root}", leave=False):
        try:
            loader(path)
            good.append((path, target))
        except ValueError:
            bad.append(path)
    dataset.samples = dataset.imgs = good
    dataset.targets = [t for _, t in good]
    return bad


def image_transform(
    *, image_size: int, crop_pct: float, train: bool, mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD
) -> transforms.Compose:
    """ImageNet-style transforms: RandomResizedCrop + flip for training; resize to
    image_size / crop_pct and centre crop for evaluation; bicubic (SPEC "Table 2")."""
    bicubic = InterpolationMode.BICUBIC
    if train:
        spatial = [transforms.RandomResizedCrop(image_size, interpolation=bicubic), transforms.RandomHorizontalFlip()]
    else:
        spatial = [transforms.Resize(math.floor(image_size / crop_pct), interpolation=bicubic), transforms.CenterCrop(image_size)]
    return transforms.Compose([*spatial, transforms.ToTensor(), transforms.Normalize(mean, std)])


def load_split(
    data: str,
    split: str,
    *,
    image_size: int,
    crop_pct: float,
    train: bool,
    mean: tuple = IMAGENET_MEAN,
    std: tuple = IMAGENET_STD,
    min_size: int = 1,
    skip_bad: bool = False,
) -> Dataset:
    """One split ("train" or "val") of ``data`` with its transform; checks it is usable.

    Unreadable files and images smaller than ``min_size`` raise an error naming the file
    when loaded, or with ``skip_bad`` are removed up front (and counted)."""
    if data == BUILTIN:  # whole canvases (no crop), resized only if the model asks another size
        steps = [transforms.Normalize(mean, std)]
        if image_size != builtin_image_size():
            steps.insert(0, transforms.Resize(image_size, interpolation=InterpolationMode.BICUBIC, antialias=True))
        return ClutteredDigits(split, transform=transforms.Compose(steps), fresh_each_epoch=train)
    root = Path(data) / split
    if not root.is_dir():
        raise FileNotFoundError(
            f"data folder {root} does not exist: --data must contain train/ and val/ folders, "
            "each with one sub-folder of images per class (torchvision ImageFolder layout)"
        )
    loader = ImageLoader(min_size)
    try:
        dataset = datasets.ImageFolder(
            str(root), transform=image_transform(image_size=image_size, crop_pct=crop_pct, train=train, mean=mean, std=std),
            loader=loader,
        )
    except FileNotFoundError as e:
        raise ValueError(f"no images found under {root}: {e}") from e
    if skip_bad:
        dataset.skipped = drop_bad_images(dataset, loader)
        if dataset.skipped:
            print(f"skipped {len(dataset.skipped)} unreadable or too small image(s) in {root}, e.g. {dataset.skipped[0]}")
        if not dataset.samples:
            raise ValueError(f"no readable images under {root}")
    if len(dataset.classes) < 2:
        raise ValueError(f"{root} has {len(dataset.classes)} class folder(s); a classifier needs at least 2")
    return dataset


def evaluation_view(dataset: Dataset, **transform_options) -> Dataset:
    """The same images as ``dataset`` (no re-scan) with the evaluation transform."""
    if isinstance(dataset, ClutteredDigits):  # the same canvases, kept when training draws fresh ones
        view = copy.copy(dataset)
        view.fresh_each_epoch = False
        return view
    if not isinstance(dataset, datasets.ImageFolder):
        return dataset
    view = copy.copy(dataset)
    view.transform = image_transform(train=False, **transform_options)
    return view


def builtin_image_size() -> int:
    return ClutteredDigitsConfig().canvas


class SeededAugmentation(Dataset):
    """Wraps a dataset so the random augmentation of sample i in epoch e of a stage depends
    only on (seed, stage, e, i): it survives a resume, whatever the workers, and each stage
    sees fresh augmentations rather than replaying the previous stage's."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch, self.stage = dataset, seed, 0, ""

    def set_epoch(self, epoch: int, stage: str = "") -> None:
        self.epoch, self.stage = epoch, stage
        inner = self.dataset.dataset if isinstance(self.dataset, Subset) else self.dataset
        if hasattr(inner, "set_epoch"):  # data drawn afresh each epoch (the built-in set)
            inner.set_epoch(epoch, stage)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):  # transforms draw from the CPU generator; CUDA's is left alone
            torch.default_generator.manual_seed(zlib.crc32(f"{self.seed}:{self.stage}:{self.epoch}:{index}".encode()))
            return self.dataset[index]


def holdout_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, held-out) index lists: held-out images select the Stage II
    model and set the early-exit thresholds, and are never trained on (appendix B.2)."""
    if n == 0:
        raise ValueError("the training set is empty")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = math.floor(n * fraction) if fraction > 0 else 0
    if fraction > 0 and held == 0:
        held = 1
    if held >= n:
        raise ValueError(f"holdout fraction {fraction} leaves no training images out of {n}")
    return sorted(order[held:]), sorted(order[:held])


class ResumableSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one process of ``world``, reproducible from
    (seed, epoch), that can skip the batches already consumed before a resume."""

    def __init__(self, size: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        self.size, self.shuffle, self.seed, self.rank, self.world = size, shuffle, seed, rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_samples: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_samples

    def _indices(self, rank: int | None = None) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        per_rank = math.ceil(self.size / self.world)
        order += order[: per_rank * self.world - self.size]  # pad so every rank gets as many
        return order[(self.rank if rank is None else rank) :: self.world]

    def gathered_indices(self) -> torch.Tensor:
        """Dataset index of each row of an all-gather of every rank's outputs, in rank order."""
        return torch.tensor([i for r in range(self.world) for i in self._indices(r)])

    def __iter__(self):
        return iter(self._indices()[self.skip :])

    def __len__(self) -> int:
        return math.ceil(self.size / self.world) - self.skip


def subset(dataset: Dataset, indices: list[int]) -> Subset:
    return Subset(dataset, indices)
