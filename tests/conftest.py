"""Shared fixtures: tiny ImageFolder data sets made on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

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
