"""`glancefocus serve`'s app: answers equal to OnnxGFNet's, errors that name the problem
(4xx, 503 with Retry-After when full), bad requests that disturb no good one, metrics."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from glancefocus.export.bundle import export_gfnet  # noqa: E402
from glancefocus.runtime import EngineConfig, OnnxGFNet, OnnxSteps, ServeConfig, create_app  # noqa: E402
from glancefocus.runtime.uploads import UploadLimits  # noqa: E402

from serving import tiny_gfnet  # noqa: E402

# Two budget points: the cheaper one sends more images out early.
POINTS = [{"q": 0.5, "madds": 1e6, "accuracy": 40.0, "thresholds": [0.3, 0.3, "-inf"]},
          {"q": 2.0, "madds": 2e6, "accuracy": 50.0, "thresholds": [0.9, 0.9, "-inf"]}]
LIMITS = UploadLimits(max_images=4, max_image_bytes=20_000)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return export_gfnet(tiny_gfnet(), tmp_path_factory.mktemp("serve") / "onnx", classes=list("abcde"), budget_points=POINTS)


@pytest.fixture(scope="module")
def reference(export) -> OnnxGFNet:
    return OnnxGFNet(export, threads=1)


def png(seed: int, size: int = 80) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def expected_rows(reference: OnnxGFNet, blobs: list[bytes], budget: float | None) -> list[tuple]:
    images = np.stack([reference.transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    out = reference.predict(images, reference.thresholds(budget)[0])
    return [(int(c), int(s), float(p)) for c, s, p in zip(out.labels, out.exit_step, out.probs.max(axis=1))]


def got_rows(response) -> list[tuple]:
    assert response.status_code == 200, response.text
    return [(r["label"], r["exit_step"], r["probability"]) for r in response.json()["predictions"]]


def assert_rows(got: list[tuple], expected: list[tuple]) -> None:
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    np.testing.assert_allclose([g[2] for g in got], [e[2] for e in expected], atol=1e-5)


def client(export, steps=OnnxSteps, **engine) -> TestClient:
    config = ServeConfig(model=str(export), threads=1, engine=EngineConfig(max_wait_ms=1.0, **engine), limits=LIMITS)
    return TestClient(create_app(config, steps=steps))


def test_answers_equal_onnx_predict(export, reference) -> None:
    blobs = [png(i) for i in range(4)]
    with client(export) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        for budget in (None, 1e6, 2e6):
            query = {} if budget is None else {"budget": budget}
            r = c.post("/v1/predict", params=query, files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)])
            assert_rows(got_rows(r), expected_rows(reference, blobs, budget))
            row = r.json()["predictions"][0]
            assert row["file"] == "0.png" and row["class"] in "abcde" and len(row["locations"]) == row["exit_step"] - 1
        raw = c.post("/v1/predict", content=blobs[1], headers={"content-type": "image/png"})
        assert_rows(got_rows(raw), expected_rows(reference, blobs[1:2], None))
        model = c.get("/v1/model").json()
        assert model["classes"] == list("abcde") and [p["madds"] for p in model["budget_points"]] == [1e6, 2e6]
        assert "onnxruntime_version" in model["versions"] and len(model["madds"]) == 3
        assert c.get("/docs").status_code == 200 and "/v1/predict" in c.get("/openapi.json").json()["paths"]
        metrics = c.get("/metrics").text
        assert 'glancefocus_requests_total{status="200"} 4.0' in metrics and "glancefocus_images_total 13.0" in metrics
        assert "glancefocus_batch_size_bucket" in metrics and "glancefocus_queued_images 0.0" in metrics


@pytest.mark.parametrize("case, status, message", [
    ("not_an_image", 400, "image 1 (notes.txt) is not a readable image, so the request was refused whole"),
    ("empty_body", 400, "no image"),
    ("empty_file", 400, "image 0 (a.png) is empty"),
    ("large_file", 413, "over this server's limit of 20000"),
    ("large_body", 413, "over this server's limit of 20000"),
    ("too_many", 413, "images in one request, the most this server takes is 4"),
    ("budget_range", 422, "below this model's cheapest budget point"),
    ("budget_text", 422, "budget must be a positive, finite number"),
])
def test_bad_requests_name_the_problem(export, case, status, message) -> None:
    good, big = png(0), png(1, size=200)
    assert len(big) > LIMITS.max_image_bytes
    files = {
        "not_an_image": [("files", ("a.png", good)), ("files", ("notes.txt", b"hello"))],
        "empty_file": [("files", ("a.png", b""))],
        "large_file": [("files", ("a.png", good)), ("files", ("big.png", big))],
        "too_many": [("files", (f"{i}.png", good)) for i in range(5)],
    }
    params = {"budget_range": {"budget": 1.0}, "budget_text": {"budget": "cheap"}}.get(case, {})
    with client(export) as c:
        if case in files:
            r = c.post("/v1/predict", files=files[case], params=params)
        else:
            body = {"empty_body": b"", "large_body": big}.get(case, good)
            r = c.post("/v1/predict", content=body, params=params)
        assert r.status_code == status and message in r.json()["detail"], r.text
        assert c.get("/healthz").status_code == 200


class _Gated(OnnxSteps):
    gate = threading.Event()

    def step(self, t, images, state):
        if len(images) > 1:  # the warm-up image passes; the test's requests wait at the gate
            _Gated.gate.wait(30)
        return super().step(t, images, state)


def test_full_queue_is_503_with_retry_after(export, reference) -> None:
    blobs = [png(i) for i in range(3)]
    files = [("files", (f"{i}.png", b)) for i, b in enumerate(blobs)]
    with client(export, steps=_Gated, max_queued=4) as c, ThreadPoolExecutor(1) as pool:
        held = pool.submit(c.post, "/v1/predict", files=files)
        for _ in range(200):  # until the held request is in the engine
            if "glancefocus_queued_images 3.0" in c.get("/metrics").text:
                break
            threading.Event().wait(0.02)
        r = c.post("/v1/predict", files=files)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "retry later" in r.json()["detail"]
        _Gated.gate.set()
        assert_rows(got_rows(held.result(30)), expected_rows(reference, blobs, None))


def test_bad_requests_mixed_with_good_ones(export, reference) -> None:
    """Concurrent good and bad requests: every good answer is right, every bad one a 4xx."""
    rng = np.random.default_rng(0)
    good = [[png(int(s)) for s in rng.integers(0, 1000, size=int(rng.integers(1, 4)))] for _ in range(24)]
    bad = [[("files", ("x.png", b"garbage"))], [("files", (f"{i}.png", png(i))) for i in range(5)], []]

    def send(c: TestClient, i: int):
        if i % 3 == 2:
            request = bad[i % len(bad)]
            return c.post("/v1/predict", files=request) if request else c.post("/v1/predict", content=b"")
        return c.post("/v1/predict", files=[("files", (f"{j}.png", b)) for j, b in enumerate(good[i])])

    with client(export, max_batch=4) as c, ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda i: send(c, i), range(24)))
    for i, r in enumerate(responses):
        if i % 3 == 2:
            assert 400 <= r.status_code < 500, r.text
        else:
            assert_rows(got_rows(r), expected_rows(reference, good[i], None))
