"""Tests of the built-in cluttered-digits data set (glancefocus.data.cluttered_digits)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from glancefocus.data.cluttered_digits import (
    ClutteredDigits,
    ClutteredDigitsConfig,
    load_digit_images,
    make_cluttered_digits,
    source_indices,
    upscale_digits,
    write_image_folder,
)
from glancefocus.runtime.preprocess import Transform
from glancefocus.data.sources import BUILTIN, data_source

SMALL = ClutteredDigitsConfig(train_size=300, val_size=200)


def _grey(images: torch.Tensor) -> torch.Tensor:
    # the brightest channel of each canvas has tint 1, so the channel max undoes the colour
    return images.amax(1).float() / 255.0


def _normalise(x: torch.Tensor) -> torch.Tensor:
    x = x.flatten(1)
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)


def _crop(images: torch.Tensor, pos: torch.Tensor, side: int) -> torch.Tensor:
    return torch.stack([img[t:t + side, l:l + side] for img, (t, l) in zip(images, pos.tolist())])


def test_load_digit_images_matches_sklearn() -> None:
    from sklearn.datasets import load_digits

    images, labels = load_digit_images()
    ref = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert torch.equal(images * 16, torch.from_numpy(ref.images).float())
    assert torch.equal(labels, torch.from_numpy(ref.target).long())
    assert images.min() == 0 and images.max() == 1


def test_source_digits_are_scikit_learns_read_without_importing_it() -> None:
    """Our reader of the wheel's file gives scikit-learn's own digits: 1,797 images of 17 grey
    levels (0..16, scaled to 0..1) with labels 0..9, pixel for pixel as ``load_digits``."""
    from glancefocus.data.cluttered_digits import load_digit_images

    images, labels = load_digit_images()
    reference = pytest.importorskip("sklearn.datasets").load_digits()
    assert images.shape == (1797, 8, 8) and labels.tolist() == reference.target.tolist()
    assert torch.equal(images * 16, torch.from_numpy(reference.images).float())
    assert sorted(set((images * 16).flatten().tolist())) == list(range(17))


def test_deterministic_and_independent_of_global_rng() -> None:
    torch.manual_seed(1)
    a = make_cluttered_digits("train", SMALL)
    torch.manual_seed(12345)
    torch.rand(1000)
    b = make_cluttered_digits("train", SMALL)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other = make_cluttered_digits("train", dataclasses.replace(SMALL, seed=1))
    assert not torch.equal(a[0], other[0])
    val = make_cluttered_digits("val", dataclasses.replace(SMALL, val_size=300))
    assert not torch.equal(a[0], val[0])


@pytest.mark.parametrize("split", ["train", "val"])
def test_shapes_dtypes_labels(split: str) -> None:
    images, labels = make_cluttered_digits(split, SMALL)
    n = SMALL.train_size if split == "train" else SMALL.val_size
    assert images.shape == (n, 3, SMALL.canvas, SMALL.canvas) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert set(labels.tolist()) == set(range(10))
    # colour: the three channels differ, yet the background stays dark
    assert not torch.equal(images[:, 0], images[:, 1])
    assert images.float().median() < 40


def test_source_digits_are_disjoint_and_stratified() -> None:
    train, val = source_indices("train"), source_indices("val")
    assert len(set(train.tolist()) & set(val.tolist())) == 0
    assert len(train) + len(val) == 1797
    assert 0.78 < len(train) / 1797 < 0.82
    _, labels = load_digit_images()
    assert set(labels[train].tolist()) == set(labels[val].tolist()) == set(range(10))
    with pytest.raises(ValueError, match="split"):
        source_indices("test")


@pytest.mark.parametrize("split", ["train", "val"])
def test_digit_is_at_its_position_and_from_its_own_pool(split: str) -> None:
    images, labels, pos = make_cluttered_digits(split, SMALL, return_positions=True)
    d, c = SMALL.digit, SMALL.canvas
    assert pos.shape == (len(labels), 2) and ((pos >= 0) & (pos <= c - d)).all()
    digits, all_labels = load_digit_images()
    own, other = source_indices(split), source_indices("val" if split == "train" else "train")
    own_templates = _normalise(upscale_digits(digits[own], d))
    other_templates = _normalise(upscale_digits(digits[other], d))
    grey = _grey(images)
    at_digit = _normalise(_crop(grey, pos, d))
    best_corr, best = (at_digit @ own_templates.T).max(1)
    # the crop at the returned position is the pasted digit (up to mild noise) ...
    assert best_corr.min() > 0.9
    assert (all_labels[own][best] == labels).all()
    # ... drawn from this split's pool only: the other pool never matches as well
    assert ((at_digit @ other_templates.T).max(1).values < best_corr).all()
    # a crop elsewhere (shifted by half the canvas) holds at best clutter, not a digit
    elsewhere = _normalise(_crop(grey, (pos + c // 2) % (c - d + 1), d))
    assert (elsewhere @ own_templates.T).max(1).values.median() < 0.6


def test_glance_is_hard_but_focus_is_easy() -> None:
    # nearest class-mean classifier: fit on train, score on val, from the demo's 48 px glance
    # of the whole canvas versus the full-resolution digit-sized patch at the digit
    cfg = ClutteredDigitsConfig(train_size=2000, val_size=500)
    (xt, yt, pt), (xv, yv, pv) = (make_cluttered_digits(s, cfg, return_positions=True) for s in ("train", "val"))

    def accuracy(features: tuple[torch.Tensor, torch.Tensor]) -> float:
        ft, fv = (_normalise(f) for f in features)
        centroids = torch.stack([ft[yt == k].mean(0) for k in range(10)])
        return ((fv @ centroids.T).argmax(1) == yv).float().mean().item()

    glance = accuracy(tuple(F.avg_pool2d(_grey(x)[:, None], cfg.canvas // 48) for x in (xt, xv)))
    focus = accuracy((_crop(_grey(xt), pt, cfg.digit), _crop(_grey(xv), pv, cfg.digit)))
    assert glance < 0.3, glance
    assert focus > 0.75, focus


def test_dataset_class() -> None:
    seen = []

    def transform(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape)
        return x * 2

    ds = ClutteredDigits("val", SMALL, transform=transform)
    images, labels = make_cluttered_digits("val", SMALL)
    assert len(ds) == SMALL.val_size and ds.classes == [str(k) for k in range(10)]
    assert ds.targets == labels.tolist() and all(isinstance(t, int) for t in ds.targets)
    image, label = ds[3]
    assert seen == [(3, SMALL.canvas, SMALL.canvas)] and label == labels[3].item()
    assert image.dtype == torch.float32 and torch.allclose(image, images[3].float() / 255 * 2)
    plain, _ = ClutteredDigits("val", SMALL)[3]
    assert 0 <= plain.min() and plain.max() <= 1


TINY = ClutteredDigitsConfig(canvas=40, digit=20, fragments=3, fragment=6, train_size=80, val_size=50, seed=3)


def test_write_image_folder_round_trips(tmp_path) -> None:
    import numpy as np
    from PIL import Image
    from torchvision.datasets import ImageFolder

    root = tmp_path / "digits"
    write_image_folder(root, TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]  # no temporary left behind
    for split, n in (("train", TINY.train_size), ("val", TINY.val_size)):
        images, labels = make_cluttered_digits(split, TINY)
        assert set(labels.tolist()) == set(range(10))  # ImageFolder needs every class folder non-empty
        folder = ImageFolder(str(root / split))
        assert len(folder) == n and folder.classes == [str(k) for k in range(10)]
        assert sorted(folder.targets) == sorted(labels.tolist())
        path, target = folder.samples[0]
        index = int(path.rsplit("/", 1)[1].split(".")[0])
        assert target == labels[index].item() and torch.equal(
            torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1), images[index]
        )
    with pytest.raises(FileExistsError):
        write_image_folder(root, TINY)


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch) -> None:
    import glancefocus.data.cluttered_digits as module

    calls = []

    def failing_write_png(image: torch.Tensor, path) -> None:
        calls.append(path)
        if len(calls) > 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(module, "_write_png", failing_write_png)
    with pytest.raises(KeyboardInterrupt):
        write_image_folder(tmp_path / "digits", TINY)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"digit": 200}, "digit .* canvas"),
        ({"fragment": 30}, "fragment .* digit"),
        ({"canvas": 0}, "canvas must be >= 1"),
        ({"train_size": 0}, "train_size must be >= 1"),
        ({"fragments": -1}, "fragments must be >= 0"),
        ({"seed": -2}, "seed must be >= 0"),
    ],
)
def test_bad_config_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClutteredDigitsConfig(**kwargs)


def test_bad_split_raises() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        make_cluttered_digits("test", SMALL)
    with pytest.raises(ValueError, match="split"):
        ClutteredDigits("training", SMALL)


def test_fresh_canvases_each_epoch_while_heldout_views_stay() -> None:
    from torch.utils.data import Subset

    from glancefocus.data.sources import evaluation_view
    from glancefocus.data.sampling import SeededAugmentation

    train = ClutteredDigits("train", SMALL, fresh_each_epoch=True)
    first, first_labels = train.images, train.labels
    plain = evaluation_view(train, Transform(SMALL.canvas, 1.0))  # what held-out images are cut from
    augmented = SeededAugmentation(Subset(train, list(range(10))), seed=0, redraw=train.set_epoch)

    augmented.set_epoch(1, "glance")
    epoch1 = train.images
    assert not torch.equal(epoch1, first) and train.targets == train.labels.tolist()
    assert set(train.labels.tolist()) == set(range(10))
    augmented.set_epoch(2, "glance")
    assert not torch.equal(train.images, epoch1)
    augmented.set_epoch(1, "stage1")
    assert not torch.equal(train.images, epoch1)  # each stage sees new canvases too
    augmented.set_epoch(1, "glance")
    assert torch.equal(train.images, epoch1)  # deterministic: a resumed epoch sees the same canvases
    assert torch.equal(augmented[3][0], train[3][0])
    # the held-out view and a fixed set keep their canvases
    assert torch.equal(plain.images, first) and torch.equal(plain.labels, first_labels)
    fixed = ClutteredDigits("train", SMALL)
    fixed.set_epoch(5, "glance")
    assert torch.equal(fixed.images, first)


def test_builtin_split_is_served_at_the_model_image_size() -> None:
    # a recipe's 224 px config gets 224 px canvases, so the checkpoint describes what it saw
    source = data_source(BUILTIN)
    assert source.split("val", Transform(source.native_size, 1.0), train=False)[0][0].shape == (3, 112, 112)
    assert source.split("val", Transform(224, 1.0), train=False)[0][0].shape == (3, 224, 224)
