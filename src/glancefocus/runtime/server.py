"""``glancefocus serve``: an ONNX Runtime GFNet behind FastAPI, with early exit batched
across requests and steps by :class:`glancefocus.runtime.engine.Engine`.

Endpoints: ``POST /v1/predict`` (multipart files in ``files``, or one raw image body;
``?budget=`` mean multiply-adds per image) answers the rows ``glancefocus predict --json``
writes; ``GET /v1/model``; ``GET /healthz`` (200 once a warm-up call has run, 503 if the
engine has died); ``GET /metrics`` (Prometheus); OpenAPI docs at ``/docs``.  Every error is
JSON ``{"detail": ...}``.  The server keeps no state but its queues, so replicas behind any
load balancer scale out.

A request is refused as early as it can be: a bad budget or a server at its concurrency limit
before the body is read, a limit crossed while the body streams in, a full engine before any
image is decoded; images are decoded by a few threads of their own, and each request has a
deadline (``request_timeout_s``) after which its images are dropped from the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from .config import ServeConfig
from .deploy import OnnxGFNet, OnnxSteps
from .engine import Engine, EngineFailed, QueueFull, Steps
from .metrics import Metrics, count_requests
from .predictions import prediction_rows
from .request_body import read_uploads
from .uploads import UploadError, check_uploads, decode_uploads, parse_budget

PREDICT = "/v1/predict"
ENGINE_DRAIN_S = 5.0  # at shutdown, after the requests: the longest the engine may take to stop
log = logging.getLogger("glancefocus.server")


class _Service:
    """The model, its engine, decoders and metrics, alive between the app's start and stop."""

    def __init__(self, config: ServeConfig, steps: Callable[[OnnxGFNet], Steps], on_fatal: Callable[[], None] | None):
        self.config, self.on_fatal = config, on_fatal
        self.model = OnnxGFNet(config.model, threads=config.threads)
        self.thresholds, self.point = self.model.thresholds(config.budget)  # a bad --budget fails at start
        self.metrics = Metrics(lambda: self.engine.queued(), lambda: self.engine.alive)
        self.engine = Engine(steps(self.model), config.engine, observe=self.metrics.observe_batch, on_death=self._died)
        self.decoder = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="glancefocus-decode")
        self.loop = asyncio.get_running_loop()
        self.ready, self.in_progress = False, 0

    def _died(self, error: BaseException) -> None:
        """The engine's worker died (its thread): stop serving so that a supervisor restarts us."""
        if self.on_fatal is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.on_fatal)

    @property
    def healthy(self) -> bool:
        return self.ready and self.engine.alive

    def budget(self, text: str | None) -> tuple[np.ndarray, dict[str, Any]]:
        budget = parse_budget(text)
        if budget is None:
            return self.thresholds, self.point
        try:
            return self.model.thresholds(budget)
        except ValueError as e:
            raise UploadError(422, str(e).replace("--budget", "budget")) from e

    async def predict(self, request: Request, budget: str | None) -> dict[str, Any]:
        """Everything a request does, under its deadline; refused before reading when it can be."""
        thresholds, point = self.budget(budget)
        if not self.engine.alive:
            raise self._unavailable("the engine has stopped after an internal error; this server is restarting")
        if self.in_progress >= self.config.limit_concurrency:
            raise self._unavailable(f"{self.in_progress} requests are in progress, the most this server takes at once "
                                    f"is {self.config.limit_concurrency} (--limit-concurrency): retry later")
        self.in_progress += 1
        phase = ["reading"]
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                return await self._predict(request, thresholds, point, phase)
        except TimeoutError:
            limit = f"{self.config.request_timeout_s:g} s (--request-timeout)"
            if phase[0] == "reading":
                raise UploadError(408, f"the request body did not arrive within {limit}") from None
            raise HTTPException(504, f"no answer within {limit}: the server is overloaded, retry later") from None
        finally:
            self.in_progress -= 1

    async def _predict(self, request: Request, thresholds: np.ndarray, point: dict[str, Any], phase: list[str]):
        limits = self.config.limits
        try:
            uploads = await read_uploads(request.headers.get("content-type", ""), request.headers.get("content-length"),
                                         request.stream(), limits)
        except ClientDisconnect:
            raise UploadError(499, "the client disconnected before its body arrived") from None
        check_uploads(uploads, limits)
        phase[0] = "working"
        with self._engine_errors(), self.engine.reserve(len(uploads)) as submit:  # admitted before decoding
            images = await self.loop.run_in_executor(self.decoder, decode_uploads, uploads, self.model.transform,
                                                     limits.max_pixels)
            future = submit(images, thresholds)
        with self._engine_errors():
            out = await _unless_gone(request, future)
        m = self.model.manifest
        rows = prediction_rows([u.name for u in uploads], out.probs, out.exit_step, out.locations, m["madds"],
                               self.model.classes, m.get("class_descriptions"))
        self.metrics.images.inc(len(rows))
        return {"budget_point": point, "predictions": rows}

    def _unavailable(self, message: str) -> HTTPException:
        return HTTPException(503, message, headers={"Retry-After": str(self.config.retry_after_s)})

    @contextmanager
    def _engine_errors(self):
        """The engine's refusals as 503s, a failed step as a 500 that names no internals."""
        try:
            yield
        except (QueueFull, EngineFailed) as e:
            raise self._unavailable(str(e)) from e
        except Exception as e:
            if isinstance(e, (HTTPException, UploadError)):
                raise
            log.error("a prediction failed", exc_info=e)
            raise HTTPException(500, f"this request failed inside the server ({type(e).__name__}); "
                                     "the server's log has the details") from e

    def describe(self) -> dict[str, Any]:
        m = self.model.manifest
        versions = {k: v for k, v in m.items() if k.endswith("_version") and k != "format_version"}
        return {
            "classes": m["classes"], "class_descriptions": m.get("class_descriptions"), "T": m["T"],
            "image_size": m["image_size"], "patch_size": m["patch_size"], "backbone": m.get("backbone"),
            "madds": m["madds"], "budget_points": [{k: p[k] for k in ("q", "madds", "accuracy")} for p in m["budget_points"]],
            "default_budget_point": self.point, "versions": versions, "engine": asdict(self.config.engine),
            "limits": asdict(self.config.limits),
        }


