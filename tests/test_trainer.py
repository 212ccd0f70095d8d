"""The epoch loop every stage shares: best-epoch selection, early stopping on a plateau, a
stop on a non-finite loss with the last good checkpoint kept, and resume files that do not
outlive their stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from glancefocus.models.checkpoint import read_meta, state_path
from glancefocus.config import TrainConfig
from glancefocus.distributed import World
from glancefocus.data.sampling import ResumableSampler, SeededAugmentation
from glancefocus.training.trainer import NonFiniteLoss, Run, StagePlan, Trainer, cosine_schedule


def _plan(model: nn.Module, step, evaluate, *, name: str = "tiny", epochs: int = 1, select: str | None = None,
          n: int = 16, batch: int = 2, patience: int = 0) -> StagePlan:
    data = SeededAugmentation(TensorDataset(torch.randn(n, model.in_features), torch.zeros(n, dtype=torch.long)), seed=0)
    loader = DataLoader(data, batch_size=batch, sampler=ResumableSampler(n, shuffle=True), generator=torch.Generator())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return StagePlan(name, model, optimizer, loader, epochs, {"note": "test"}, step, evaluate, select=select, patience=patience)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    model, calls = nn.Linear(4, 2), {"n": 0}

    def step(x, y):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(model(x), y)
        return (loss * float("nan") if calls["n"] == 3 else loss), {}

    trainer = Trainer(Run(tmp_path, World(), quiet=True), TrainConfig(checkpoint_every=2))
    with pytest.raises(NonFiniteLoss, match=r"batch 3 \(global step 3\)") as err:
        trainer.fit(_plan(model, step, lambda: {}))
    last = tmp_path / "tiny.last.safetensors"
    assert str(last) in str(err.value)
    saved = load_file(str(last))
    assert not (tmp_path / "tiny.safetensors").exists()
    # The kept checkpoint is the one of step 2 and holds finite weights.
    assert torch.load(state_path(last), weights_only=False)["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_best_epoch_weights_are_kept_and_resume_files_removed(tmp_path: Path) -> None:
    """The trainer keeps the epoch with the best selection metric, not the last one: both the
    weights it saves and the metrics file; once done, only the final checkpoint remains."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    scores = iter([20.0, 70.0, 50.0, 60.0])
    snapshots = []

    def step(x, y):
        return model(x).pow(2).mean() + model.bias.sum(), {}  # moves the weights every step

    def evaluate():
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"final_accuracy": next(scores)}

    plan = _plan(model, step, evaluate, name="stage2", epochs=4, select="final_accuracy", n=8, batch=4)
    kept = Trainer(Run(tmp_path, World(), quiet=True), TrainConfig()).fit(plan)
    assert kept["epoch"] == 2 and kept["final_accuracy"] == 70.0
    assert json.loads((tmp_path / "stage2.metrics.json").read_text()) == kept
    saved = load_file(str(tmp_path / "stage2.safetensors"))
    assert not torch.equal(snapshots[1]["weight"], snapshots[-1]["weight"])
    for k, v in snapshots[1].items():
        assert torch.equal(saved[k], v), k
        assert torch.equal(model.state_dict()[k], v), k
    meta = read_meta(tmp_path / "stage2.safetensors")
    assert [h["final_accuracy"] for h in meta["history"]] == [20.0, 70.0, 50.0, 60.0]
    assert meta["note"] == "test"
    assert sorted(p.name for p in tmp_path.glob("stage2*")) == ["stage2.metrics.json", "stage2.safetensors"]


def _moving_step(model: nn.Module):
    return lambda x, y: (model(x).pow(2).mean() + model.bias.sum(), {})  # moves the weights every step


