"""`glancefocus serve` against a hostile client: bodies refused while they stream, images
refused before decoding, overload refused before any work, cancelled and timed-out requests
dropped, a dead engine reported (healthz 503, JSON 503s, on_fatal), errors a client can act
on (JSON, counted in /metrics, no internals), conflicting options refused at start."""

from __future__ import annotations

import asyncio
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from glancefocus.runtime import EngineConfig, OnnxSteps, ServeConfig, create_app  # noqa: E402
from glancefocus.runtime import server as server_module  # noqa: E402
from glancefocus.runtime.request_body import read_uploads  # noqa: E402
from glancefocus.runtime.uploads import UploadError, UploadLimits  # noqa: E402

from test_server import assert_rows, expected_rows, export, got_rows, png, reference  # noqa: E402,F401

LIMITS = UploadLimits(max_images=3, max_image_bytes=30_000, max_body_bytes=70_000, max_pixels=90 * 90)


def make_client(export, steps=OnnxSteps, *, limits=LIMITS, on_fatal=None, **options) -> TestClient:
    engine = options.pop("engine", {})
    config = ServeConfig(model=str(export), threads=1, engine=EngineConfig(max_wait_ms=1.0, **engine), limits=limits,
                         **options)
    return TestClient(create_app(config, steps=steps, on_fatal=on_fatal))


def gated_steps():
    """OnnxSteps whose batches of more than one image wait at a gate (the warm-up passes)."""
    gate = threading.Event()

    class Gated(OnnxSteps):
        def step(self, t, images, state):
            if len(images) > 1:
                gate.wait(30)
            return super().step(t, images, state)

    return Gated, gate


