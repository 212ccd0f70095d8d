"""The documented Imagenette reproduction command, end to end on 40 images (skipped without
``../shared``): every table of RESULTS.md comes out of its results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IMAGENETTE

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_imagenette.py"


def test_reproduction_script_smoke_run(tmp_path: Path) -> None:
    if not (IMAGENETTE / "val").is_dir():
        pytest.skip(f"Imagenette not found at {IMAGENETTE}")
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(IMAGENETTE), "--out", str(out), "--work", str(tmp_path / "work"),
         "--limit", "40", "--T", "2", "--batch-size", "8", "--sizes", "96", "128",
         "--glance-epochs", "1", "--stage1-epochs", "1", "--stage2-epochs", "1", "--static-epochs", "1"],
        check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    results = json.loads((out / "results.json").read_text())
    for name in ("budgeted.png", "anytime.png", "patches.png"):
        assert (out / name).stat().st_size > 0, name
    assert len(results["madds"]) == len(results["anytime_accuracy"]) == 2
    assert set(results["anytime_accuracy_by_policy"]) == {"learned", "random", "fixed"}
    # the 96 px static model is the glance fine-tune, and GFNet's first step is that encoder
    static = {row["size"]: row for row in results["static"]}
    assert set(static) == {96, 128}
    assert static[96]["accuracy"] == results["glance_encoder_alone"]["accuracy"] == results["anytime_accuracy"][0]
    assert static[96]["madds"] < static[128]["madds"]
    assert results["oracle"]["accuracy"] >= max(results["anytime_accuracy"])
    assert len(results["budgeted"]) == 39
    assert len(results["policy_locations"]) == 1 and "| focus step |" in subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--table"], check=True, capture_output=True, text=True).stdout
