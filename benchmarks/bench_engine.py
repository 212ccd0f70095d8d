"""The early-exit engine alone, in process: does batching keep the MAdds that exits save?

    python -m benchmarks.bench_engine [--seconds S] [--threads N] [--replicas N] [--images N] [--max-batch B]

``bench_serve.py`` measures the whole HTTP path, but on a 2-core machine its async client
and the HTTP stack share the cores with the model and cap every row near the same rate.
Here the same requests (one Imagenette val image each, decoded and transformed once) go
straight to :class:`glancefocus.runtime.engine.Engine` from a feeder thread: first a closed
loop of ``--concurrency`` outstanding requests (saturation), then open-loop Poisson arrivals
at 25 / 50 / 75 / 90 % of it.  Rows, same images, same threads: the recipe's GFNet with exits (each
scheduling policy), the same GFNet exported ``--quantize int8`` (as ``bench_quantize`` does,
its thresholds found again on held-out images), GFNet running all T steps, GFNet one request
at a time through ``OnnxGFNet.predict`` (no engine), the committed GFNet whose last step reads
the whole image at 224 px at its budget points of equal accuracy to the static model at 224
and 160 px (``whole-eq224px``, ``whole-eq160px``), and the static Lite0 at 128, 160 and 224 px
through the same engine.  Every answer is checked against ``OnnxGFNet.predict`` on the same
image.  The last lines compare saturation throughputs with the MAdds ratios they should
follow.  ``--replicas N`` gives each row N copies of its model and engine taking requests in
turn (``serve --workers N`` in one process).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from glancefocus.runtime.deploy import OnnxGFNet, OnnxPrediction, OnnxSteps
from glancefocus.runtime.engine import POLICIES, Engine, EngineConfig

from ._serve_parts import answers, decoded, image_bytes, load_test_parser, serving_exports

LOADS = (0.25, 0.5, 0.75, 0.9)


class OneAtATime:
    """Today's path as a service: one worker runs ``OnnxGFNet.predict`` on each request alone."""

    def __init__(self, model: OnnxGFNet) -> None:
        self.model, self.inbox = model, queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def submit(self, images: np.ndarray, thresholds: np.ndarray) -> Future[OnnxPrediction]:
        future: Future[OnnxPrediction] = Future()
        self.inbox.put((images, thresholds, future))
        return future

    def _run(self) -> None:
        while (item := self.inbox.get()) is not None:
            images, thresholds, future = item
            future.set_result(self.model.predict(images, thresholds))

    def __enter__(self) -> OneAtATime:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inbox.put(None)
        self.thread.join()


class Replicas:
    """``n`` copies of a service, each with its own model, taking requests in turn: what
    ``glancefocus serve --workers n`` does with processes, here with threads."""

    def __init__(self, services: list) -> None:
        self.services, self.turn = services, 0

    def submit(self, images: np.ndarray, thresholds: np.ndarray) -> Future[OnnxPrediction]:
        self.turn += 1
        return self.services[self.turn % len(self.services)].submit(images, thresholds)

    def __enter__(self) -> Replicas:
        for s in self.services:
            s.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.services:
            s.__exit__(*exc)


class Traffic:
    """One service's requests: image i's array and its expected (label, exit step)."""

    def __init__(self, service, images: np.ndarray, thresholds: np.ndarray, want: list[tuple[int, int]], T: int) -> None:
        self.service, self.images, self.thresholds, self.want, self.T = service, images, thresholds, want, T
        self.lock = threading.Lock()

    def _send(self, n: int, record: dict, done: threading.Semaphore) -> None:
        """Submit request ``n``; its answer is checked and recorded, then ``done`` released."""
        i, start = n % len(self.images), time.perf_counter()

        def answered(future: Future[OnnxPrediction]) -> None:
            out = future.result()
            with self.lock:
                record["latency"].append(time.perf_counter() - start)
                record["wrong"] += (int(out.labels[0]), int(out.exit_step[0])) != self.want[i]
                record["exit_steps"].append(int(out.exit_step[0]))
            done.release()
        self.service.submit(self.images[i : i + 1], self.thresholds).add_done_callback(answered)

    def closed(self, concurrency: int, seconds: float) -> float:
        """Answered images per second with ``concurrency`` requests always outstanding."""
        record, slots = new_record(), threading.Semaphore(concurrency)
        begin = time.perf_counter()
        n = 0
        while time.perf_counter() - begin < seconds:
            slots.acquire()
            self._send(n, record, slots)
            n += 1
        for _ in range(concurrency):  # drain
            slots.acquire()
        return len(record["latency"]) / (time.perf_counter() - begin)

    def open(self, rate: float, seconds: float, seed: int) -> dict:
        """Poisson arrivals at ``rate`` per second for ``seconds``; waits for every answer."""
        arrivals = np.cumsum(np.random.default_rng(seed).exponential(1 / rate, size=int(rate * seconds * 2) + 10))
        arrivals = arrivals[arrivals < seconds]
        record, answered, begin = new_record(), threading.Semaphore(0), time.perf_counter()
        for n, at in enumerate(arrivals):
            if (delay := begin + at - time.perf_counter()) > 0:
                time.sleep(delay)
            self._send(n, record, answered)
        for _ in arrivals:
            answered.acquire()
        elapsed = time.perf_counter() - begin
        ms = np.percentile(np.array(record["latency"]) * 1000, [50, 95, 99])
        return {"offered": rate, "requests": len(arrivals), "throughput": len(arrivals) / elapsed,
                "p50_ms": ms[0], "p95_ms": ms[1], "p99_ms": ms[2], "wrong": record["wrong"],
                "exits_per_step": np.bincount(record["exit_steps"], minlength=self.T + 1)[1:].tolist()}


