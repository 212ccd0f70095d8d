"""What a prediction request carries, checked before anything is queued: the images (as
multipart files in the field ``files``, or one raw body; read under the limits by
:mod:`.request_body`) and the budget.  Every problem is an :class:`UploadError` with the HTTP
status and a message that names it; a request with one bad image is refused whole, so
nothing of it reaches the engine."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .images import ImageRefused, ImageTooLarge, decode_rgb
from .preprocess import Transform

MIB = 1024 * 1024


class UploadError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """What one request may carry: images, bytes per image and in all, pixels per image."""

    max_images: int = 16  # per request
    max_image_bytes: int = 10 * MIB
    max_body_bytes: int = 16 * MIB  # the whole request body, multipart framing included
    max_pixels: int = 40_000_000  # per image, from its header: about 240 MB to decode and convert

    def __post_init__(self) -> None:
        if min(self.max_images, self.max_image_bytes, self.max_body_bytes, self.max_pixels) < 1:
            raise ValueError(f"every upload limit must be at least 1: {self}")
        if self.max_body_bytes < self.max_image_bytes:
            raise ValueError(f"--max-body-bytes ({self.max_body_bytes}) is below --max-image-bytes "
                             f"({self.max_image_bytes}), so the largest image allowed could never arrive: "
                             "raise --max-body-bytes or lower --max-image-bytes")


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


def check_uploads(uploads: list[Upload], limits: UploadLimits) -> None:
    """Refuse an empty request, an empty file or too many images."""
    if not uploads:
        raise UploadError(400, "no image: send multipart files in the field 'files' or one image as the request body")
    if len(uploads) > limits.max_images:
        raise UploadError(413, f"{len(uploads)} images in one request, the most this server takes is {limits.max_images}: "
                               "split the request")
    for i, u in enumerate(uploads):
        if not u.data:
            raise UploadError(400, f"image {i} ({u.name}) is empty")


def decode_uploads(uploads: list[Upload], transform: Transform, max_pixels: int) -> np.ndarray:
    """The normalised batch (B, 3, H, W); a 4xx naming the first file that cannot be served."""
    images = []
    for i, u in enumerate(uploads):
        try:
            images.append(transform(decode_rgb(u.data, u.name, max_pixels=max_pixels)))
        except ImageTooLarge as e:
            raise UploadError(413, f"image {i} ({u.name}) has {e.pixels or 'too many'} pixels, over this server's limit of "
                                   f"{max_pixels} (--max-pixels): send a smaller image") from e
        except ImageRefused as e:
            raise UploadError(400, f"image {i} ({u.name}) was refused, and the request with it: {e}") from e
        except ValueError as e:
            raise UploadError(400, f"image {i} ({u.name}) is not a readable image, so the request was refused whole: "
                                   f"{e.__cause__ or e}") from e
    return np.stack(images)


def parse_budget(value: str | None) -> float | None:
    """The request's ``budget`` (mean multiply-adds per image); None: the server's default."""
    if value is None or value == "":
        return None
    try:
        budget = float(value)
    except ValueError:
        budget = math.nan
    if not math.isfinite(budget) or budget <= 0:
        raise UploadError(422, f"budget must be a positive, finite number of multiply-adds per image (e.g. 1.2e8), "
                               f"not {value[:40]!r}")
    return budget
