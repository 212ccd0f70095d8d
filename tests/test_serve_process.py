"""`glancefocus serve` as a process: --workers N answers on one port, SIGTERM stops
accepting, answers the request in flight, then exits cleanly (within --shutdown-timeout when
a request hangs); a dead engine exits the process non-zero; a chunked flood is refused
without being read."""

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


PATCHED = """
import sys, time
from glancefocus.runtime.deploy import OnnxSteps

mode, step = sys.argv.pop(1), OnnxSteps.step


class Fatal(BaseException):
    pass


def patched(self, t, images, state):  # the warm-up's one image passes
    if len(images) > 1:
        if mode == "die":
            raise Fatal()
        time.sleep(3600)
    return step(self, t, images, state)


OnnxSteps.step = patched
from glancefocus.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_patched(tmp_path: Path, export: Path, port: int, mode: str, *extra: str) -> subprocess.Popen:
    """``glancefocus serve`` whose batches of several images die ("die") or hang ("hang")."""
    script = tmp_path / "serve_patched.py"
    script.write_text(PATCHED)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), mode, "serve", "--onnx", str(export), "--port", str(port),
                             "--threads", "1", "--log-level", "warning", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_dead_engine_exits_the_process_non_zero(export: Path, tmp_path: Path) -> None:
    """So that a supervisor restarts it; the client gets a JSON 503, never a hang."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_patched(tmp_path, export, port, "die")
    try:
        wait_ready(url, server)
        r = httpx.post(f"{url}/v1/predict", files=[("files", (f"{i}.png", png(i))) for i in range(2)], timeout=30)
        assert r.status_code == 503 and "internal error" in r.json()["detail"]
        assert server.wait(30) == 70, server.stdout.read()
    finally:
        if server.poll() is None:
            server.kill()


def test_sigterm_exits_within_the_grace_period_when_a_request_hangs(export: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_patched(tmp_path, export, port, "hang", "--shutdown-timeout", "1")
    try:
        wait_ready(url, server)
        files = [("files", (f"{i}.png", png(i))) for i in range(2)]
        sender = threading.Thread(target=lambda: httpx.post(f"{url}/v1/predict", files=files, timeout=60), daemon=True)
        sender.start()
        time.sleep(0.5)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        assert time.monotonic() - started < 5, server.stdout.read()
    finally:
        if server.poll() is None:
            server.kill()


def test_a_chunked_flood_is_refused_without_being_read(export: Path) -> None:
    """A chunked body (no Content-Length) gets its 413 once it crosses the limit: the server
    reads no further, and the client sees the answer long before it has sent its 64 MiB."""
    port = free_port()
    server = start_server(export, port, "--max-image-bytes", "100000", "--max-body-bytes", "200000")
    try:
        wait_ready(f"http://127.0.0.1:{port}", server)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            s.settimeout(0.01)
            chunk, sent, answer, deadline = b"\0" * 65536, 0, b"", time.monotonic() + 30
            while sent < 64 * 2**20 and not answer and time.monotonic() < deadline:
                try:
                    s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                    sent += len(chunk)
                except TimeoutError:  # the server stopped reading: its answer is waiting
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    break
                try:
                    answer = s.recv(65536)
                except TimeoutError:
                    pass
            s.settimeout(5)
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413") and b"over this server's limit of 100000" in answer, answer[:300]
        assert sent < 16 * 2**20, f"{sent} bytes sent before the answer"
    finally:
        server.kill()