def wait_for(condition, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        threading.Event().wait(0.02)
    raise TimeoutError


def files(*blobs: bytes, field: str = "files"):
    return [(field, (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]


# --------------------------------------------------------------------------- bodies
def _stream(chunks: list[bytes], pulled: list[int]):
    async def gen():
        for c in chunks:
            pulled.append(len(c))
            yield c
    return gen()


def _read(content_type: str, chunks: list[bytes], length: str | None = None) -> tuple[list, list[int]]:
    pulled: list[int] = []
    return asyncio.run(read_uploads(content_type, length, _stream(chunks, pulled), LIMITS)), pulled


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _chunks(body: bytes, size: int = 4096) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize("case, status, message", [
    ("chunked_raw", 413, "over this server's limit of 30000 (--max-image-bytes)"),
    ("declared_raw", 413, "the body has 10000000 bytes"),
    ("big_part", 413, "image 0 (a.png) has more than 30000 bytes"),
    ("body_total", 413, "over this server's limit of 70000 (--max-body-bytes)"),
    ("other_field", 400, "unexpected field 'notes': send the images as files in the field 'files'"),
    ("text_field", 400, "files[0] is a text field, not a file upload"),
    ("too_many_parts", 413, "the most this server takes is 3 (--max-images)"),
    ("truncated", 400, "ended before its closing boundary"),
])
def test_a_body_is_refused_as_soon_as_a_limit_is_crossed(case, status, message) -> None:
    """Whatever the framing, reading stops at the chunk that crosses the limit: the rest of a
    large body is never pulled."""
    mp = "multipart/form-data; boundary=XyZ"
    big = b"\0" * 1_000_000
    content_type, body, length = {
        "chunked_raw": ("image/png", big, None),
        "declared_raw": ("image/png", big, "10000000"),
        "big_part": (mp, _multipart([("files", "a.png", big)]), None),
        "body_total": (mp, _multipart([("files", f"{i}.png", b"\1" * 25_000) for i in range(3)] * 40), None),
        "other_field": (mp, _multipart([("notes", None, big)]), None),
        "text_field": (mp, _multipart([("files", None, big)]), None),
        "too_many_parts": (mp, _multipart([("files", f"{i}.png", b"x") for i in range(4)] + [("files", "z", big)]), None),
        "truncated": (mp, _multipart([("files", "a.png", b"x" * 100)])[:-10], None),
    }[case]
    with pytest.raises(UploadError) as e:
        _read(content_type, _chunks(body), length)
    assert e.value.status == status and message in str(e.value), str(e.value)
    pulled: list[int] = []
    with pytest.raises(UploadError):
        asyncio.run(read_uploads(content_type, length, _stream(_chunks(body), pulled), LIMITS))
    if len(body) > 200_000:
        assert sum(pulled) <= 80_000, f"{sum(pulled)} bytes read before the refusal"


def test_multipart_content_type_in_any_case(export, reference) -> None:
    good = [png(1), png(2)]
    body = _multipart([("files", f"{i}.png", b) for i, b in enumerate(good)])
    with make_client(export) as c:
        r = c.post("/v1/predict", content=body, headers={"content-type": "Multipart/Form-Data; boundary=XyZ"})
        assert_rows(got_rows(r), expected_rows(reference, good, None))


# --------------------------------------------------------------------------- images and budgets
def _encoded(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("case, status, message", [
    ("over_pixels", 413, "image 1 (1.png) has 10000 pixels, over this server's limit of 8100 (--max-pixels)"),
    ("thin", 400, "image 0 (0.png) was refused, and the request with it: image 0.png is 66x2, more than 32 times"),
    ("eps", 400, "image 0 (0.png) is not a readable image, so the request was refused whole: not a JPEG, PNG"),
    ("budget_nan", 422, "budget must be a positive, finite number of multiply-adds per image (e.g. 1.2e8), not 'nan'"),
    ("budget_negative", 422, "not '-5'"),
    ("budget_infinite", 422, "not 'inf'"),
])
def test_images_and_budgets_get_errors_a_client_can_act_on(export, case, status, message) -> None:
    blobs = {
        "over_pixels": [png(0), _encoded(np.zeros((100, 100, 3), np.uint8))],
        "thin": [_encoded(np.zeros((2, 66, 3), np.uint8))],
        "eps": [b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"],
    }.get(case, [png(0)])
    budget = {"budget_nan": "nan", "budget_negative": "-5", "budget_infinite": "inf"}.get(case)
    with make_client(export) as c:
        r = c.post("/v1/predict", files=files(*blobs), params={"budget": budget} if budget else {})
        assert r.status_code == status and message in r.json()["detail"], r.text
        assert "0x" not in r.text and "Traceback" not in r.text and "/" not in r.json()["detail"].replace("JPEG,", "")
        assert f'glancefocus_requests_total{{status="{status}"}} 1.0' in c.get("/metrics").text


def test_overload_is_refused_before_decoding(export, monkeypatch) -> None:
    decoded = []
    real = server_module.decode_uploads
    monkeypatch.setattr(server_module, "decode_uploads", lambda *a: decoded.append(len(a[0])) or real(*a))
    steps, gate = gated_steps()
    with make_client(export, steps, engine={"max_queued": 4}) as c, ThreadPoolExecutor(1) as pool:
        held = pool.submit(c.post, "/v1/predict", files=files(png(0), png(1), png(2)))
        wait_for(lambda: "glancefocus_queued_images 3.0" in c.get("/metrics").text)
        r = c.post("/v1/predict", files=files(png(3), png(4)))
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "retry later" in r.json()["detail"]
        assert decoded == [3]  # the refused request was never decoded
        gate.set()
        assert held.result(30).status_code == 200


def test_the_concurrency_limit_is_a_json_503(export) -> None:
    steps, gate = gated_steps()
    with make_client(export, steps, limit_concurrency=1) as c, ThreadPoolExecutor(1) as pool:
        held = pool.submit(c.post, "/v1/predict", files=files(png(0), png(1)))
        wait_for(lambda: "glancefocus_queued_images 2.0" in c.get("/metrics").text)
        r = c.post("/v1/predict", files=files(png(2)))
        assert r.status_code == 503 and "(--limit-concurrency)" in r.json()["detail"] and r.headers["retry-after"]
        gate.set()
        assert held.result(30).status_code == 200


# --------------------------------------------------------------------------- the engine
def test_a_timed_out_request_is_a_504_and_dropped(export, reference) -> None:
    """The per-request deadline answers 504 and cancels the images in the engine; the engine
    answers the next requests correctly."""
    steps, gate = gated_steps()
    with make_client(export, steps, request_timeout_s=0.5) as c, ThreadPoolExecutor(1) as pool:
        late = pool.submit(c.post, "/v1/predict", files=files(png(0), png(1)))
        r = late.result(20)
        assert r.status_code == 504 and "no answer within 0.5 s (--request-timeout)" in r.json()["detail"]
        gate.set()  # the step that held them returns: the images go no further
        wait_for(lambda: "glancefocus_queued_images 0.0" in c.get("/metrics").text)
        blobs = [png(5), png(6)]
        assert_rows(got_rows(c.post("/v1/predict", files=files(*blobs))), expected_rows(reference, blobs, None))
        assert c.get("/healthz").status_code == 200
        assert 'glancefocus_requests_total{status="504"} 1.0' in c.get("/metrics").text


def test_a_client_that_hangs_up_mid_batch_has_its_images_dropped(export) -> None:
    """The server notices the hang-up while the engine holds the images, and cancels them."""
    steps, gate = gated_steps()
    body = _multipart([("files", f"{i}.png", png(i)) for i in range(2)])
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"multipart/form-data; boundary=XyZ"), (b"content-length", b"%d" % len(body))],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

    with make_client(export, steps) as c:
        async def call() -> list[dict]:
            messages, sent = [{"type": "http.request", "body": body, "more_body": False}], []

            async def receive() -> dict:
                if messages:
                    return messages.pop(0)
                await asyncio.sleep(0.3)  # the client leaves while its images wait at the gate
                return {"type": "http.disconnect"}

            async def send(message: dict) -> None:
                sent.append(message)
            await c.app(scope, receive, send)
            return sent

        sent = c.portal.call(call)
        assert sent[0]["status"] == 499
        assert 'glancefocus_requests_total{status="499"} 1.0' in c.get("/metrics").text
        gate.set()
        wait_for(lambda: "glancefocus_queued_images 0.0" in c.get("/metrics").text)
        assert c.post("/v1/predict", files=files(png(3))).status_code == 200


def test_a_failing_step_is_a_counted_json_500(export) -> None:
    class Broken(OnnxSteps):
        def step(self, t, images, state):
            if len(images) > 1:
                raise RuntimeError("/secret/path failed at 0xdeadbeef")
            return super().step(t, images, state)

    with make_client(export, Broken) as c:
        r = c.post("/v1/predict", files=files(png(0), png(1)))
        assert r.status_code == 500 and r.json()["detail"].startswith("this request failed inside the server (RuntimeError)")
        assert "secret" not in r.text and "0x" not in r.text
        assert 'glancefocus_requests_total{status="500"} 1.0' in c.get("/metrics").text
        assert c.get("/healthz").status_code == 200 and c.post("/v1/predict", files=files(png(0))).status_code == 200


class Fatal(BaseException):
    """A fault the engine cannot contain (as a bug in its own bookkeeping would be)."""


def test_a_dead_engine_turns_the_server_unhealthy_and_calls_on_fatal(export) -> None:
    class Dying(OnnxSteps):
        def step(self, t, images, state):
            if len(images) > 1:
                raise Fatal()
            return super().step(t, images, state)

    fatal = threading.Event()
    with make_client(export, Dying, on_fatal=fatal.set) as c:
        r = c.post("/v1/predict", files=files(png(0), png(1)))
        assert r.status_code == 503 and "internal error" in r.json()["detail"]
        assert fatal.wait(5)
        assert c.get("/healthz").status_code == 503 and "glancefocus_engine_alive 0.0" in c.get("/metrics").text
        again = c.post("/v1/predict", files=files(png(2)))
        assert again.status_code == 503 and "restarting" in again.json()["detail"]


# --------------------------------------------------------------------------- options
def test_conflicting_options_are_refused_at_start(export, capsys) -> None:
    from glancefocus.cli import main

    assert main(["serve", "--onnx", str(export), "--max-images", "64", "--max-queued", "32"]) == 2
    assert "--max-images (64) is above --max-queued (32)" in capsys.readouterr().err
    assert main(["serve", "--onnx", str(export), "--max-image-bytes", "2000", "--max-body-bytes", "1000"]) == 2
    assert "raise --max-body-bytes or lower --max-image-bytes" in capsys.readouterr().err
