"""Reading one image: the functions every reader uses (training's folder loader and its
``--skip-bad-images`` scan, evaluation, ``predict``, ``visualize``, the ONNX Runtime
predictor and the server's uploads), so they all see the same pixels.  PIL and numpy only
(no torch).

Beyond PIL's ``Image.open(...).convert("RGB")``, :func:`load_rgb`:

- reads only the formats of :data:`FORMATS` (JPEG, PNG, WebP, GIF, BMP, TIFF and PPM): any
  other file is refused before a plugin parses it (PIL's EPS plugin, for one, runs Ghostscript
  on the file);
- refuses, from its header and before decoding it, an image with more pixels than the limit
  (:func:`pixel_limit`), as a bad file like a truncated one (PIL would only warn up to twice
  its own limit, and a file of a few hundred KB can declare billions of pixels), and one whose
  long side is more than :data:`MAX_ASPECT_RATIO` times its short side: the evaluation view
  resizes the short side to the model's size, so a 1 x 2000 image of 85 bytes would become a
  256 x 512000 picture (1.3 GB to resize and crop) — within the ratio, the resized image is at
  most 32 times the crop's square;
- scales 16-bit greyscale (PIL modes ``I;16*`` and ``I``) to 8 bits as value / 257, rounded,
  so a 16-bit twin of an 8-bit image reads exactly the same (PIL's conversion clips such
  values and reads an ordinary picture as almost white).  16-bit RGB(A) and grey+alpha PNGs
  PIL already reads as their high bytes, which is the same scaling;
- turns the image upright by its EXIF orientation tag, as a photo viewer shows it (a phone's
  portrait photo is stored lying on its side with a tag saying so).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS_VARIABLE = "GLANCEFOCUS_MAX_PIXELS"
# PIL's own threshold (about 9459 x 9459): an RGB image at the limit takes about 270 MB decoded,
# twice that for a moment while it is converted.
DEFAULT_MAX_PIXELS = 89_478_485
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# PIL's format names; a JPEG with several pictures (a phone's MPO) opens through "JPEG".
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF or PPM"
MAX_ASPECT_RATIO = 32  # long side / short side; a wide panorama is about 10


class ImageRefused(ValueError):
    """An image refused from its header, before it is decoded: its shape is out of bounds."""


class ImageTooLarge(ImageRefused):
    """An image with more pixels than the limit."""

    # Optional: a DataLoader worker re-raises an error from its message alone.
    def __init__(self, message: str, pixels: int | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.pixels, self.limit = pixels, limit


_ADDRESS = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")  # an object's repr: never shown to a client


class _Cause(ValueError):
    """The reason an image could not be read, in words a client may see (readers show
    ``e.__cause__``, without the file's name, next to the file)."""


def pixel_limit() -> int:
    """The most pixels (width x height) an image may have: ``$GLANCEFOCUS_MAX_PIXELS`` or
    :data:`DEFAULT_MAX_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_VARIABLE)
    if value is None:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"{MAX_PIXELS_VARIABLE}={value!r} is not a number of pixels: set it to a whole number, e.g. 200000000")
    return limit


def _too_large(path: str, pixels: int | None, shown: str, limit: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"image {path} has {shown} pixels, more than the limit of {limit} (it may be a decompression bomb): "
        f"shrink or delete it, or raise the limit with {MAX_PIXELS_VARIABLE}=N (decoding takes about 3 bytes a pixel)",
        pixels, limit,
    )


def _check_shape(name: str, width: int, height: int, limit: int) -> None:
    """Refuse, before decoding, too many pixels or too thin a picture (see the module's docstring)."""
    if width * height > limit:
        raise _too_large(name, width * height, f"{width}x{height} = {width * height}", limit)
    if max(width, height) > MAX_ASPECT_RATIO * max(min(width, height), 1):
        raise ImageRefused(f"image {name} is {width}x{height}, more than {MAX_ASPECT_RATIO} times as long as it is wide "
                         "(reading it would resize its short side to the model's and the long side with it): "
                         "crop it to the part to classify")


def _open(source: BinaryIO, name: str, limit: int) -> Image.Image:
    """The decoded image as stored; ImageTooLarge if it declares more than ``limit`` pixels."""
    if limit > Image.MAX_IMAGE_PIXELS:  # PIL refuses above twice its own limit whatever ours says
        Image.MAX_IMAGE_PIXELS = limit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides, below
        try:
            image = Image.open(source, formats=FORMATS)  # only these plugins look at the bytes
            _check_shape(name, *image.size, limit)
            image.load()
        except Image.DecompressionBombError as e:
            declared = re.search(r"\((\d+) pixels\)", str(e))
            pixels = int(declared.group(1)) if declared else None
            raise _too_large(name, pixels, str(pixels or "too many"), limit) from None
    return image


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale → 8-bit greyscale by value / 257 rounded (65535 → 255, 257·v → v)."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned by its EXIF orientation; an EXIF block PIL cannot parse counts as no
    orientation (the pixels are still good)."""
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of a large image
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        pass
    return image


def load_rgb(path: str, *, max_pixels: int | None = None) -> Image.Image:
    """Read any image file as an upright 8-bit RGB image (see the module's docstring).

    An unreadable file, or one with more than ``max_pixels`` (default :func:`pixel_limit`)
    pixels, raises a one-line ValueError naming the file, the problem and the fix.
    """
    with open(path, "rb") as f:
        return decode_rgb(f, path, max_pixels=max_pixels)


def decode_rgb(data: BinaryIO | bytes, name: str, *, max_pixels: int | None = None) -> Image.Image:
    """:func:`load_rgb` of an image file's bytes or an open binary file (an upload), with
    ``name`` in its errors."""
    limit = pixel_limit() if max_pixels is None else max_pixels
    try:
        image = _open(io.BytesIO(data) if isinstance(data, bytes) else data, name, limit)
        return _eight_bit(_upright(image)).convert("RGB")
    except UnidentifiedImageError:  # its message holds the stream's repr (a memory address)
        raise ValueError(f"cannot read image {name}: it is not a {FORMAT_NAMES} image. "
                         "Convert it to one of these or delete it.") from _Cause("not a " + FORMAT_NAMES + " image")
    except ImageRefused:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        cause = _Cause(_ADDRESS.sub("", str(e)))
        raise ValueError(f"cannot read image {name}: {cause}. The file is corrupt or truncated: replace or delete it.") from cause

