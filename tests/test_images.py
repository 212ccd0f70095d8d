"""Image files as users have them: too many pixels, 16-bit images, phone photos with an EXIF
orientation.  Every reader goes through ``images.load_rgb``; the tests read through each."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from glancefocus.cli import main
from glancefocus.runtime.preprocess import Transform
from glancefocus.data.sources import ImageFolderSource
from glancefocus.runtime.images import DEFAULT_MAX_PIXELS, load_rgb
from glancefocus.inference import predict_files

from conftest import make_image_folder, tiny_model


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, pixels: np.ndarray, *, declared: tuple[int, int] | None = None) -> Path:
    """A PNG written byte by byte (PIL cannot write 16-bit RGB): grey (H, W) or RGB (H, W, 3),
    8 or 16 bits by dtype.  ``declared`` puts another (width, height) in the header: a file of a
    few hundred bytes that claims a huge picture, as a decompression bomb does."""
    height, width = pixels.shape[:2]
    depth, colour = (16 if pixels.dtype == np.uint16 else 8), (2 if pixels.ndim == 3 else 0)
    rows = b"".join(b"\x00" + row.astype(">u2" if depth == 16 else "u1").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", *(declared or (width, height)), depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))
    return path


def picture(height: int = 48, width: int = 64) -> np.ndarray:
    """An ordinary 8-bit RGB picture, no two corners alike (so any turn or flip shows)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + 2 * y) % 256], -1).astype(np.uint8)


# --------------------------------------------------------------------------- too many pixels
def test_a_decompression_bomb_is_a_one_line_error_naming_file_limit_and_fix(tmp_path: Path, monkeypatch) -> None:
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    bomb = write_png(tmp_path / "bomb.png", np.zeros((1, 8), np.uint8), declared=(40000, 40000))
    with pytest.raises(ValueError) as e:
        load_rgb(str(bomb))
    message = str(e.value)
    assert "\n" not in message and "bomb.png" in message and "1600000000 pixels" in message
    assert f"limit of {DEFAULT_MAX_PIXELS}" in message and "GLANCEFOCUS_MAX_PIXELS=N" in message
    # 10000 x 10000 is between PIL's limit and twice it, where PIL only warns and decodes
    # (300 MB as RGB): refused from its header, nothing decoded
    big = write_png(tmp_path / "big.png", np.zeros((1, 8), np.uint8), declared=(10000, 10000))
    with pytest.raises(ValueError, match=r"big.png has 10000x10000 = 100000000 pixels, more than the limit"):
        load_rgb(str(big))
    assert decoded == []


