"""Pieces of bench_faults.py: the hostile requests, the traffic that sends good and hostile
requests and checks their answers, and a peak-RSS sampler."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import struct
import threading
import time
import zlib

import httpx
import numpy as np

from ._serve_parts import rss_mb

MIB = 2**20


def _png(width: int, height: int, *, declared: tuple[int, int] | None = None) -> bytes:
    """A greyscale PNG written by hand (zeros compress to nothing): ``declared`` claims another size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"".join(b"\0" + bytes(width) for _ in range(height)), 9)
    header = struct.pack(">IIBBBBB", *(declared or (width, height)), 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


async def _flood(total: int):
    for _ in range(total // 65536):
        yield bytes(65536)


def _disconnect(url: str) -> int:
    """Send half of a declared body and hang up: the server must simply let go."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 200000\r\n\r\n")
        s.sendall(bytes(100_000))
    return 0


def hostile(good: bytes) -> dict[str, tuple[dict, tuple[int, ...]]]:
    """name: (httpx request arguments, the statuses it may get; 0 = the client left)."""
    big_field = [("notes", (None, b"x" * MIB))] * 200
    return {
        "bomb (40000x40000 declared)": ({"content": _png(8, 1, declared=(40000, 40000))}, (413,)),
        "huge (9000x9000)": ({"content": _png(9000, 9000)}, (413,)),
        "thin (1x2000)": ({"content": _png(2000, 1)}, (400,)),
        "chunked 64 MiB": ({"content": _flood(64 * MIB)}, (413, 0)),
        "multipart 64 MiB file": ({"files": [("files", ("big.png", bytes(64 * MIB)))]}, (413, 0)),
        "multipart 200 x 1 MiB fields": ({"files": big_field}, (400, 0)),
        "truncated": ({"content": good[: len(good) // 2]}, (400,)),
        "not an image": ({"content": b"%PDF-1.4 this is not an image"}, (400,)),
        "EPS": ({"content": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"}, (400,)),
        "budget nan": ({"content": good, "params": {"budget": "nan"}}, (422,)),
        "budget below the curve": ({"content": good, "params": {"budget": "1"}}, (422,)),
        "disconnect mid-upload": ({"disconnect": True}, (0,)),
        "gives up mid-batch": ({"content": good, "timeout": 0.005}, (0, 200)),
    }


class Traffic:
    def __init__(self, url: str, blobs: list[bytes], answers: list[tuple[int, int]]) -> None:
        self.url, self.blobs, self.answers = url, blobs, answers
        self.client = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=256))

    async def good(self, n: int, out: dict) -> None:
        i = n % len(self.blobs)
        start = time.perf_counter()
        try:
            r = await self.client.post(f"{self.url}/v1/predict", content=self.blobs[i])
        except httpx.ConnectError:  # nobody listening (a server being restarted)
            out["refused"] += 1
            return
        except httpx.HTTPError:  # the connection broke mid-request (a server killed under it)
            out["reset"] += 1
            return
        if r.status_code != 200:
            out["lost"] += 1
            out.setdefault("lost_statuses", []).append(r.status_code)
            return
        out["latencies"].append(time.perf_counter() - start)
        row = r.json()["predictions"][0]
        out["wrong"] += (row["label"], row["exit_step"]) != self.answers[i]

    async def bad(self, name: str, request: dict, allowed: tuple[int, ...], out: dict) -> None:
        request = dict(request)
        try:
            if request.pop("disconnect", False):
                status = await asyncio.to_thread(_disconnect, self.url)
            else:
                timeout = request.pop("timeout", 30)
                async with httpx.AsyncClient(timeout=timeout) as c:  # its own connection: a flood may close it
                    status = (await c.post(f"{self.url}/v1/predict", **request)).status_code
        except httpx.HTTPError:
            status = 0
        seen = out["hostile"].setdefault(name, {})
        seen[status] = seen.get(status, 0) + 1
        if status not in allowed:
            out["unexpected"].append(f"{name}: {status}")

    async def closed(self, clients: int, seconds: float) -> float:
        out = {"latencies": [], "wrong": 0, "lost": 0, "refused": 0, "reset": 0}
        stop = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            n = k
            while time.perf_counter() < stop:
                await self.good(n, out)
                n += clients
        begin = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        return len(out["latencies"]) / (time.perf_counter() - begin)

    async def open(self, rate: float, seconds: float, hostile_rate: float = 0.0, on_time=None) -> dict:
        """Poisson good arrivals (seed 0: the same in every run) and, from a process of their
        own (so that building and sending them does not delay the good requests' client),
        evenly spaced hostile ones."""
        out = {"latencies": [], "wrong": 0, "lost": 0, "refused": 0, "reset": 0}
        arrivals = np.cumsum(np.random.default_rng(0).exponential(1 / rate, size=int(rate * seconds * 2) + 10))
        arrivals = arrivals[arrivals < seconds]
        bad = _HostileProcess(self.url, self.blobs[0], hostile_rate, seconds) if hostile_rate else None
        tasks, begin = [], time.perf_counter()
        for n, t in enumerate(arrivals):
            if (delay := begin + t - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            if on_time is not None:
                on_time(t)
            tasks.append(asyncio.create_task(self.good(n, out)))
        await asyncio.gather(*tasks)
        ms = np.percentile(np.array(out["latencies"]) * 1000, [50, 99]) if out["latencies"] else [np.nan] * 2
        return {**{k: v for k, v in out.items() if k != "latencies"}, **(bad.result() if bad else {}),
                "good_sent": len(arrivals), "answered": len(out["latencies"]), "p50_ms": ms[0], "p99_ms": ms[1]}


class _HostileProcess:
    """Hostile requests at ``rate`` per second for ``seconds``, sent by another process that
    starts its schedule when this object is made (once its payloads are built)."""

    def __init__(self, url: str, good: bytes, rate: float, seconds: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.results, go = context.Queue(), context.Event()
        self.process = context.Process(target=_hostile_main, args=(url, good, rate, seconds, self.results, go))
        self.process.start()
        assert self.results.get(timeout=120) == "ready"
        go.set()

    def result(self) -> dict:
        out = self.results.get(timeout=300)
        self.process.join(60)
        return out


def _hostile_main(url: str, good: bytes, rate: float, seconds: float, results, go) -> None:
    kinds = list(hostile(good).items())
    out = {"hostile": {}, "unexpected": []}

    async def send() -> None:
        traffic, tasks, begin = Traffic(url, [good], []), [], time.perf_counter()
        for k, t in enumerate(np.arange(0.05, seconds, 1 / rate)):
            if (delay := begin + t - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            name, (request, allowed) = kinds[k % len(kinds)]
            tasks.append(asyncio.create_task(traffic.bad(name, request, allowed, out)))
        await asyncio.gather(*tasks)
    results.put("ready")
    go.wait()
    asyncio.run(send())
    results.put(out)


class PeakRss:
    """The largest VmRSS of a process, sampled every 20 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (FileNotFoundError, ProcessLookupError, AttributeError):
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak
