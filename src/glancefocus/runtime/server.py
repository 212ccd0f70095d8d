"""``glancefocus serve``: an ONNX Runtime GFNet behind FastAPI, with early exit batched
across requests and steps by :class:`glancefocus.runtime.engine.Engine`.

Endpoints: ``POST /v1/predict`` (multipart files in ``files``, or one raw image body;
``?budget=`` mean multiply-adds per image) answers the rows ``glancefocus predict --json``
writes; ``GET /v1/model``; ``GET /healthz`` (200 once a warm-up call has run);
``GET /metrics`` (Prometheus); OpenAPI docs at ``/docs``.  Errors are JSON ``{"detail": ...}``.
The server keeps no state but its queues, so replicas behind any load balancer scale out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .config import ServeConfig
from .deploy import OnnxGFNet, OnnxSteps
from .engine import Engine, QueueFull, Steps
from .metrics import Metrics
from .predictions import prediction_rows
from .uploads import Upload, UploadError, UploadLimits, check_uploads, decode_uploads, parse_budget

PREDICT = "/v1/predict"


class _Service:
    """The model, its engine and metrics, alive between the app's start and stop."""

    def __init__(self, config: ServeConfig, steps: Callable[[OnnxGFNet], Steps]) -> None:
        self.config = config
        self.model = OnnxGFNet(config.model, threads=config.threads)
        self.thresholds, self.point = self.model.thresholds(config.budget)  # a bad --budget fails at start
        self.metrics = Metrics(lambda: self.engine.queued())
        self.engine = Engine(steps(self.model), config.engine, observe=self.metrics.observe_batch)
        self.ready = False

    def budget(self, budget: float | None) -> tuple[np.ndarray, dict[str, Any]]:
        if budget is None:
            return self.thresholds, self.point
        try:
            return self.model.thresholds(budget)
        except ValueError as e:
            raise UploadError(422, str(e).replace("--budget", "budget")) from e

    async def predict(self, uploads: list[Upload], budget: float | None) -> dict[str, Any]:
        check_uploads(uploads, self.config.limits)
        thresholds, point = self.budget(budget)
        images = await run_in_threadpool(decode_uploads, uploads, self.model.transform)
        try:
            future = self.engine.submit(images, thresholds)
        except QueueFull as e:
            raise HTTPException(503, str(e), headers={"Retry-After": str(self.config.retry_after_s)}) from e
        out = await asyncio.wrap_future(future)
        m = self.model.manifest
        rows = prediction_rows([u.name for u in uploads], out.probs, out.exit_step, out.locations, m["madds"],
                               self.model.classes, m.get("class_descriptions"))
        self.metrics.images.inc(len(rows))
        return {"budget_point": point, "predictions": rows}

    def describe(self) -> dict[str, Any]:
        m = self.model.manifest
        versions = {k: v for k, v in m.items() if k.endswith("_version") and k != "format_version"}
        return {
            "classes": m["classes"], "class_descriptions": m.get("class_descriptions"), "T": m["T"],
            "image_size": m["image_size"], "patch_size": m["patch_size"], "backbone": m.get("backbone"),
            "madds": m["madds"], "budget_points": [{k: p[k] for k in ("q", "madds", "accuracy")} for p in m["budget_points"]],
            "default_budget_point": self.point, "versions": versions, "engine": asdict(self.config.engine),
        }


async def _read_uploads(request: Request, limits: UploadLimits) -> list[Upload]:
    """Multipart files of the field ``files``, or the raw body as one image."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=limits.max_images)
        except StarletteHTTPException as e:  # starlette stops parsing past max_files
            if "Too many files" in str(e.detail):
                raise UploadError(413, f"more than {limits.max_images} images in one request, the most this server "
                                       f"takes is {limits.max_images}: split the request") from e
            raise UploadError(400, f"bad multipart body: {e.detail}") from e
        uploads = []
        for i, item in enumerate(form.getlist("files")):
            if isinstance(item, str):
                raise UploadError(400, f"files[{i}] is a text field, not a file upload")
            name = item.filename or f"files[{i}]"
            too_large = item.size is not None and item.size > limits.max_image_bytes  # refused unread
            uploads.append(Upload(name, b"", item.size) if too_large else Upload(name, await item.read()))
        return uploads
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limits.max_image_bytes:
        raise UploadError(413, f"the body has {length} bytes, over this server's limit of {limits.max_image_bytes} "
                               "(--max-image-bytes)")
    body = await request.body()
    return [Upload("body", body)] if body else []


def create_app(config: ServeConfig, *, steps: Callable[[OnnxGFNet], Steps] = OnnxSteps) -> FastAPI:
    """The FastAPI app; the model loads, the engine starts and a warm-up call runs at startup,
    and at shutdown the engine finishes every image in flight."""
    state: dict[str, _Service] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = state["service"] = _Service(config, steps)
        service.engine.start()
        size = service.model.manifest["image_size"]
        await asyncio.wrap_future(service.engine.submit(np.zeros((1, 3, size, size), np.float32), service.thresholds))
        service.ready = True
        yield
        service.ready = False
        await run_in_threadpool(service.engine.stop)

    app = FastAPI(title="glancefocus", description=__doc__, lifespan=lifespan)

    @app.middleware("http")
    async def count(request: Request, call_next):
        if request.url.path != PREDICT:
            return await call_next(request)
        start = time.perf_counter()
        response = await call_next(request)
        service = state.get("service")
        if service is not None:
            service.metrics.requests.labels(str(response.status_code)).inc()
            service.metrics.latency.observe(time.perf_counter() - start)
        return response

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, e: UploadError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=e.status)

    @app.post(PREDICT, summary="Early-exit classification of one or more images")
    async def predict(request: Request, budget: str | None = None) -> dict[str, Any]:
        """Multipart files in the field ``files``, or one image as the raw body.  ``budget``:
        mean multiply-adds per image (within the model's curve; default the server's)."""
        service = state["service"]
        return await service.predict(await _read_uploads(request, config.limits), parse_budget(budget))

    @app.get("/v1/model", summary="Classes, budget points, multiply-adds per step, versions")
    async def model() -> dict[str, Any]:
        return state["service"].describe()

    @app.get("/healthz", summary="200 once the model has answered a warm-up call")
    async def healthz() -> JSONResponse:
        ready = "service" in state and state["service"].ready
        return JSONResponse({"status": "ok" if ready else "starting"}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(state["service"].metrics.exposition(), media_type="text/plain; version=0.0.4")

    return app
