"""Reading one image: the functions every reader uses (training's folder loader and its
``--skip-bad-images`` scan, evaluation, ``predict``, ``visualize``, the ONNX Runtime
predictor and the server's uploads), so they all see the same pixels.  PIL and numpy only
(no torch).

Beyond PIL's ``Image.open(...).convert("RGB")``, :func:`load_rgb`:

- refuses an image with more pixels than the limit (:func:`pixel_limit`) before decoding it,
  as a bad file like a truncated one (PIL would only warn up to twice its own limit, and a
  file of a few hundred KB can declare billions of pixels);
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


class ImageTooLarge(ValueError):
    """An image with more pixels than the limit: refused before it is decoded."""


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


def _too_large(path: str, pixels: str, limit: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"image {path} has {pixels} pixels, more than the limit of {limit} (it may be a decompression bomb): "
        f"shrink or delete it, or raise the limit with {MAX_PIXELS_VARIABLE}=N (decoding takes about 3 bytes a pixel)"
    )


def _open(source: BinaryIO, name: str, limit: int) -> Image.Image:
    """The decoded image as stored, or ImageTooLarge if it declares more than ``limit`` pixels."""
    if limit > Image.MAX_IMAGE_PIXELS:  # PIL refuses above twice its own limit whatever ours says
        Image.MAX_IMAGE_PIXELS = limit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides, below
        try:
            image = Image.open(source)
            width, height = image.size
            if width * height > limit:
                raise _too_large(name, f"{width}x{height} = {width * height}", limit)
            image.load()
        except Image.DecompressionBombError as e:
            declared = re.search(r"\((\d+) pixels\)", str(e))
            raise _too_large(name, declared.group(1) if declared else "too many", limit) from None
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
    except ImageTooLarge:
        raise
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(
            f"cannot read image {name}: {e}. The file is corrupt or truncated: replace or delete it."
        ) from e
    return _eight_bit(_upright(image)).convert("RGB")
