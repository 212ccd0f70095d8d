"""Load test: GFNet served with the early-exit engine vs the static model served the same way.

    python -m benchmarks.bench_serve [--seconds S] [--threads N] [--images N] [--quick]

Each row starts its server on 127.0.0.1 (`glancefocus serve`, or today's one-request-at-a-time
OnnxGFNet.predict), finds its saturation throughput with a closed loop of --concurrency clients,
then sends open-loop Poisson arrivals (async httpx, one image per request) at 25/50/75/90 % of
it, each for --seconds.  Per rate: throughput, p50/p95/p99 latency, mean batch size and exits
per step (from /metrics), wrong and lost answers (each answer is checked against
OnnxGFNet.predict on the same image; every 25th request is a bad image that must get a 400),
and the server's memory.  Rows: GFNet with the engine (two scheduling policies), GFNet one
request at a time, GFNet with the engine running all T steps, static Lite0 at 128 and 224 px.
The GFNet is the committed Imagenette model at its most accurate budget point (thresholds set
on held-out training images); Imagenette val images.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


from ._serve_parts import expected, free_port, image_bytes, load_test_parser, metric_sums, rss_mb, serving_exports, start
LOADS = (0.25, 0.5, 0.75, 0.9)
BAD = b"this is not an image"


class Load:
    """One server's traffic: the image bytes, the expected (label, exit step) of each."""

    def __init__(self, url: str, blobs: list[bytes], expected: list[tuple[int, int]]) -> None:
        self.url, self.blobs, self.expected = url, blobs, expected
        self.client = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=512))

    async def one(self, n: int, latencies: list[float], tally: dict[str, int]) -> None:
        bad = n % 25 == 24
        i = n % len(self.blobs)
        start = time.perf_counter()
        try:
            r = await self.client.post(f"{self.url}/v1/predict", content=BAD if bad else self.blobs[i])
        except httpx.HTTPError:
            tally["lost"] += 1
            return
        if bad:
            tally["wrong"] += r.status_code != 400
            return
        if r.status_code != 200:
            tally["lost"] += 1
            return
        latencies.append(time.perf_counter() - start)
        row = r.json()["predictions"][0]
        tally["wrong"] += (row["label"], row["exit_step"]) != self.expected[i]
        tally["madds"] += row["madds"]

    async def closed(self, concurrency: int, seconds: float) -> float:
        """Saturation throughput (answered images per second) of ``concurrency`` clients."""
        done, stop, tally = [], time.perf_counter() + seconds, {"lost": 0, "wrong": 0, "madds": 0.0}

        async def worker(k: int) -> None:
            n = k
            while time.perf_counter() < stop:
                await self.one(n * 25 + 1, done, tally)  # never a bad request here
                n += concurrency
        begin = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return len(done) / (time.perf_counter() - begin)

    async def open(self, rate: float, seconds: float, max_requests: int, seed: int) -> dict:
        """Poisson arrivals at ``rate`` per second for ``seconds`` (at most ``max_requests``)."""
        gaps = np.random.default_rng(seed).exponential(1 / rate, size=max_requests)
        arrivals = np.cumsum(gaps)
        arrivals = arrivals[arrivals < seconds]
        latencies, tally, tasks = [], {"lost": 0, "wrong": 0, "madds": 0.0}, []
        begin = time.perf_counter()
        for n, at in enumerate(arrivals):
            delay = begin + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one(n, latencies, tally)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - begin
        ms = np.percentile(np.array(latencies) * 1000, [50, 95, 99]) if latencies else [np.nan] * 3
        return {"offered": rate, "requests": len(arrivals), "throughput": len(latencies) / elapsed,
                "p50_ms": ms[0], "p95_ms": ms[1], "p99_ms": ms[2], "lost": tally["lost"], "wrong": tally["wrong"],
                "mean_madds": tally["madds"] / max(len(latencies), 1)}


def per_step(before: dict, after: dict, T: int) -> tuple[list[float], list[int]]:
    """Mean batch size and exits per step between two /metrics readings."""
    def diff(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)
    sizes = [diff(f'batch_sum{{step="{t}"}}') / max(diff(f'batch_count{{step="{t}"}}'), 1) for t in range(1, T + 1)]
    return sizes, [int(diff(f'exits{{step="{t}"}}')) for t in range(1, T + 1)]


