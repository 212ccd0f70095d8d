"""Fault test under load: `glancefocus serve` with hostile traffic mixed into a steady stream.

    python -m benchmarks.bench_faults [--seconds S] [--load 0.5] [--hostile-rate R] [--quick]

One server (`glancefocus serve`, one ONNX Runtime thread, the limits below) on 127.0.0.1,
the committed Imagenette GFNet at its most accurate budget point, one Imagenette val image per
good request.  Its capacity is measured with a closed loop of 32 clients; then an open-loop
Poisson stream of good requests at --load of it runs for --seconds, first alone (the baseline)
and then, with the same arrivals, mixed with --hostile-rate hostile requests per second, taken
in turn from HOSTILE: decompression bombs, thin and huge images, chunked and multipart floods,
truncated, non-image and EPS files, clients that disconnect mid-upload or give up mid-batch,
budgets out of range.  Every good answer is checked against `OnnxGFNet.predict` (what
`predict --onnx` answers); every hostile request must get its own 4xx (or, for the clients that
leave, nothing).  Then: peak RSS (sampled every 20 ms), the engine alive, SIGTERM's exit
time; and a server SIGKILLed mid-stream and restarted on the same port: the client must see
refused connections, never a wrong answer, and answers again once it is back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from ._fault_parts import MIB, PeakRss, Traffic
from ._serve_parts import DATA, RESULTS, ROOT, expected, export_imagenette, free_port, rss_mb, start
LIMITS = {"--max-images": 4, "--max-image-bytes": 2 * MIB, "--max-body-bytes": 4 * MIB, "--max-pixels": 20_000_000,
          "--limit-concurrency": 64, "--decode-threads": 2, "--max-queued": 256, "--request-timeout": 10}


def serve_command(export: Path, port: int) -> list[str]:
    limits = [str(x) for kv in LIMITS.items() for x in kv]
    return [sys.executable, "-m", "glancefocus.cli", "serve", "--onnx", str(export), "--port", str(port), "--threads", "1",
            "--log-level", "error", *limits]


def rss_bound_mb(image_size: int, T: int) -> float:
    """What the limits allow beyond the idle server: bodies held by the requests in progress,
    images being decoded (3 bytes a pixel, twice while converting), the engine's queue."""
    bodies = LIMITS["--limit-concurrency"] * LIMITS["--max-body-bytes"]
    decoding = LIMITS["--decode-threads"] * LIMITS["--max-pixels"] * 6
    queue = LIMITS["--max-queued"] * 3 * image_size**2 * 4 * 2  # the images and a copy while batched
    return (bodies + decoding + queue) / MIB


async def run(args: argparse.Namespace, export: Path, blobs: list[bytes], answers: list) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    manifest = json.loads((export / "manifest.json").read_text())
    server = start(serve_command(export, port), port, 1)
    idle = rss_mb(server.pid)
    traffic = Traffic(url, blobs, answers)
    await traffic.closed(32, 2)  # warm-up
    capacity = await traffic.closed(32, args.seconds / 2)
    rate = args.load * capacity
    print(f"capacity {capacity:.1f} img/s; good stream at {rate:.1f} req/s for {args.seconds:g} s", flush=True)
    baseline = await traffic.open(rate, args.seconds)
    peak = PeakRss(server.pid)
    faults = await traffic.open(rate, args.seconds, args.hostile_rate)
    peak_mb = peak.stop()
    text = httpx.get(f"{url}/metrics").text
    alive = "glancefocus_engine_alive 1.0" in text
    statuses = {k: int(float(v)) for k, v in re.findall(r'^glancefocus_requests_total\{status="(\d+)"\} (\S+)$', text, re.M)}
    healthy = httpx.get(f"{url}/healthz").status_code == 200
    began = time.perf_counter()
    server.send_signal(signal.SIGTERM)
    status = server.wait(60)
    sigterm_s = time.perf_counter() - began
    await traffic.client.aclose()
    restart = await kill_and_restart(args, export, blobs, answers, rate)
    return {"capacity": capacity, "rate": rate, "baseline": baseline, "faults": faults, "idle_rss_mb": idle,
            "peak_rss_mb": peak_mb, "rss_bound_mb": idle + rss_bound_mb(manifest["image_size"], manifest["T"]),
            "engine_alive": alive and healthy, "statuses": statuses, "sigterm_s": sigterm_s, "sigterm_status": status, "restart": restart}