def test_patience_stops_after_a_plateau_and_keeps_the_best_epoch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, snapshots = nn.Linear(3, 1), []
    scores = iter([10.0, 40.0, 40.0, 30.0, 90.0, 95.0])  # a tie is no improvement

    def evaluate():
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"heldout_accuracy": next(scores)}

    plan = _plan(model, _moving_step(model), evaluate, name="glance", epochs=6, select="heldout_accuracy",
                 patience=2, n=8, batch=4)
    kept = Trainer(Run(tmp_path, World(), quiet=True), TrainConfig()).fit(plan)
    assert len(snapshots) == 4  # epochs 3 and 4 did not beat epoch 2: stopped, 90 never seen
    assert kept["epoch"] == 2 and kept["heldout_accuracy"] == 40.0
    saved = load_file(str(tmp_path / "glance.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in snapshots[1].items())
    assert not torch.equal(saved["weight"], snapshots[-1]["weight"])


def test_patience_is_kept_across_a_resume(tmp_path: Path) -> None:
    """A stage interrupted after its plateau's last epoch stops on resume instead of
    training on, since the stop is read from the saved history."""
    model, values = nn.Linear(3, 1), iter([50.0, 20.0])
    options = {"name": "glance", "epochs": 5, "select": "heldout_accuracy", "patience": 1, "n": 8, "batch": 4}
    trainer = Trainer(Run(tmp_path, World(), quiet=True), TrainConfig())
    trainer._finish = lambda plan, progress: {}  # interrupted after its second epoch's checkpoint
    trainer.fit(_plan(model, _moving_step(model), lambda: {"heldout_accuracy": next(values)}, **options))
    assert (tmp_path / "glance.last.safetensors").exists() and not (tmp_path / "glance.safetensors").exists()
    resumed = Trainer(Run(tmp_path, World(), quiet=True, resume=True), TrainConfig())
    kept = resumed.fit(_plan(model, _moving_step(model), lambda: pytest.fail("trained on after the plateau"), **options))
    assert kept["epoch"] == 1 and kept["heldout_accuracy"] == 50.0


def test_keep_epochs_saves_the_weights_of_those_epochs(tmp_path: Path) -> None:
    model, snapshots = nn.Linear(3, 1), {}

    def evaluate():
        snapshots[len(snapshots) + 1] = {k: v.clone() for k, v in model.state_dict().items()}
        return {}

    Trainer(Run(tmp_path, World(), quiet=True), TrainConfig(keep_epochs=(1, 3))).fit(
        _plan(model, _moving_step(model), evaluate, name="stage1", epochs=3, n=8, batch=4))
    assert sorted(p.name for p in tmp_path.glob("stage1.epoch*")) == ["stage1.epoch1.safetensors", "stage1.epoch3.safetensors"]
    for epoch in (1, 3):
        saved = load_file(str(tmp_path / f"stage1.epoch{epoch}.safetensors"))
        assert all(torch.equal(saved[k], v) for k, v in snapshots[epoch].items())
        assert read_meta(tmp_path / f"stage1.epoch{epoch}.safetensors")["epoch"] == epoch


def test_cosine_schedule_at_known_steps_with_the_batch_scaling() -> None:
    """Appendix A.3's rate 0.1 is for batch 256; at batch 64 it starts at 0.025 and decays
    to 0 over the stage's steps, with no warm-up: the scaling holds at every step."""
    from glancefocus.training.stages import Setup

    setup = Setup(None, None, TrainConfig(batch_size=64, weight_decay=0.0), Trainer(Run(Path("unused"), World(), quiet=True),
                                                                                      TrainConfig()), {})
    optimizer = setup.sgd([{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1}])
    schedule = cosine_schedule(optimizer, total_steps=10)
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    # 0.025 * (1 + cos(pi * s / 10)) / 2: s = 2 -> 0.025 * 0.9045085, s = 5 -> 0.0125,
    # s = 8 -> 0.025 * 0.0954915; from s = 10 on, 0 (not rising again)
    assert rates[0] == pytest.approx(0.025)
    assert rates[2] == pytest.approx(0.0226127, abs=1e-7)
    assert rates[5] == pytest.approx(0.0125)
    assert rates[8] == pytest.approx(0.0023873, abs=1e-7)
    assert rates[10] == rates[11] == pytest.approx(0.0, abs=1e-12)


def test_fp16_steps_go_through_a_grad_scaler_that_resume_restores(tmp_path: Path) -> None:
    """Under ``--amp fp16`` a step whose scaled gradients overflow fp16 is skipped and the
    scale halved (GradScaler's start 65536, backoff 0.5); the scale is saved with the training
    state and restored by a resume: after a second overflow it is 16384, not 32768 again."""
    model = nn.Linear(3, 1)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    def overflowing(images, targets):  # d(loss)/d(output) = 1e5, times the scale: beyond fp16's 65504
        return (model(images).float() * 1e5).sum(), {}

    options = {"name": "stage1", "n": 4, "batch": 4}  # one step per epoch
    trainer = Trainer(Run(tmp_path, World(), quiet=True), TrainConfig(amp="fp16"))
    trainer._finish = lambda plan, progress: {}  # leave the resume files, as an interrupted run does
    trainer.fit(_plan(model, overflowing, lambda: {}, epochs=1, **options))
    last = tmp_path / "stage1.last.safetensors"
    assert torch.load(state_path(last), weights_only=False)["scaler"]["scale"] == 32768.0
    assert all(torch.equal(v, initial[k]) for k, v in model.state_dict().items())  # the step was skipped
    resumed = Trainer(Run(tmp_path, World(), quiet=True, resume=True), TrainConfig(amp="fp16"))
    resumed._finish = lambda plan, progress: {}
    resumed.fit(_plan(model, overflowing, lambda: {}, epochs=2, **options))
    assert torch.load(state_path(last), weights_only=False)["scaler"]["scale"] == 16384.0