def test_the_pixel_limit_is_inclusive_and_can_be_raised(tmp_path: Path, monkeypatch) -> None:
    small = write_png(tmp_path / "small.png", picture(64, 64))  # 4096 pixels
    monkeypatch.setenv("GLANCEFOCUS_MAX_PIXELS", "4095")
    with pytest.raises(ValueError, match="64x64 = 4096 pixels, more than the limit of 4095"):
        load_rgb(str(small))
    monkeypatch.setenv("GLANCEFOCUS_MAX_PIXELS", "4096")
    assert load_rgb(str(small)).size == (64, 64)
    assert load_rgb(str(small), max_pixels=5000).size == (64, 64)  # a server's own, lower bound
    with pytest.raises(ValueError, match="limit of 4000"):
        load_rgb(str(small), max_pixels=4000)
    # a limit above PIL's own (which refuses beyond twice itself) still lets the image through
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_rgb(str(small)).size == (64, 64)
    monkeypatch.setenv("GLANCEFOCUS_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="GLANCEFOCUS_MAX_PIXELS='lots' is not a number of pixels"):
        load_rgb(str(small))


def test_skip_bad_images_skips_and_counts_a_bomb_in_training_data(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=3)
    bomb = write_png(data / "train" / "class1" / "bomb.png", np.zeros((1, 8), np.uint8), declared=(40000, 40000))
    source = ImageFolderSource(data)
    dataset = source.split("train", Transform(64, 1.0), train=False, skip_bad=True)
    assert dataset.skipped == [str(bomb)] and len(dataset) == 2 * 3
    unskipped = source.split("train", Transform(64, 1.0), train=False)
    with pytest.raises(ValueError, match="bomb.png has 1600000000 pixels"):
        unskipped[[p for p, _ in unskipped.samples].index(str(bomb))]


def test_predict_names_a_bomb_or_skips_it(trained_run: Path, colour_data: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "good.png").write_bytes(next((colour_data / "val" / "red").iterdir()).read_bytes())
    write_png(folder / "bomb.png", np.zeros((1, 8), np.uint8), declared=(40000, 40000))
    checkpoint = str(trained_run / "stage3.safetensors")
    assert main(["predict", "--checkpoint", checkpoint, str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bomb.png has 1600000000 pixels" in err and "--skip-bad-images" in err
    assert main(["predict", "--checkpoint", checkpoint, str(folder), "--skip-bad-images"]) == 0
    printed = capsys.readouterr().out
    assert "good.png\tred" in printed and "skipped" in printed and "1 images, 1 skipped" in printed


# --------------------------------------------------------------------------- 16-bit images
@pytest.mark.parametrize("suffix", ["png", "tiff"])
def test_sixteen_bit_grey_reads_as_its_eight_bit_twin(tmp_path: Path, suffix: str) -> None:
    grey = picture()[..., 0]
    Image.fromarray(grey).save(tmp_path / f"eight.{suffix}")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / f"sixteen.{suffix}")
    eight, sixteen = (np.asarray(load_rgb(str(tmp_path / f"{n}.{suffix}"))) for n in ("eight", "sixteen"))
    assert np.array_equal(sixteen, eight) and np.array_equal(eight[..., 1], grey)
    # values between the twins' round to the nearest 8-bit level: 30000 / 257 = 116.7 -> 117,
    # 65535 -> 255, 128 / 257 = 0.498 -> 0 (PIL's own conversion would read 255, 255, 128)
    Image.fromarray(np.array([[30000, 65535, 128]], np.uint16)).save(tmp_path / f"levels.{suffix}")
    assert np.asarray(load_rgb(str(tmp_path / f"levels.{suffix}")))[0, :, 0].tolist() == [117, 255, 0]


def test_sixteen_bit_rgb_png_reads_as_its_eight_bit_twin(tmp_path: Path) -> None:
    rgb = picture()
    eight = write_png(tmp_path / "eight.png", rgb)
    sixteen = write_png(tmp_path / "sixteen.png", rgb.astype(np.uint16) * 257)
    assert np.array_equal(np.asarray(load_rgb(str(sixteen))), np.asarray(load_rgb(str(eight))))
    assert np.array_equal(np.asarray(load_rgb(str(eight))), rgb)


def test_a_sixteen_bit_twin_gets_the_same_answer(tmp_path: Path) -> None:
    """Through ``predict_files``, whose reader is the ONNX Runtime predictor's too."""
    torch.manual_seed(0)
    model = tiny_model(T=3, num_classes=3).eval()
    grey = picture(80, 72)[..., 0]
    write_png(tmp_path / "a_eight.png", grey)
    write_png(tmp_path / "b_sixteen.png", grey.astype(np.uint16) * 257)
    rows, _ = predict_files(model, sorted(tmp_path.iterdir()), torch.zeros(3), ["a", "b", "c"])
    assert rows[0]["probability"] == rows[1]["probability"] and rows[0]["label"] == rows[1]["label"]
    assert rows[0]["locations"] == rows[1]["locations"]


# --------------------------------------------------------------------------- EXIF orientation
# A camera held upright-for-portrait stores the picture turned a quarter to the left with
# orientation 6 (a viewer turns it right), to the right with 8; upside down with 3.
STORED = {3: lambda p: np.rot90(p, 2), 6: lambda p: np.rot90(p, 1), 8: lambda p: np.rot90(p, -1)}


def _with_orientation(path: Path, pixels: np.ndarray, orientation: int, **save) -> Path:
    image = Image.fromarray(np.ascontiguousarray(pixels))
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **save)
    return path


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_a_photo_is_read_upright_by_its_exif_orientation(tmp_path: Path, orientation: int) -> None:
    upright = picture()
    stored = _with_orientation(tmp_path / "phone.png", STORED[orientation](upright), orientation)
    assert np.array_equal(np.asarray(load_rgb(str(stored))), upright)


def test_a_phone_jpeg_is_read_upright_by_training_and_prediction_alike(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=1)
    upright = picture(96, 64)  # portrait
    Image.fromarray(upright).save(data / "train" / "class0" / "upright.jpg", quality=95)
    _with_orientation(data / "train" / "class0" / "phone.jpg", STORED[6](upright), 6, quality=95)
    read = np.asarray(load_rgb(str(data / "train" / "class0" / "phone.jpg"))).astype(float)
    assert read.shape == (96, 64, 3) and np.abs(read - upright).mean() < 3  # JPEG's loss only
    dataset = ImageFolderSource(data).split("train", Transform(64, 0.875), train=False)
    index = {Path(p).name: i for i, (p, _) in enumerate(dataset.samples)}
    phone, plain = dataset[index["phone.jpg"]][0], dataset[index["upright.jpg"]][0]
    assert (phone - plain).abs().mean() < 0.05  # normalised units; sideways it would be ~1


def test_a_bomb_met_by_a_loader_process_is_still_one_line(tmp_path: Path, capsys) -> None:
    """A DataLoader worker wraps its error in its traceback: the CLI prints the message alone."""
    data = make_image_folder(tmp_path / "data", per_class=2)
    write_png(data / "train" / "class0" / "bomb.png", np.zeros((1, 8), np.uint8), declared=(40000, 40000))
    args = ["train", "--stage", "1", "--data", str(data), "--out", str(tmp_path / "run"), "--backbone", "resnet18",
            "--patch-size", "32", "--T", "2", "--image-size", "64", "--batch-size", "4", "--workers", "1",
            "--epochs", "1", "--max-steps-per-epoch", "1", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("glancefocus: error: image ") and "bomb.png has 1600000000 pixels" in err
    assert "\n" not in err and "Traceback" not in err


# --------------------------------------------------------------------------- hostile files
def test_only_the_allowed_formats_reach_a_plugin(tmp_path: Path, monkeypatch) -> None:
    """An EPS file is refused before PIL's EPS plugin (which runs Ghostscript) looks at it."""
    from PIL import EpsImagePlugin

    parsed = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: parsed.append(self))
    eps = tmp_path / "doc.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    with pytest.raises(ValueError) as e:
        load_rgb(str(eps))
    assert not parsed
    assert "doc.eps: it is not a JPEG, PNG, WebP, GIF, BMP, TIFF or PPM image" in str(e.value)


def test_an_unreadable_upload_is_named_without_object_addresses() -> None:
    from glancefocus.runtime.images import decode_rgb

    with pytest.raises(ValueError) as e:
        decode_rgb(b"hello", "notes.txt")
    assert "notes.txt" in str(e.value) and "0x" not in str(e.value) and "0x" not in str(e.value.__cause__)
    buffer = io.BytesIO()
    Image.fromarray(picture()).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="cannot read image cut.png") as e:
        decode_rgb(buffer.getvalue()[:100], "cut.png")
    assert "0x" not in str(e.value)


def test_a_thin_image_is_refused_from_its_header(tmp_path: Path, monkeypatch) -> None:
    """1 x 2000 pixels (85 bytes) would become 256 x 512000 once its short side is resized:
    refused before decoding; a ratio of exactly 32 is still read."""
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or load(self))
    thin = write_png(tmp_path / "thin.png", np.zeros((1, 2000), np.uint8))
    with pytest.raises(ValueError, match=r"thin.png is 2000x1, more than 32 times as long as it is wide"):
        load_rgb(str(thin))
    assert not decoded
    assert load_rgb(str(write_png(tmp_path / "ok.png", np.zeros((64, 2), np.uint8)))).size == (2, 64)
    with pytest.raises(ValueError, match="more than 32 times"):
        load_rgb(str(write_png(tmp_path / "tall.png", np.zeros((65, 2), np.uint8))))
