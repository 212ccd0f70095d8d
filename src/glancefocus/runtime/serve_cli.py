"""``glancefocus serve``: its options and how it starts uvicorn (torch-free, like the server).

The configuration travels to uvicorn's worker processes in an environment variable, so
``--workers N`` runs N independent copies of the app (each with its own engine) on one port.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from .config import ServeConfig
from .deploy import OnnxGFNet
from .engine_config import POLICIES, EngineConfig
from .uploads import UploadLimits

CONFIG_ENV = "GLANCEFOCUS_SERVE_CONFIG"


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
    u = UploadLimits()
    s.add_argument("--max-images", type=int, default=u.max_images, help=f"most images in one request (default {u.max_images})")
    s.add_argument("--max-image-bytes", type=int, default=u.max_image_bytes,
                   help=f"largest image file accepted, in bytes (default {u.max_image_bytes})")
    s.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    s.set_defaults(func=serve)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        model=str(args.onnx), budget=args.budget, threads=args.threads,
        engine=EngineConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queued=args.max_queued,
                            policy=args.policy),
        limits=UploadLimits(max_images=args.max_images, max_image_bytes=args.max_image_bytes),
    )


def app_from_env():
    """The app of the configuration in $GLANCEFOCUS_SERVE_CONFIG (uvicorn's factory)."""
    from .server import create_app

    return create_app(ServeConfig.from_dict(json.loads(os.environ[CONFIG_ENV])))


def serve(args: argparse.Namespace) -> None:
    """Run until SIGTERM / Ctrl-C: uvicorn then stops accepting, answers the requests in
    flight, and the app's shutdown lets the engine finish its images."""
    import uvicorn

    config = serve_config(args)
    model = OnnxGFNet(config.model, threads=1)  # fail here, with a clear message, not in a worker
    model.thresholds(config.budget)
    os.environ[CONFIG_ENV] = json.dumps(config.to_dict())
    # uvicorn re-raises SIGTERM once its graceful shutdown is done: that is a normal end.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run("glancefocus.runtime.serve_cli:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level)
