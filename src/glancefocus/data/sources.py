"""Data: where images come from, the train / held-out / val splits, and their loaders.

A data source is an object that knows its classes, the image size it serves natively and
whether it lives in memory: :class:`BuiltinDigits` (the cluttered-digits set made from data
inside scikit-learn, see :mod:`glancefocus.data.cluttered_digits`) or :class:`ImageFolderSource`
(a folder with ``train/`` and ``val/`` in torchvision's ImageFolder layout).
:func:`data_source` picks one from a ``--data`` value.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2
from tqdm.auto import tqdm

from .cluttered_digits import ClutteredDigits, ClutteredDigitsConfig
from ..config import DataConfig, GFNetConfig
from ..distributed import World
from ..runtime.images import load_rgb
from ..runtime.preprocess import Transform
from .sampling import ResumableSampler, SeededAugmentation, holdout_split

BUILTIN = "builtin"


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


class BuiltinDigits:
    """The built-in cluttered digits: in memory, served as whole canvases (no crop)."""

    in_memory = True
    fresh_each_epoch = True  # training canvases are redrawn every epoch
    native_size: int | None = ClutteredDigitsConfig().canvas

    def classes(self) -> list[str]:
        return list(ClutteredDigits.classes)

    def split(self, split: str, transform: Transform, *, train: bool, min_size: int = 1, skip_bad: bool = False) -> Dataset:
        steps = [v2.Normalize(transform.mean, transform.std)]
        if transform.image_size != self.native_size:  # resized only if the model asks another size
            steps.insert(0, v2.Resize(transform.image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True))
        return ClutteredDigits(split, transform=v2.Compose(steps), fresh_each_epoch=train)


@dataclass(frozen=True)
class ImageFolderSource:
    """``root/{train,val}/<class>/<image>``: decoded from disk, any size."""

    root: Path
    in_memory = False
    fresh_each_epoch = False
    native_size: int | None = None

    def classes(self) -> list[str]:
        return self.split("train", Transform(32, 1.0), train=False).classes

    def split(self, split: str, transform: Transform, *, train: bool, min_size: int = 1, skip_bad: bool = False) -> Dataset:
        """Unreadable files and images smaller than ``min_size`` raise an error naming the
        file when loaded, or with ``skip_bad`` are removed up front (and counted)."""
        root = self.root / split
        if not root.is_dir():
            raise FileNotFoundError(
                f"data folder {root} does not exist: --data must contain train/ and val/ folders, "
                "each with one sub-folder of images per class (torchvision ImageFolder layout)"
            )
        loader = ImageLoader(min_size)
        try:
            dataset = datasets.ImageFolder(str(root), transform=image_transform(transform, train=train), loader=loader)
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


DataSource = BuiltinDigits | ImageFolderSource


def data_source(root: str | os.PathLike) -> DataSource:
    """The source a ``--data`` value names: "builtin" or an ImageFolder root."""
    return BuiltinDigits() if str(root) == BUILTIN else ImageFolderSource(Path(root))


def loader_workers(data: DataConfig, device: torch.device) -> int:
    """Loader processes: ``data.workers`` if given; else none for in-memory data, nor on a CPU
    (they would take cores from the model's own threads), and a few for JPEG decoding beside a GPU."""
    if data.workers is not None:
        return data.workers
    if data_source(data.root).in_memory or device.type == "cpu":
        return 0
    return min(8, os.cpu_count() or 1)


def image_transform(transform: Transform, *, train: bool) -> v2.Compose:
    """``transform`` in torchvision, on PIL images or uint8 tensors alike: the release's
    RandomResizedCrop (scale 0.08–1) + flip for training; for evaluation the resize to
    image_size / crop_pct and centre crop that :class:`Transform` does in numpy (a test holds
    them equal); ``transform.interpolation`` for both (the release's ``dataset_interpolation``)."""
    mode, size = v2.InterpolationMode(transform.interpolation), transform.image_size
    if train:
        spatial = [v2.RandomResizedCrop(size, interpolation=mode, antialias=True), v2.RandomHorizontalFlip()]
    else:
        spatial = [v2.Resize(math.floor(size / transform.crop_pct), interpolation=mode, antialias=True), v2.CenterCrop(size)]
    return v2.Compose([*spatial, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(transform.mean, transform.std),
                       v2.ToPureTensor()])


def evaluation_view(dataset: Dataset, transform: Transform) -> Dataset:
    """The same images as ``dataset`` (no re-scan) with the evaluation transform."""
    if isinstance(dataset, ClutteredDigits):  # the same canvases, kept when training draws fresh ones
        view = copy.copy(dataset)
        view.fresh_each_epoch = False
        return view
    if not isinstance(dataset, datasets.ImageFolder):
        return dataset
    view = copy.copy(dataset)
    view.transform = image_transform(transform, train=False)
    return view


@dataclass
class Splits:
    """Training images minus the held-out ones (augmented, reproducibly), the held-out
    training images (evaluation transform: model selection and thresholds, appendix B.2), val,
    and the training images again as evaluation serves them (Stage II's ``stage2_images``)."""

    train: SeededAugmentation
    heldout: Dataset
    val: Dataset
    classes: list[str]
    train_plain: SeededAugmentation


def load_data(data: DataConfig, model: GFNetConfig, *, seed: int) -> Splits:
    """Train / held-out / val splits of ``data.root`` served at ``model``'s size and normalisation."""
    source, transform = data_source(data.root), Transform.of(model)
    options = {"min_size": model.patch_size, "skip_bad": data.skip_bad_images}
    train_full = source.split("train", transform, train=True, **options)
    val = source.split("val", transform, train=False, **options)
    classes = list(train_full.classes)
    if len(classes) != model.num_classes:
        raise ValueError(f"{data.root} has {len(classes)} classes but the model was built for {model.num_classes}")
    train_idx, held_idx = holdout_split(len(train_full), data.holdout, seed)
    evaluated = evaluation_view(train_full, transform)
    heldout = Subset(evaluated, held_idx)  # never train_idx: DataConfig refuses --holdout 0
    redraw = train_full.set_epoch if source.fresh_each_epoch else None
    train = SeededAugmentation(Subset(train_full, train_idx), seed, redraw=redraw)
    # Only folder data is augmented; the built-in set's fresh canvases are its training data.
    plain = SeededAugmentation(Subset(evaluated, train_idx), seed) if redraw is None else train
    return Splits(train, heldout, val, classes, plain)


def make_loader(dataset: Dataset, *, batch_size: int, world: World, train: bool, seed: int = 0, workers: int = 0) -> DataLoader:
    """A loader whose order is fixed by (seed, epoch) and resumable; ``batch_size`` is the
    global batch, shared across the processes of ``world``."""
    if len(dataset) == 0:
        raise ValueError("a data split is empty: add images or lower --holdout")
    batch = max(batch_size // world.size, 1)
    sampler = ResumableSampler(len(dataset), shuffle=train, seed=seed, rank=world.rank, world=world.size)
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        drop_last=train and len(sampler) >= batch,
        pin_memory=world.device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator(),  # keeps the global RNG untouched, so resumes replay exactly
    )
