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


@pytest.mark.slow
def test_fault_test_quick_run(tmp_path: Path) -> None:
    """bench_faults --quick: hostile traffic costs the good requests no answer, the engine
    survives, SIGTERM exits 0, and a SIGKILLed server restarts without a wrong answer."""
    if not (ROOT.parent / "shared" / "data" / "imagenette" / "val").is_dir():
        pytest.skip("needs the Imagenette val images")
    out = tmp_path / "faults.json"
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_faults", "--quick", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    r = json.loads(out.read_text())
    assert r["faults"]["answered"] == r["faults"]["good_sent"] and r["faults"]["wrong"] == 0, r["faults"]
    assert not r["faults"]["unexpected"] and r["engine_alive"] and r["sigterm_status"] == 0
    assert not any(s.startswith("5") for s in r["statuses"]), r["statuses"]
    assert r["restart"]["wrong"] == 0 and r["restart"]["lost"] == 0 and r["restart"]["answers_after_restart"]
