"""Pieces of bench_serve.py: the exports it serves, today's one-request-at-a-time server, and
starting / reading a server.

    python -m benchmarks._serve_parts direct EXPORT_DIR --port P --threads N   # today's path
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "imagenette"
PATCHES_MODEL = RESULTS / "gfnet-patches.safetensors"  # the recipe's model: a glance and three patches
DATA = ROOT.parent / "shared" / "data" / "imagenette"


def load_test_parser(doc: str, name: str) -> argparse.ArgumentParser:
    """The options both load tests share; ``name`` names the default results file."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0, help="length of each measurement (default 8)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per model (default 1)")
    p.add_argument("--images", type=int, default=200, help="Imagenette val images used (default 200)")
    p.add_argument("--concurrency", type=int, default=64, help="outstanding requests at saturation (default 64)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--only", nargs="*", help="rows to run (default all)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "imagenette" / "val")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"{name}.json")
    return p


def image_bytes(args: argparse.Namespace) -> list[bytes]:
    """``--images`` evenly spaced files of ``--data``, as bytes."""
    from glancefocus.runtime.preprocess import image_files

    files = image_files([args.data])
    return [f.read_bytes() for f in files[:: max(1, len(files) // args.images)][: args.images]]


def serving_exports(work: Path, *, int8: bool = False) -> dict[str, Path]:
    """What the load tests serve, exported under ``work``: the Imagenette recipe's GFNet
    (``gfnet``: the paper's plan of a glance and three patches), the same running all T steps
    (``gfnet-all-T``), the committed GFNet whose last step reads the whole image at 224 px at
    the budget points of equal accuracy to the static model at 224 and 160 px
    (``whole-eq224px``, ``whole-eq160px``), the static Lite0 at 128, 160 and 224 px
    (``static-<size>px``) with their measured accuracy, and with ``int8`` the recipe's GFNet
    quantized as ``bench_quantize`` does (``gfnet-int8``)."""
    from scripts.imagenette.variants import standard_error

    results = json.loads((RESULTS / "results.json").read_text())
    recipe = results["variants"]["recipe"]
    gfnet = export_imagenette(PATCHES_MODEL, recipe, work / "gfnet")
    static = {s["size"]: s for s in results["static"]}
    exports = {"gfnet": gfnet, "gfnet-all-T": no_exit_copy(gfnet, work / "gfnet-all-T"),
               **{f"static-{size}px": export_static(size, static[size]["accuracy"], static[size]["madds"], gfnet,
                                                    work / f"static{size}") for size in (128, 160, 224)}}
    whole = export_imagenette(RESULTS / "gfnet.safetensors", results, work / "whole")
    for size in (224, 160):
        exports[f"whole-eq{size}px"] = equal_accuracy_copy(whole, work / f"whole-eq{size}", static[size]["accuracy"],
                                                           standard_error(static[size]["accuracy"], results["num_val"]))
    # the static 224 px model of fW's own fine-tune (the cascade's second stage): equal weights, equal accuracy
    own = results["variants"]["cascade-96-224"]["anytime_accuracy"][1]
    exports["whole-eq224px-fw"] = equal_accuracy_copy(whole, work / "whole-eq224-fw", own, standard_error(own, results["num_val"]))
    if int8:
        exports["gfnet-int8"] = export_imagenette(PATCHES_MODEL, recipe, work / "gfnet-int8",
                                                  quantize="int8", calibration_data=calibration_folder(800, work))
    return exports


def calibration_folder(n: int, work: Path) -> Path:
    """Links to n evenly spaced images of the reproduction's held-out training images, by class."""
    from glancefocus.config import DataConfig
    from glancefocus.config.recipes import RECIPES
    from glancefocus.data.sampling import holdout_split
    from scripts.imagenette.data import labelled_files

    files, _, _ = labelled_files(DATA / "train")
    _, held = holdout_split(len(files), DataConfig().holdout, RECIPES["imagenette-lite0"].train.seed)
    folder = work / "calibration"
    for i in np.linspace(0, len(held) - 1, min(n, len(held))).round().astype(int):
        f = files[held[i]]
        (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / f.parent.name / f.name).symlink_to(f)
    return folder


def expected(export: Path, blobs: list[bytes]) -> list[tuple[int, int]]:
    """(label, exit step) of each image as ``OnnxGFNet.predict`` gives them: the right answers."""
    from glancefocus.runtime.deploy import OnnxGFNet

    model = OnnxGFNet(export, threads=1)
    return answers(model, decoded(model, blobs))


def decoded(model, blobs: list[bytes]) -> np.ndarray:
    """``blobs`` in ``model``'s (an ``OnnxGFNet``) evaluation view: (N, 3, H, W) float32."""
    from glancefocus.runtime.images import decode_rgb

    return np.stack([model.transform(decode_rgb(b, "x")) for b in blobs])


def answers(model, images: np.ndarray) -> list[tuple[int, int]]:
    """(label, exit step) of each image under ``model.predict`` at its default budget point."""
    out = model.predict(images, model.thresholds()[0])
    return list(zip(out.labels.tolist(), out.exit_step.tolist()))


def export_imagenette(checkpoint: Path, results: dict, out: Path, **options) -> Path:
    """The committed Imagenette GFNet with the budget points of its results.json (thresholds
    chosen on held-out training images); ``options`` go to ``export_gfnet`` (e.g. ``quantize``)."""
    from glancefocus.models.checkpoint import read_meta
    from glancefocus.export.bundle import export_gfnet
    from glancefocus.models.gfnet import GFNet

    model, _ = GFNet.from_checkpoint(checkpoint, device="cpu", channels_last=False)
    points = [{**p, "thresholds": row} for p, row in zip(results["budgeted"], results["thresholds"])]
    return export_gfnet(model, out, classes=read_meta(checkpoint)["classes"], budget_points=points,
                        madds=results["madds"], anytime_accuracy=results["anytime_accuracy"], force=True, **options)


def no_exit_copy(export: Path, out: Path) -> Path:
    """The same graphs with one budget point that runs every image through all T steps."""
    manifest = json.loads((export / "manifest.json").read_text())
    return _one_point_copy(export, out, {"q": 0, "madds": manifest["madds"][-1], "accuracy": manifest["anytime_accuracy"][-1],
                                         "thresholds": ["inf"] * (manifest["T"] - 1) + ["-inf"]})


def equal_accuracy_copy(export: Path, out: Path, accuracy: float, se: float) -> Path:
    """The same graphs with one budget point: the cheapest whose val accuracy is within ``se``
    of ``accuracy`` (a static model's), so a load test serves it at equal accuracy; where no
    point reaches it, the cheapest of the most accurate ones (said on stderr)."""
    points = json.loads((export / "manifest.json").read_text())["budget_points"]
    target = min(accuracy - se, max(p["accuracy"] for p in points))
    if target < accuracy - se:
        print(f"{out.name}: no budget point within {se:.2f} of {accuracy:.2f} %: served at its best, {target:.2f} %", file=sys.stderr)
    return _one_point_copy(export, out, min((p for p in points if p["accuracy"] >= target), key=lambda p: p["madds"]))


def _one_point_copy(export: Path, out: Path, point: dict) -> Path:
    shutil.copytree(export, out, dirs_exist_ok=True)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["budget_points"] = [point]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def export_static(size: int, accuracy: float, madds: float, like: Path, out: Path) -> Path:
    """A static EfficientNet-Lite0 (the `lite0` package weights, a 10-class head) at ``size``
    px as a one-step glancefocus export, so `glancefocus serve` batches it the same way."""
    import torch

    from glancefocus.runtime.deploy import sha256
    from glancefocus.config.weights import Weights, create_backbone

    class Static(torch.nn.Module):  # the glance interface: probs and (dummy) state
        def __init__(self) -> None:
            super().__init__()
            self.net = create_backbone("tf_efficientnet_lite0", pretrained=Weights.LITE0, num_classes=10).eval()

        def forward(self, images):
            probs = self.net(images).softmax(dim=1)
            dummy = probs[:, :1] * 0
            return probs, dummy, dummy, dummy

    out.mkdir(parents=True, exist_ok=True)
    names = ["probs", "feature_map", "classifier_state", "policy_state"]
    with torch.no_grad():
        torch.onnx.export(Static().eval(), (torch.zeros(1, 3, size, size),), str(out / "glance.onnx"), dynamo=False,
                          opset_version=18, input_names=["images"], output_names=names,
                          dynamic_axes={n: {0: "batch"} for n in ["images", *names]})
    manifest = json.loads((like / "manifest.json").read_text())
    manifest.update(T=1, image_size=size, madds=[madds], anytime_accuracy=[accuracy], backbone="tf_efficientnet_lite0",
                    files={"glance": {"file": "glance.onnx", "sha256": sha256(out / "glance.onnx")}},
                    budget_points=[{"q": 0, "madds": madds, "accuracy": accuracy, "thresholds": ["-inf"]}])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], port: int, threads: int) -> subprocess.Popen:
    """A server process; returns once /healthz answers 200."""
    import httpx

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(command)} ended: {process.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"{' '.join(command)} not ready")


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024


def metric_sums(text: str) -> dict[str, float]:
    """{'batch_sum{step="1"}': x, 'batch_count{...}': n, 'exits{step="1"}': k} of a /metrics page."""
    out = {}
    for name, key in (("glancefocus_batch_size_sum", "batch_sum"), ("glancefocus_batch_size_count", "batch_count"),
                      ("glancefocus_exits_total", "exits")):
        for labels, value in re.findall(rf"^{name}(\{{[^}}]*\}}) (\S+)$", text, flags=re.M):
            out[key + labels] = float(value)
    return out


def direct_app(export: Path, threads: int):
    """Today's path: each request runs OnnxGFNet.predict alone, one request at a time."""
    from glancefocus.runtime.deploy import OnnxGFNet
    from glancefocus.runtime.predictions import prediction_rows
    from glancefocus.runtime.images import decode_rgb

    model = OnnxGFNet(export, threads=threads)
    thresholds, point = model.thresholds()
    lock = threading.Lock()
    app = FastAPI()

    def predict(body: bytes) -> dict:
        images = model.transform(decode_rgb(body, "body"))[None]
        with lock:
            out = model.predict(images, thresholds)
        rows = prediction_rows(["body"], out.probs, out.exit_step, out.locations, model.manifest["madds"], model.classes)
        return {"budget_point": point, "predictions": rows}

    @app.post("/v1/predict")
    async def endpoint(request: Request):
        try:
            return await run_in_threadpool(predict, await request.body())
        except ValueError as e:
            return JSONResponse({"detail": str(e)}, status_code=400)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["direct"])
    p.add_argument("export", type=Path)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    import uvicorn

    sys.exit(uvicorn.run(direct_app(a.export, a.threads), host="127.0.0.1", port=a.port, log_level="warning"))