async def _unless_gone(request: Request, future) -> Any:
    """The engine's answer; if the client hangs up first (or the deadline passes), the future
    is cancelled, so the engine drops the images instead of computing an answer nobody reads."""
    answer = asyncio.wrap_future(future)

    async def disconnected() -> None:  # the body is read: the next message is the hang-up
        while (await request.receive())["type"] != "http.disconnect":
            pass
    gone = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not answer.done():
            answer.cancel()
    if answer.cancelled():
        raise UploadError(499, "the client disconnected before its answer")
    return answer.result()


def create_app(config: ServeConfig, *, steps: Callable[[OnnxGFNet], Steps] = OnnxSteps,
               on_fatal: Callable[[], None] | None = None) -> FastAPI:
    """The FastAPI app; the model loads, the engine starts and a warm-up call runs at startup,
    and at shutdown the engine finishes what is left.  ``on_fatal`` is called (on the event
    loop) if the engine dies: ``glancefocus serve`` then shuts down and exits non-zero."""
    state: dict[str, _Service] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = state["service"] = _Service(config, steps, on_fatal)
        service.engine.start()
        size = service.model.manifest["image_size"]
        await asyncio.wrap_future(service.engine.submit(np.zeros((1, 3, size, size), np.float32), service.thresholds))
        service.ready = True
        yield
        service.ready = False
        await run_in_threadpool(service.engine.stop, min(ENGINE_DRAIN_S, config.shutdown_timeout_s))
        service.decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="glancefocus", description=__doc__, lifespan=lifespan)
    app.middleware("http")(count_requests(PREDICT, lambda: state.get("service") and state["service"].metrics, log))

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, e: UploadError) -> JSONResponse:
        # the rest of an over-long or unfinished body is never read: the connection cannot be reused
        close = {"Connection": "close"} if e.status in (408, 413, 499) else None
        return JSONResponse({"detail": str(e)}, status_code=e.status, headers=close)

    @app.post(PREDICT, summary="Early-exit classification of one or more images")
    async def predict(request: Request, budget: str | None = None) -> dict[str, Any]:
        """Multipart files in the field ``files``, or one image as the raw body.  ``budget``:
        mean multiply-adds per image (within the model's curve; default the server's)."""
        return await state["service"].predict(request, budget)

    @app.get("/v1/model", summary="Classes, budget points, multiply-adds per step, versions, limits")
    async def model() -> dict[str, Any]:
        return state["service"].describe()

    @app.get("/healthz", summary="200 once the model has answered a warm-up call; 503 before, or if the engine died")
    async def healthz() -> JSONResponse:
        service = state.get("service")
        if service is not None and service.ready and not service.engine.alive:
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        ready = service is not None and service.healthy
        return JSONResponse({"status": "ok" if ready else "starting"}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(state["service"].metrics.exposition(), media_type="text/plain; version=0.0.4")

    return app
