"""What a prediction request carries, checked before anything is queued: the images (as
multipart files in the field ``files``, or one raw body) and the budget.  Every problem is
an :class:`UploadError` with the HTTP status and a message that names it; a request with
one bad image is refused whole, so nothing of it reaches the engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .images import decode_rgb
from .preprocess import Transform


class UploadError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    max_images: int = 16  # per request
    max_image_bytes: int = 10 * 1024 * 1024


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes  # left empty for a file already known to be too large
    size: int | None = None  # bytes, when known without reading (default len(data))

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.size is None else self.size


def check_uploads(uploads: list[Upload], limits: UploadLimits) -> None:
    """Refuse an empty request, too many images or a file over the size limit."""
    if not uploads:
        raise UploadError(400, "no image: send multipart files in the field 'files' or one image as the request body")
    if len(uploads) > limits.max_images:
        raise UploadError(413, f"{len(uploads)} images in one request, the most this server takes is {limits.max_images}: "
                               "split the request")
    for i, u in enumerate(uploads):
        if u.nbytes == 0:
            raise UploadError(400, f"image {i} ({u.name}) is empty")
        if u.nbytes > limits.max_image_bytes:
            raise UploadError(413, f"image {i} ({u.name}) has {u.nbytes} bytes, over this server's limit of "
                                   f"{limits.max_image_bytes} (--max-image-bytes)")


def decode_uploads(uploads: list[Upload], transform: Transform) -> np.ndarray:
    """The normalised batch (B, 3, H, W); a 400 naming the first file that is not an image."""
    images = []
    for i, u in enumerate(uploads):
        try:
            images.append(transform(decode_rgb(u.data, u.name)))
        except ValueError as e:
            raise UploadError(400, f"image {i} ({u.name}) is not a readable image, so the request was refused whole: "
                                   f"{e.__cause__ or e}") from e
    return np.stack(images)


def parse_budget(value: str | None) -> float | None:
    """The request's ``budget`` (mean multiply-adds per image); None: the server's default."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise UploadError(422, f"budget must be a number of multiply-adds per image (e.g. 1.2e8), not {value!r}") from None