def new_record() -> dict:
    return {"latency": [], "wrong": 0, "exit_steps": []}


def measure(name: str, service, traffic: Traffic, args: argparse.Namespace) -> dict:
    with service:
        traffic.closed(args.concurrency, min(2.0, args.seconds))  # warm-up
        saturation = traffic.closed(args.concurrency, args.seconds)
        rates = []
        for k, load in enumerate(LOADS):
            rates.append({**traffic.open(load * saturation, args.seconds, seed=k), "load": load})
            r = rates[-1]
            print(f"{name:20s} sat {saturation:6.1f} img/s | {load:.0%}: {r['throughput']:6.1f} img/s  p50 {r['p50_ms']:6.1f}  "
                  f"p95 {r['p95_ms']:6.1f}  p99 {r['p99_ms']:6.1f} ms  exits/step {'/'.join(map(str, r['exits_per_step']))}  "
                  f"wrong {r['wrong']}", flush=True)
    return {"row": name, "saturation": saturation, "rates": rates}


def services(args: argparse.Namespace):
    """(row name, its export's name in :func:`serving_exports`, a service factory) for every row."""
    config = lambda policy="deepest": EngineConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,  # noqa: E731
                                                   max_queued=4096, policy=policy)
    for policy in POLICIES:
        yield f"gfnet-engine-{policy}", "gfnet", lambda m, p=policy: Engine(OnnxSteps(m), config(p))
    yield "gfnet-int8-engine", "gfnet-int8", lambda m: Engine(OnnxSteps(m), config())
    yield "gfnet-one-at-a-time", "gfnet", OneAtATime
    yield "gfnet-engine-all-T", "gfnet-all-T", lambda m: Engine(OnnxSteps(m), config())
    for name in ("static-128px", "static-160px", "static-224px", "whole-eq160px", "whole-eq224px", "whole-eq224px-fw"):
        yield name, name, lambda m: Engine(OnnxSteps(m), config())


def summary(rows: dict[str, dict], madds: dict[str, float]) -> list[str]:
    """The comparisons the serving targets ask for, among the rows that ran."""
    sat = {name: r["saturation"] for name, r in rows.items()}
    lines = []
    for mine, static in (("whole-eq160px", "static-160px"), ("whole-eq224px", "static-224px"), ("whole-eq224px-fw", "static-224px")):
        if mine in sat and static in sat:
            p99 = [rows[r]["rates"][1]["p99_ms"] for r in (mine, static)]
            lines.append(f"{mine} vs {static}: {sat[mine] / sat[static]:.2f}x throughput, {madds[static] / madds[mine]:.2f}x "
                         f"fewer MAdds; p99 at 50 % load {p99[0]:.1f} vs {p99[1]:.1f} ms; wrong answers "
                         f"{sum(r['wrong'] for r in rows[mine]['rates'])}")
    engines = [n for n in sat if n.startswith("gfnet-engine-") and n != "gfnet-engine-all-T"]
    if not engines:
        return lines
    best = max(engines, key=sat.get)

    def versus(other: str, label: str) -> None:
        if other in sat:
            p99 = [r["rates"][1]["p99_ms"] for r in (rows[best], rows[other])]
            lines.append(f"{best} vs {label}: {sat[best] / sat[other]:.2f}x throughput, {madds[other] / madds[best]:.2f}x "
                         f"fewer MAdds ({sat[best] / sat[other] / (madds[other] / madds[best]):.2f} of the saving kept); "
                         f"p99 at 50 % load {p99[0]:.1f} vs {p99[1]:.1f} ms")
    versus("gfnet-engine-all-T", "all T steps")
    versus("gfnet-one-at-a-time", "one at a time")
    versus("static-128px", "static-128px")
    versus("static-224px", "static-224px")
    for name, other in (("gfnet-int8-engine", best), ("gfnet-int8-engine", "static-128px")):
        if name in sat and other in sat:
            lines.append(f"{name} vs {other}: {sat[name] / sat[other]:.2f}x throughput")
    return lines


def main() -> None:
    p = load_test_parser(__doc__, "bench_engine")
    p.add_argument("--replicas", type=int, default=1,
                   help="copies of each row's model and engine, each with --threads, taking requests in turn (default 1)")
    args = p.parse_args()
    blobs = image_bytes(args)
    rows, madds = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        exports = serving_exports(Path(tmp), int8=not args.only or any("int8" in name for name in args.only))
        for name, export, factory in services(args):
            if args.only and name not in args.only:
                continue
            model = OnnxGFNet(exports[export], threads=args.threads)
            images = decoded(model, blobs)
            service = Replicas([factory(model)] + [factory(OnnxGFNet(exports[export], threads=args.threads))
                                                   for _ in range(args.replicas - 1)])
            traffic = Traffic(service, images, model.thresholds()[0], answers(model, images), model.T)
            rows[name] = measure(name, service, traffic, args)
            exits = np.sum([r["exits_per_step"] for r in rows[name]["rates"]], axis=0)
            madds[name] = float(np.dot(exits, model.manifest["madds"]) / exits.sum())
    lines = summary(rows, madds)
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": list(rows.values()),
                                    "madds": madds, "summary": lines, "load_average": list(os.getloadavg())},
                                   indent=2, default=float))
    print(f"(results written to {args.out})", file=sys.stderr)


if __name__ == "__main__":
    main()