async def measure_row(name: str, command: list[str], port: int, load_args: tuple, args: argparse.Namespace,
                      T: int) -> dict:
    server = start(command, port, args.threads)
    load = Load(f"http://127.0.0.1:{port}", *load_args)
    try:
        await load.closed(args.concurrency, min(2.0, args.seconds))  # warm-up
        saturation = await load.closed(args.concurrency, args.seconds)
        rates = []
        offered = args.rates or [fraction * saturation for fraction in LOADS]  # equal rates for every row, or shares of its own
        for k, rate in enumerate(offered):
            metrics = lambda: metric_sums(httpx.get(f"{load.url}/metrics").text) if "serve" in command else {}  # noqa: E731
            before, rss0 = metrics(), rss_mb(server.pid)
            result = await load.open(rate, args.seconds, args.max_requests, seed=k)
            sizes, exits = per_step(before, metrics(), T)
            rates.append({**result, "load": rate / saturation, "batch_per_step": sizes, "exits_per_step": exits,
                          "rss_mb": [rss0, rss_mb(server.pid)]})
            print(line(name, saturation, rates[-1]), flush=True)
        return {"row": name, "saturation": saturation, "rates": rates}
    finally:
        await load.client.aclose()
        server.terminate()
        server.wait(60)


def line(name: str, saturation: float, r: dict) -> str:
    batches = "/".join(f"{b:.1f}" for b in r["batch_per_step"]) or "-"
    exits = "/".join(map(str, r["exits_per_step"])) or "-"
    return (f"{name:18s} sat {saturation:6.1f} img/s | {r['load']:.0%}: {r['throughput']:6.1f} img/s  p50 {r['p50_ms']:6.1f}  "
            f"p95 {r['p95_ms']:6.1f}  p99 {r['p99_ms']:6.1f} ms  batch/step {batches}  exits/step {exits}  "
            f"{r['mean_madds'] / 1e6:.0f} MMAdds  wrong {r['wrong']} lost {r['lost']}  RSS {r['rss_mb'][0]:.0f}->{r['rss_mb'][1]:.0f} MB")


def rows(work: Path, args: argparse.Namespace) -> dict[str, tuple[list[str], Path]]:
    exports = serving_exports(work)
    gfnet = exports["gfnet"]
    serve = [sys.executable, "-m", "glancefocus.cli", "serve", "--threads", str(args.threads), "--log-level", "warning",
             "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queued", "4096"]
    table = {f"gfnet-engine-{p}": (serve + ["--onnx", str(gfnet), "--policy", p], gfnet) for p in ("deepest", "oldest", "fullest")}
    table["gfnet-one-at-a-time"] = ([sys.executable, "-m", "benchmarks._serve_parts", "direct", str(gfnet),
                                     "--threads", str(args.threads)], gfnet)
    for name in ("gfnet-engine-all-T", "static-128px", "static-224px"):
        export = exports[name.replace("engine-", "")]
        table[name] = (serve + ["--onnx", str(export)], export)
    return table


async def main() -> None:
    p = load_test_parser(__doc__, "bench_serve")
    p.add_argument("--max-requests", type=int, default=4000, help="most requests per rate (default 4000)")
    p.add_argument("--rates", type=float, nargs="*", help="offer these arrival rates (img/s) to every row, for latency at equal "
                                                          "throughput (default: 25/50/75/90 %% of each row's saturation)")
    args = p.parse_args()
    blobs = image_bytes(args)
    measured = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for name, (command, export) in rows(Path(tmp), args).items():
            if args.only and name not in args.only:
                continue
            port = free_port()
            T = json.loads((export / "manifest.json").read_text())["T"]
            measured.append(await measure_row(name, command + ["--port", str(port)], port,
                                              (blobs, expected(export, blobs)), args, T))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": measured,
                                    "load_average": list(__import__("os").getloadavg())}, indent=2, default=float))
    print(f"(results written to {args.out})", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
