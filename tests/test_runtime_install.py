"""The runtime install, from scratch: `pip install ".[runtime]"` into a new venv brings no
torch, timm or torchvision, and `glancefocus predict --onnx` and `glancefocus serve` work
there.  Slow (it downloads onnxruntime, numpy, FastAPI...): `.ci/run` runs it explicitly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
httpx = pytest.importorskip("httpx")

from glancefocus.export.bundle import export_gfnet  # noqa: E402

from conftest import make_image_folder  # noqa: E402
from serving import POINTS, tiny_gfnet  # noqa: E402
from test_serve_process import free_port, start_server, wait_ready  # noqa: E402
from test_server import png  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run(*command: str | Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=900, **kw)


@pytest.mark.slow
def test_runtime_install_has_no_torch_and_serves(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    python, env = venv / "bin" / "python", {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    install = run(python, "-m", "pip", "install", "--quiet", f"{REPO}[runtime]", env=env, cwd=tmp_path)
    assert install.returncode == 0, install.stdout + install.stderr
    for module in ("torch", "timm", "torchvision"):
        probe = run(python, "-c", f"import {module}", env=env)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, f"{module} is installed"

    export = export_gfnet(tiny_gfnet(), tmp_path / "onnx", classes=list("abcde"), budget_points=POINTS)
    images = make_image_folder(tmp_path / "images", classes=2, per_class=2, size=80, splits=("val",))
    predict = run(venv / "bin" / "glancefocus", "predict", "--onnx", export, "--json", tmp_path / "p.json", images,
                  env=env, cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr
    assert len(json.loads((tmp_path / "p.json").read_text())["predictions"]) == 4

    port = free_port()
    server = start_server(export, port, python=str(python), env={**env, "OMP_NUM_THREADS": "1"})
    try:
        wait_ready(f"http://127.0.0.1:{port}", server)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", files=[("files", ("a.png", png(0)))], timeout=60)
        assert r.status_code == 200 and r.json()["predictions"][0]["file"] == "a.png"
    finally:
        server.terminate()
        assert server.wait(60) == 0, server.stdout.read()
