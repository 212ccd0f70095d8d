"""Reading a prediction request's body while it streams in, under the upload limits: a limit
is enforced the moment it is crossed (413, the rest of the body never read), whether the body
is raw, chunked or multipart, so no request holds more than ``max_body_bytes`` in memory.

Multipart bodies are parsed as they arrive (python-multipart's streaming parser): only file
parts in the field ``files`` are taken, at most ``max_images`` of them, each at most
``max_image_bytes``; any other field is refused at its headers.  Anything else is one raw image.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from .uploads import Upload, UploadError, UploadLimits

FIELD = "files"
MAX_NAME = 200  # characters of a client's file name kept (it is echoed in answers and errors)


def _too_large(what: str, size: str, limit: int, flag: str) -> UploadError:
    return UploadError(413, f"{what} has {size} bytes, over this server's limit of {limit} ({flag})")


async def read_uploads(content_type: str, length: str | None, chunks: AsyncIterator[bytes],
                       limits: UploadLimits) -> list[Upload]:
    """The images a request carries: multipart files in the field ``files`` or the raw body
    as one image.  ``length`` is the Content-Length header (None when chunked)."""
    kind, options = parse_options_header(content_type)
    multipart = kind == b"multipart/form-data"  # parse_options_header lowers the case
    limit, flag = (limits.max_body_bytes, "--max-body-bytes") if multipart else (limits.max_image_bytes, "--max-image-bytes")
    if length is not None and length.isdigit() and int(length) > limit:  # refused before reading a byte
        raise _too_large("the body", length, limit, flag)
    if not multipart:
        body = bytearray()
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                raise _too_large("the body", f"more than {limit}", limit, flag)
        return [Upload("body", bytes(body))] if body else []
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(400, "the multipart body has no boundary in its Content-Type: send it as multipart/form-data")
    parts = _Parts(boundary, limits)
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise _too_large("the body", f"more than {limit}", limit, flag)
        parts.write(chunk)
    return parts.finish()


class _Parts:
    """The ``files`` parts of a multipart body, parsed as it streams in."""

    def __init__(self, boundary: bytes, limits: UploadLimits) -> None:
        self.limits, self.files, self.ended = limits, [], False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_header_field": self._field, "on_header_value": self._value,
            "on_header_end": self._header, "on_headers_finished": self._headers_done,
            "on_part_data": self._data, "on_part_end": self._part_end, "on_end": self._end,
        })

    def write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as e:
            raise UploadError(400, f"bad multipart body: {e}") from None

    def finish(self) -> list[Upload]:
        if not self.ended:
            raise UploadError(400, "the multipart body ended before its closing boundary: send the whole body")
        return self.files

    def _begin(self) -> None:
        self._headers: dict[bytes, bytes] = {}
        self._name, self._hvalue, self._body = b"", b"", bytearray()

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def _header(self) -> None:
        self._headers[self._name.lower()] = self._hvalue
        self._name, self._hvalue = b"", b""

    def _headers_done(self) -> None:
        """Refuse the part from its headers alone: another field, a text field, one too many."""
        _, options = parse_options_header(self._headers.get(b"content-disposition", b"").decode("latin-1"))
        field, filename = options.get(b"name", b"").decode("latin-1"), options.get(b"filename")
        i = len(self.files)
        if field != FIELD:
            raise UploadError(400, f"unexpected field {field[:MAX_NAME]!r}: send the images as files in the field "
                                   f"{FIELD!r} (and the budget as ?budget=)")
        if filename is None:
            raise UploadError(400, f"{FIELD}[{i}] is a text field, not a file upload")
        if i == self.limits.max_images:
            raise UploadError(413, f"more than {i} images in one request, the most this server takes is "
                                   f"{self.limits.max_images} (--max-images): split the request")
        self._filename = filename.decode("utf-8", "replace")[:MAX_NAME] or f"{FIELD}[{i}]"

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._body += data[start:end]
        if len(self._body) > self.limits.max_image_bytes:
            raise _too_large(f"image {len(self.files)} ({self._filename})", f"more than {self.limits.max_image_bytes}",
                             self.limits.max_image_bytes, "--max-image-bytes")

    def _part_end(self) -> None:
        self.files.append(Upload(self._filename, bytes(self._body)))

    def _end(self) -> None:
        self.ended = True
