"""Shared helpers of the benchmark scripts: arguments, device, timing and the JSON record."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (smoke test)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice; 1 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (median is reported)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up runs per measurement")
    p.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/<name>.json, or <name>-quick.json with --quick)")
    return p


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def setup(args: argparse.Namespace) -> torch.device:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 1.5:
        print(f"warning: load average {load:.1f} before the run: other processes compete for the CPU, "
              "timings may be unreliable", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.quick:
        # A smoke test: one thread keeps it at a few seconds even when other processes load the
        # CPU (OpenMP threads that wait for each other slow tiny models down up to 100x there).
        torch.set_num_threads(1)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int) -> dict:
    """Median (and all) wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


def compare(fns: dict[str, Callable[[], object]], device: torch.device, *, repeats: int, warmup: int) -> dict[str, dict]:
    """Like :func:`timeit` for several functions, run round-robin (A, B, A, B, ...) so that a
    change of machine load during the measurement affects all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "times_s": t} for name, t in times.items()}


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty-src" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except Exception:  # noqa: BLE001 - provenance only
        return None


def environment(device: torch.device) -> dict:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name] + sys.argv),
        "git": _git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:
        pass
    return env


def write(name: str, args: argparse.Namespace, device: torch.device, figures: list[dict], **extra) -> Path:
    """Write ``{environment, args, figures, ...}`` as JSON and return the path."""
    path = Path(args.out) if args.out else RESULTS / (f"{name}-quick.json" if args.quick else f"{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "environment": environment(device), "args": vars(args), "figures": figures, **extra}
    path.write_text(json.dumps(record, indent=2, default=float) + "\n")
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    print(f"(results written to {shown})", file=sys.stderr)
    return path