async def kill_and_restart(args: argparse.Namespace, export: Path, blobs: list[bytes], answers: list, rate: float) -> dict:
    """SIGKILL a server a third into a good stream and start it again at once on the same port."""
    port = free_port()
    server = start(serve_command(export, port), port, 1)
    traffic = Traffic(f"http://127.0.0.1:{port}", blobs, answers)
    state: dict = {"killed": False, "restarted": None}

    def on_time(t: float) -> None:
        if not state["killed"] and t > args.seconds / 3:
            state["killed"] = True
            server.kill()
            server.wait()
            threading.Thread(target=lambda: state.update(restarted=start(serve_command(export, port), port, 1))).start()
    result = await traffic.open(rate, args.seconds * 2, on_time=on_time)
    for _ in range(600):
        if state["restarted"] is not None:
            break
        await asyncio.sleep(0.1)
    after = httpx.post(f"http://127.0.0.1:{port}/v1/predict", content=blobs[0], timeout=30)
    state["restarted"].terminate()
    state["restarted"].wait(60)
    await traffic.client.aclose()
    return {**result, "answers_after_restart": after.status_code == 200}


def report(r: dict) -> str:
    b, f, k = r["baseline"], r["faults"], r["restart"]
    lines = [
        f"capacity {r['capacity']:.1f} img/s, good stream at {r['rate']:.1f} req/s",
        f"baseline: {b['answered']} of {b['good_sent']} answered, wrong {b['wrong']}, lost {b['lost']}, p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms",
        f"with hostile traffic ({sum(sum(v.values()) for v in f['hostile'].values())} requests): {f['answered']} answered, wrong {f['wrong']}, "
        f"lost {f['lost']}, reset {f['reset']}, p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms; unexpected hostile answers: {f['unexpected']}",
        f"RSS idle {r['idle_rss_mb']:.0f} MB, peak {r['peak_rss_mb']:.0f} MB (bound {r['rss_bound_mb']:.0f} MB); "
        f"engine alive {r['engine_alive']}; answered by status {r['statuses']}; SIGTERM exit {r['sigterm_s']:.2f} s (status {r['sigterm_status']})",
        f"SIGKILL + restart: {k['answered']} answered, wrong {k['wrong']}, refused {k['refused']}, reset (in flight when killed) "
        f"{k['reset']}, lost {k['lost']}, "
        f"answers after restart {k['answers_after_restart']}",
    ]
    lines += [f"  {name}: " + ", ".join(f"{n} x {status or 'client left'}" for status, n in seen.items())
              for name, seen in f["hostile"].items()]
    return "\n".join(lines)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="length of each stream (default 20)")
    p.add_argument("--load", type=float, default=0.5, help="good requests as a share of capacity (default 0.5)")
    p.add_argument("--hostile-rate", type=float, default=4.0, help="hostile requests per second (default 4)")
    p.add_argument("--images", type=int, default=100, help="Imagenette val images (default 100)")
    p.add_argument("--quick", action="store_true", help="4-second streams: a smoke test")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.quick:
        args.seconds = 4.0
    args.out = args.out or ROOT / "benchmarks" / "results" / f"bench_faults{'-quick' if args.quick else ''}.json"
    from glancefocus.runtime.preprocess import image_files

    files = image_files([DATA / "val"])
    blobs = [f.read_bytes() for f in files[:: len(files) // args.images][: args.images]]
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        results = json.loads((RESULTS / "results.json").read_text())
        export = export_imagenette(RESULTS / "gfnet.safetensors", results, Path(tmp) / "gfnet")
        measured = await run(args, export, blobs, expected(export, blobs))
    print(report(measured))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "limits": LIMITS, **measured,
                                    "load_average": list(__import__("os").getloadavg())}, indent=2, default=float))


if __name__ == "__main__":
    asyncio.run(main())
