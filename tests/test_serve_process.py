"""`glancefocus serve` as a process: --workers N answers on one port, and SIGTERM stops
accepting, answers the request in flight, then exits cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from glancefocus.export.bundle import export_gfnet  # noqa: E402

from serving import POINTS, tiny_gfnet  # noqa: E402
from test_server import png  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export: Path, port: int, *extra: str, python: str = sys.executable, env: dict | None = None) -> subprocess.Popen:
    """``glancefocus serve`` run by ``python`` (this tree's source unless ``env`` says otherwise)."""
    env = env or {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([python, "-m", "glancefocus.cli", "serve", "--onnx", str(export), "--port", str(port),
                             "--threads", "1", "--log-level", "warning", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return export_gfnet(tiny_gfnet(), tmp_path_factory.mktemp("proc") / "onnx", classes=list("abcde"), budget_points=POINTS)


def test_workers_and_graceful_sigterm(export: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A long --max-wait-ms keeps the request in the glance queue while SIGTERM arrives.
    server = start_server(export, port, "--workers", "2", "--max-wait-ms", "1500")
    try:
        wait_ready(url, server)
        files = [("files", (f"{i}.png", png(i))) for i in range(3)]
        answers = []
        sender = threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/v1/predict", files=files, timeout=60)))
        sender.start()
        time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        sender.join(60)
        assert answers and answers[0].status_code == 200 and len(answers[0].json()["predictions"]) == 3
        assert server.wait(60) == 0, server.stdout.read()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=1)
    finally:
        if server.poll() is None:
            server.kill()
