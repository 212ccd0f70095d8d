"""Prometheus metrics of one server process, in a registry of its own (so several apps in
one process, as in tests, do not collide), and the middleware that counts every prediction
request by the status it got — a failure the app did not foresee included, answered as a
JSON 500."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Requests by status, images, exits per step, queue depth, batch sizes per step, request
    latency and whether the engine is alive."""

    def __init__(self, queued: Callable[[], int], alive: Callable[[], bool] = lambda: True) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("glancefocus_requests", "Prediction requests answered, by HTTP status", ["status"], registry=r)
        self.images = Counter("glancefocus_images", "Images predicted", registry=r)
        self.exits = Counter("glancefocus_exits", "Images that exited at each step (1 = glance)", ["step"], registry=r)
        self.batch_size = Histogram("glancefocus_batch_size", "Images per batched call, by step", ["step"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.latency = Histogram("glancefocus_request_latency_seconds", "Time to answer a prediction request",
                                 buckets=LATENCY_BUCKETS, registry=r)
        depth = Gauge("glancefocus_queued_images", "Images admitted and not yet answered", registry=r)
        depth.set_function(queued)
        up = Gauge("glancefocus_engine_alive", "1 while the engine's worker runs, 0 once it has died", registry=r)
        up.set_function(lambda: float(alive()))

    def observe_batch(self, t: int, size: int, exits: int) -> None:
        """The engine's per-batch hook (steps numbered 1..T, as in every public output)."""
        step = str(t + 1)
        self.batch_size.labels(step).observe(size)
        if exits:
            self.exits.labels(step).inc(exits)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def count_requests(path: str, metrics: Callable[[], Metrics | None], log: logging.Logger):
    """An HTTP middleware: the requests to ``path`` counted by status with their latency; an
    exception nothing else handled is logged and answered as a JSON 500 (no traceback)."""

    async def middleware(request: Request, call_next) -> Response:
        if request.url.path != path:
            return await call_next(request)
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            log.exception("unhandled error in %s", path)
            response = JSONResponse({"detail": "internal error; the server's log has the details"}, status_code=500)
        m = metrics()
        if m is not None:
            m.requests.labels(str(response.status_code)).inc()
            m.latency.observe(time.perf_counter() - start)
        return response

    return middleware
