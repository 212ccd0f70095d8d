"""Shared fixtures: tiny data sets made on the fly, a cached tiny model, one trained run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import numpy as np
import torch
from PIL import Image

from glancefocus import GFNet, GFNetConfig

SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGENETTE = SHARED / "data" / "imagenette"


def make_image_folder(root: Path, *, classes: int = 2, per_class: int = 8, size: int = 64, splits=("train", "val")) -> Path:
    """Class c's images are bright in channel c on a noisy background: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    for split in splits:
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = torch.rand(3, size, size, generator=g) * 0.4
                image[c % 3] += 0.5
                pixels = (image.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


_TINY: dict[tuple, GFNet] = {}


def tiny_model(backbone: str = "resnet18", *, T: int = 4, num_classes: int = 10, image_size: int = 64, patch: int = 32) -> GFNet:
    """A small random GFNet (64 px images, 32 px patches), in training mode; a fresh copy
    of a cached one, so building costs once per configuration."""
    key = (backbone, T, num_classes, image_size, patch)
    if key not in _TINY:
        torch.manual_seed(0)
        _TINY[key] = GFNet(
            GFNetConfig(backbone=backbone, num_classes=num_classes, patch_size=patch, T=T, image_size=image_size)
        )
    return copy.deepcopy(_TINY[key]).train()


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny convolutions gain nothing from several intra-op threads, and on a small machine
    shared with other processes OpenMP's spin-waiting makes them up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")

MODEL_ARGS = ["--backbone", "resnet18", "--patch-size", "32", "--T", "3", "--image-size", "64"]
RUN_ARGS = ["--batch-size", "8", "--workers", "0", "--quiet"]


def write_folder(root: Path, colours: dict[str, tuple[int, int, int]], n_train: int, n_val: int, seed: int = 0) -> Path:
    """An ImageFolder tree root/{train,val}/<class>/*.png of 64 px noisy single-colour images."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for name, colour in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.asarray(colour, dtype=np.float64) + rng.normal(0, 20, size=(64, 64, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory) -> Path:
    colours = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    return write_folder(tmp_path_factory.mktemp("colours"), colours, n_train=12, n_val=4)


@pytest.fixture(scope="session")
def trained_run(colour_data: Path, tmp_path_factory) -> Path:
    """One whole CLI training (every stage, then evaluation) on the colour data, shared by
    every test that needs a trained checkpoint."""
    from glancefocus.cli import main

    out = tmp_path_factory.mktemp("run_all")
    rc = main(["train", "--stage", "all", "--data", str(colour_data), *MODEL_ARGS, "--epochs", "1", *RUN_ARGS, "--out", str(out)])
    assert rc == 0
    return out
