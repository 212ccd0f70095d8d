"""The benchmark scripts keep working (their --quick mode checks equality before timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["bench_crop", "bench_thresholds", "bench_early_exit", "bench_static", "bench_memory_format",
                                  "bench_train_step"])
def test_benchmark_quick_run(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    res = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--quick", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip(), "a benchmark prints one summary line per figure"
    assert json.loads(out.read_text())
