"""Bad input gets a clear error naming the problem and the fix, and leaves nothing half-made."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from glancefocus import GFNet, GFNetConfig
from glancefocus.cli import main
from glancefocus.runtime.preprocess import Transform
from glancefocus.data.sources import ImageFolderSource
from glancefocus.config.recipes import resolve

from conftest import make_image_folder, tiny_model

TINY = ["--backbone", "resnet18", "--patch-size", "32", "--T", "2", "--image-size", "64", "--batch-size", "4",
        "--workers", "0", "--quiet", "--epochs", "1", "--max-steps-per-epoch", "1"]


def _run(capsys, *args: str) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_corrupt_image_is_named_and_can_be_skipped(tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / "data", per_class=6)
    bad = data / "train" / "class0" / "broken.png"
    good = (data / "train" / "class0" / "0.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="broken.png"):
        ImageFolderSource(data).split("train", Transform(64, 1.0), train=False)[_index_of(data, bad)]
    (data / "val" / "class1" / "junk.png").write_bytes(b"not an image")
    # the whole pipeline, including the evaluation at its end, skips both
    code = main([str(a) for a in ("train", "--stage", "all", "--data", data, "--out", out, "--skip-bad-images", *TINY)])
    assert code == 0 and (out / "stage3.results.json").exists()
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable or too small image(s)" in printed and "junk.png" in printed
    dataset = ImageFolderSource(data).split("train", Transform(64, 1.0), train=False, skip_bad=True)
    assert dataset.skipped == [str(bad)] and len(dataset) == 6 * 2


def test_package_weights_for_another_backbone_are_refused() -> None:
    with pytest.raises(ValueError, match="weights for tf_efficientnet_lite0, not for backbone 'resnet18'"):
        GFNet(GFNetConfig(backbone="resnet18", num_classes=3, patch_size=32, image_size=64), pretrained="lite0")


def _index_of(data: Path, file: Path) -> int:
    dataset = ImageFolderSource(data).split("train", Transform(64, 1.0), train=False)
    return [p for p, _ in dataset.samples].index(str(file))


# One colour per image, so the resize keeps it: (mode, stored pixel value, RGB the model reads)
COLOUR_MODES = [
    ("L", 77, (77, 77, 77)),                        # grey: the same level in each channel
    ("RGBA", (200, 30, 90, 10), (200, 30, 90)),     # alpha dropped, colour kept
    ("CMYK", (255, 0, 0, 0), (0, 255, 255)),        # pure cyan
    ("CMYK", (0, 0, 0, 255), (0, 0, 0)),            # pure black
    ("P", 1, (10, 220, 130)),                       # palette entry 1
    ("I;16", 100 * 257, (100, 100, 100)),           # 16-bit grey: value / 257
]


@pytest.mark.parametrize("mode, stored, rgb", COLOUR_MODES)
def test_other_colour_modes_are_converted(tmp_path: Path, mode: str, stored, rgb) -> None:
    data = make_image_folder(tmp_path / "data", per_class=2)
    odd = data / "train" / "class1" / f"odd.{'tiff' if mode == 'CMYK' else 'png'}"
    image = Image.new(mode, (70, 50), stored)
    if mode == "P":
        image.putpalette([0, 0, 0, 10, 220, 130] + [0] * 762)
    image.save(odd)
    transform = Transform(64, 1.0)
    dataset = ImageFolderSource(data).split("train", transform, train=False)
    tensor, _ = dataset[[p for p, _ in dataset.samples].index(str(odd))]
    assert tensor.shape == (3, 64, 64)
    pixels = tensor * torch.tensor(transform.std).view(3, 1, 1) + torch.tensor(transform.mean).view(3, 1, 1)
    expected = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255
    torch.testing.assert_close(pixels, expected.expand(3, 64, 64), atol=1 / 255, rtol=0)


def test_image_smaller_than_patch_is_named(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=2)
    small = data / "train" / "class0" / "thumb.png"
    Image.new("RGB", (20, 20)).save(small)
    dataset = ImageFolderSource(data).split("train", Transform(64, 1.0), train=False, min_size=32)
    with pytest.raises(ValueError, match=r"thumb.png is 20x20 pixels, smaller than the 32 px patch"):
        dataset[[p for p, _ in dataset.samples].index(str(small))]


def test_bad_configurations() -> None:
    with pytest.raises(ValueError, match="patch_size .* must be smaller than image_size"):
        GFNetConfig(backbone="resnet18", patch_size=224, image_size=224)
    with pytest.raises(ValueError, match="T must be >= 1"):
        GFNetConfig(backbone="resnet18", T=0)
    with pytest.raises(ValueError, match="Did you mean resnet50-96-t5"):
        resolve("resnet50-96-t6")
    with pytest.raises(ValueError, match="Unknown backbone 'resnet5O'.*Did you mean.*resnet50"):
        GFNet(GFNetConfig(backbone="resnet5O"))


def test_data_set_problems(tmp_path: Path, capsys) -> None:
    code, err = _run(capsys, "train", "--stage", "1", "--data", tmp_path / "nowhere", "--out", tmp_path / "o", *TINY)
    assert code == 2 and "nowhere/train does not exist" in err and "ImageFolder layout" in err
    one = make_image_folder(tmp_path / "one", classes=1)
    code, err = _run(capsys, "train", "--stage", "1", "--data", one, "--out", tmp_path / "o", *TINY)
    assert code == 2 and "at least 2" in err
    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "train" / "b").mkdir(parents=True)
    code, err = _run(capsys, "train", "--stage", "1", "--data", empty, "--out", tmp_path / "o", *TINY)
    assert code == 2 and "no images found" in err
    assert not any((tmp_path / "o").glob("*.safetensors"))


def test_one_glance_fine_tune_serves_any_T(tmp_path: Path, capsys) -> None:
    """A glance checkpoint is checked only on what fG depends on: a rerun with another T finds
    the finished glance and goes on from it (a Stage I checkpoint would be refused, below)."""
    from glancefocus.models.checkpoint import read_meta

    data, out = make_image_folder(tmp_path / "data", per_class=4), tmp_path / "run"
    assert _run(capsys, "train", "--stage", "glance", "--data", data, "--out", out, *TINY)[0] == 0
    glance = (out / "glance.safetensors").read_bytes()
    assert _run(capsys, "train", "--stage", "all", "--data", data, "--out", out, "--resume", *TINY, "--T", "3")[0] == 0
    assert (out / "glance.safetensors").read_bytes() == glance  # not fine-tuned again
    assert read_meta(out / "stage1.safetensors")["T"] == read_meta(out / "stage2.safetensors")["T"] == 3
    code, err = _run(capsys, "train", "--stage", "all", "--data", data, "--out", out, "--resume", *TINY, "--T", "4")
    assert code == 2 and "T: checkpoint has 3, expected 4" in err


def test_checkpoint_from_another_model_is_refused(tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "run"
    assert _run(capsys, "train", "--stage", "1", "--data", data, "--out", out, *TINY)[0] == 0
    before = (out / "stage1.safetensors").read_bytes()
    for change in (["--backbone", "resnet34"], ["--patch-size", "48"], ["--T", "3"]):
        args = [*TINY, *change]
        code, err = _run(capsys, "train", "--stage", "2", "--data", data, "--out", out, *args)
        assert code == 2 and "does not match this model" in err, change
    three = make_image_folder(tmp_path / "three", classes=3, per_class=4)
    code, err = _run(capsys, "train", "--stage", "2", "--data", three, "--out", out, *TINY)
    assert code == 2 and "num_classes: checkpoint has 2, expected 3" in err
    code, err = _run(capsys, "evaluate", "--checkpoint", out / "stage1.safetensors", "--data", three)
    assert code == 2 and "3 classes but the model was built for 2" in err
    assert (out / "stage1.safetensors").read_bytes() == before
    assert not (out / "stage2.safetensors").exists()


def test_wrong_number_of_thresholds() -> None:
    model = tiny_model(T=3, num_classes=3).eval()
    with pytest.raises(ValueError, match="expected 3 thresholds"):
        model.predict(torch.randn(2, 3, 64, 64), torch.zeros(2))


def test_not_a_checkpoint(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    code, err = _run(capsys, "evaluate", "--checkpoint", junk)
    assert code == 2 and "not a readable glancefocus checkpoint" in err
    code, err = _run(capsys, "evaluate", "--checkpoint", tmp_path / "missing.safetensors")
    assert code == 2 and "does not exist" in err
