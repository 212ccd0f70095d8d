"""Crash safety: atomic checkpoints, exact resume after SIGKILL, stop on a non-finite loss."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from glancefocus.models.checkpoint import atomic_write, save_checkpoint, state_path
from glancefocus.cli import main
from glancefocus.data.sampling import SeededAugmentation

from conftest import make_image_folder

TRAIN = ["--backbone", "resnet18", "--patch-size", "32", "--T", "3", "--image-size", "64", "--batch-size", "2",
         "--workers", "0", "--quiet", "--holdout", "0.1"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "glancefocus.cli", *args]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=10, size=64)
    common = ["train", "--stage", "1", "--data", str(data), "--epochs", "2", "--checkpoint-every", "3", *TRAIN]
    subprocess.run(_cli(*common, "--out", str(tmp_path / "straight")), check=True, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*common, "--out", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = state_path(out / "stage1.last.safetensors")
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; the test proves nothing"
    assert not (out / "stage1.safetensors").exists()

    subprocess.run(_cli(*common, "--out", str(out), "--resume"), check=True, capture_output=True)
    a = load_file(str(tmp_path / "straight" / "stage1.safetensors"))
    b = load_file(str(out / "stage1.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_resume_that_starts_a_stage_anew_matches_uninterrupted_run(tmp_path: Path) -> None:
    # Stopped between stages, a run leaves no training state for the next stage; its random
    # draws (PPO's sampled patches) must still be those of the uninterrupted run.
    data = make_image_folder(tmp_path / "data", per_class=6, size=64)
    common = ["train", "--data", str(data), "--epochs", "1", *TRAIN]
    assert main([*common, "--stage", "all", "--out", str(tmp_path / "straight")]) == 0
    for stage in ("glance", "1"):
        assert main([*common, "--stage", stage, "--out", str(tmp_path / "stopped")]) == 0
    assert main([*common, "--stage", "all", "--resume", "--out", str(tmp_path / "stopped")]) == 0
    for name in ("stage2", "stage3"):
        a, b = (load_file(str(tmp_path / run / f"{name}.safetensors")) for run in ("straight", "stopped"))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{name}: {k}")


def test_augmentation_seeding_leaves_the_cuda_generator_alone(monkeypatch) -> None:
    # torch.manual_seed reseeds every device; per-sample seeding must only touch the CPU's,
    # or on a GPU every batch's random patches would be replayed from the last sample's seed.
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    dataset = SeededAugmentation(TensorDataset(torch.arange(4)), seed=0)
    assert [int(dataset[i][0]) for i in range(4)] == [0, 1, 2, 3]
    assert calls == []
    # Nor is a GPU's generator saved and restored around each sample (that would initialise
    # CUDA in every loader worker): with a device present, its state is never read.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": calls.append(("get", device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(("set", device)))
    assert [int(dataset[i][0]) for i in range(4)] == [0, 1, 2, 3]
    assert calls == []


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    save_checkpoint(target, {"w": torch.ones(3)}, {"stage": "one"})
    before = _digest(target)

    def broken(tmp: str) -> None:
        Path(tmp).write_bytes(b"half a checkp")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert _digest(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary left behind


def test_nan_during_cli_training_exits_with_message_and_keeps_checkpoint(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=6, size=64)
    out = tmp_path / "run"
    args = ["train", "--stage", "1", "--data", str(data), "--epochs", "1", "--out", str(out), *TRAIN]
    subprocess.run(_cli(*args), check=True, capture_output=True)
    good = _digest(out / "stage1.safetensors")
    # A learning rate of 1e30 blows the loss up within a few steps.
    res = subprocess.run(_cli(*args, "--epochs", "3", "--lr-encoder", "1e30", "--lr-classifier", "1e30"), capture_output=True, text=True)
    assert res.returncode == 2
    assert "non-finite loss" in res.stderr and "global step" in res.stderr
    assert _digest(out / "stage1.safetensors") == good


@pytest.mark.slow
def test_compiled_encoders_and_bf16_train_and_save_plain_names(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4, size=64)
    out = tmp_path / "run"
    args = ["train", "--stage", "1", "--data", str(data), "--epochs", "1", "--out", str(out), "--compile",
            "--amp", "bf16", "--channels-last", *TRAIN]
    subprocess.run(_cli(*args), check=True, capture_output=True)
    names = load_file(str(out / "stage1.safetensors")).keys()
    assert not any("_orig_mod" in k for k in names)  # loadable without compiling
    subprocess.run(_cli("evaluate", "--checkpoint", str(out / "stage1.safetensors"), "--amp", "bf16"), check=True, capture_output=True)


def test_bf16_training_runs_every_stage(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4, size=64)
    out = tmp_path / "run"
    res = subprocess.run(_cli("train", "--stage", "all", "--data", str(data), "--epochs", "1", "--out", str(out),
                              "--amp", "bf16", *TRAIN), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for stage in ("glance", "stage1", "stage2", "stage3"):
        weights = load_file(str(out / f"{stage}.safetensors"))
        floats = [v for v in weights.values() if v.is_floating_point()]
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in floats), stage
