"""``glancefocus serve``: its options and how it starts uvicorn (torch-free, like the server).

The configuration travels to uvicorn's worker processes in an environment variable, so
``--workers N`` runs N independent copies of the app (each with its own engine) on one port.
If a process's engine dies, the process shuts down and exits non-zero (status
:data:`ENGINE_DIED`), so that a supervisor (uvicorn's, for a worker; systemd, Kubernetes, ...)
restarts it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path

from .config import ServeConfig
from .deploy import OnnxGFNet
from .engine_api import POLICIES, EngineConfig
from .uploads import UploadLimits

CONFIG_ENV = "GLANCEFOCUS_SERVE_CONFIG"
ENGINE_DIED = 70  # EX_SOFTWARE: an internal error
_exit_status = [0]  # what SIGTERM exits with: ENGINE_DIED once the engine has died


def add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="HTTP server: early exit batched across requests and steps (ONNX Runtime)",
                       description="Serve an export of `glancefocus export` over HTTP: POST /v1/predict, GET /v1/model, "
                                   "GET /healthz, GET /metrics, OpenAPI docs at /docs.")
    s.add_argument("--onnx", type=Path, required=True, help="a directory written by `glancefocus export`")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--workers", type=int, default=1,
                   help="server processes on this machine, each with its own model and queues (default 1)")
    s.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads per process (default: its own choice)")
    s.add_argument("--budget", type=float, help="default mean multiply-adds per image; a request's ?budget= overrides it "
                   "(default: the most accurate budget point)")
    e, d = s.add_argument_group("batching"), EngineConfig()
    e.add_argument("--max-batch", type=int, default=d.max_batch, help=f"most images in one step's call (default {d.max_batch})")
    e.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help=f"longest a step's queue waits to fill a batch (default {d.max_wait_ms})")
    e.add_argument("--max-queued", type=int, default=d.max_queued,
                   help=f"most images in flight; past it requests get 503 with Retry-After (default {d.max_queued})")
    e.add_argument("--policy", choices=POLICIES, default=d.policy, help=f"which ready step runs next (default {d.policy})")
    u, c = UploadLimits(), ServeConfig(model="")
    r = s.add_argument_group("limits (each answered 413, 408, 503 or 504 as soon as it is crossed)")
    r.add_argument("--max-images", type=int, default=u.max_images, help=f"most images in one request (default {u.max_images})")
    r.add_argument("--max-image-bytes", type=int, default=u.max_image_bytes,
                   help=f"largest image file accepted, in bytes (default {u.max_image_bytes})")
    r.add_argument("--max-body-bytes", type=int, default=u.max_body_bytes,
                   help=f"largest request body, in bytes, multipart framing included (default {u.max_body_bytes})")
    r.add_argument("--max-pixels", type=int, default=u.max_pixels,
                   help=f"most pixels in one image, read from its header before decoding (default {u.max_pixels}: "
                        "about 240 MB to decode)")
    r.add_argument("--limit-concurrency", type=int, default=c.limit_concurrency,
                   help=f"most prediction requests in progress at once; past it, 503 with Retry-After before the body "
                        f"is read (default {c.limit_concurrency})")
    r.add_argument("--decode-threads", type=int, default=c.decode_threads,
                   help=f"images decoded at once (default {c.decode_threads})")
    r.add_argument("--request-timeout", type=float, default=c.request_timeout_s,
                   help=f"seconds from a request's start to its answer: 408 if its body is not in by then, else 504 "
                        f"(default {c.request_timeout_s:g})")
    r.add_argument("--shutdown-timeout", type=float, default=c.shutdown_timeout_s,
                   help=f"on SIGTERM, the longest the requests in flight are waited for (default {c.shutdown_timeout_s:g})")
    s.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    s.set_defaults(func=serve)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        model=str(args.onnx), budget=args.budget, threads=args.threads,
        engine=EngineConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queued=args.max_queued,
                            policy=args.policy),
        limits=UploadLimits(max_images=args.max_images, max_image_bytes=args.max_image_bytes,
                            max_body_bytes=args.max_body_bytes, max_pixels=args.max_pixels),
        limit_concurrency=args.limit_concurrency, decode_threads=args.decode_threads,
        request_timeout_s=args.request_timeout, shutdown_timeout_s=args.shutdown_timeout,
    )


def app_from_env():
    """The app of the configuration in $GLANCEFOCUS_SERVE_CONFIG (uvicorn's factory)."""
    from .server import create_app

    return create_app(ServeConfig.from_dict(json.loads(os.environ[CONFIG_ENV])), on_fatal=_engine_died)


def _engine_died() -> None:
    """Shut down as on SIGTERM (uvicorn stops accepting and finishes what it can), then exit
    with ENGINE_DIED: a worker process dies of the re-raised signal, which uvicorn's supervisor
    sees as a crash and restarts; a single process exits through :func:`serve`'s handler."""
    _exit_status[0] = ENGINE_DIED
    os.kill(os.getpid(), signal.SIGTERM)


def serve(args: argparse.Namespace) -> None:
    """Run until SIGTERM / Ctrl-C: uvicorn then stops accepting, answers the requests in
    flight, and the app's shutdown lets the engine finish its images."""
    import uvicorn

    config = serve_config(args)
    model = OnnxGFNet(config.model, threads=1)  # fail here, with a clear message, not in a worker
    model.thresholds(config.budget)
    os.environ[CONFIG_ENV] = json.dumps(config.to_dict())
    # uvicorn re-raises SIGTERM once its graceful shutdown is done: a normal end, unless the
    # engine died.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(_exit_status[0]))
    # uvicorn's own connection limit is a backstop beyond ours (its 503 is plain text), so
    # /healthz and /metrics still answer while predictions are at --limit-concurrency.
    uvicorn.run("glancefocus.runtime.serve_cli:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, limit_concurrency=2 * config.limit_concurrency + 16,
                timeout_graceful_shutdown=math.ceil(config.shutdown_timeout_s))
