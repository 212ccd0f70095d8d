"""Which images decide what: the training images are trained on, the held-out training images
choose the kept epoch and set the thresholds, val is only reported (appendix B.2), and
``evaluate`` draws the same held-out images as the training run it evaluates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

import glancefocus.evaluation.evaluate as evaluate_module
import glancefocus.training.stages as stages
from glancefocus import DataConfig
from glancefocus.cli import main
from glancefocus.distributed import World
from glancefocus.evaluation.evaluate import evaluate_checkpoint
from glancefocus.data.sampling import SeededAugmentation, holdout_split

from conftest import MODEL_ARGS, RUN_ARGS


@pytest.mark.parametrize(
    "n, fraction, held",
    [(5, 0.1, 1),     # 0.5 images rounds down to none: one is held out all the same
     (25, 0.1, 2),    # floor(2.5)
     (29, 0.1, 2),    # floor(2.9): never rounded up into the training images
     (10, 0.3, 3),    # floor(3.0000000000000004)
     (48, 0.25, 12)],
)
def test_holdout_split_sizes_and_disjointness(n: int, fraction: float, held: int) -> None:
    train, heldout = holdout_split(n, fraction, seed=0)
    assert len(heldout) == held and len(train) == n - held
    assert sorted(train + heldout) == list(range(n))  # disjoint, and no image lost
    assert train == sorted(train) and heldout == sorted(heldout)
    assert holdout_split(n, fraction, seed=0) == (train, heldout)  # a seed gives one split
    if held > 1:
        assert {tuple(holdout_split(n, fraction, seed=s)[1]) for s in range(5)} != {tuple(heldout)}


def test_holdout_split_refuses_to_leave_nothing_to_train_on() -> None:
    with pytest.raises(ValueError, match="leaves no training images out of 1"):
        holdout_split(1, 0.1, seed=0)
    with pytest.raises(ValueError, match="^the training set is empty$"):
        holdout_split(0, 0.1, seed=0)


@pytest.mark.parametrize("fraction", [0.0, -0.1])
def test_holdout_split_of_no_positive_fraction_holds_nothing_out(fraction: float) -> None:
    # The one-image minimum is for a positive fraction too small to hold out a whole image.
    assert holdout_split(10, fraction, seed=0) == (list(range(10)), [])


@pytest.mark.parametrize("holdout", [0.0, 1.0, -0.1])
def test_no_held_out_images_is_an_error_naming_the_fix(holdout: float, colour_data: Path, tmp_path: Path, capsys) -> None:
    """Without held-out images the thresholds would be set on the images trained on."""
    with pytest.raises(ValueError, match=r"set on the images trained on\. Use --holdout 0\.1"):
        DataConfig(holdout=holdout)
    out = tmp_path / "run"
    code = main(["train", "--stage", "glance", "--data", str(colour_data), *MODEL_ARGS, *RUN_ARGS, "--out", str(out),
                 "--holdout", str(holdout)])
    err = capsys.readouterr().err
    assert code == 2 and f"--holdout {holdout} must be a fraction between 0 and 1" in err and "\n" not in err.strip()
    assert not out.exists() or not any(out.iterdir())


def _files(dataset, root: Path) -> list[str]:
    """The files behind a split, unwrapping the augmentation and subsets (relative to ``root``)."""
    if isinstance(dataset, SeededAugmentation):
        return _files(dataset.dataset, root)
    if isinstance(dataset, Subset):
        inner = _files(dataset.dataset, root)
        return [inner[i] for i in dataset.indices]
    return [str(Path(p).relative_to(root)) for p, _ in dataset.samples]


def _record_loaders(monkeypatch, module, root: Path) -> list[tuple[bool, list[str]]]:
    """Every loader ``module`` makes: (shuffled for training?, its files)."""
    made, real = [], module.make_loader

    def recording(dataset, **kwargs):
        made.append((kwargs["train"], _files(dataset, root)))
        return real(dataset, **kwargs)

    monkeypatch.setattr(module, "make_loader", recording)
    return made


def test_training_and_evaluation_use_each_split_for_its_job(colour_data: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    trained = _record_loaders(monkeypatch, stages, colour_data)
    assert main(["train", "--stage", "glance", "--glance-epochs", "1", "--data", str(colour_data), *MODEL_ARGS,
                 *RUN_ARGS, "--out", str(out), "--holdout", "0.25", "--seed", "3"]) == 0
    train_files = {f for shuffled, files in trained if shuffled for f in files}
    selection_files = [set(files) for shuffled, files in trained if not shuffled]
    all_train = {f"train/{c}/{i}.png" for c in ("blue", "green", "red") for i in range(12)}
    assert selection_files and all(s == selection_files[0] for s in selection_files)
    heldout = selection_files[0]
    assert len(heldout) == 9 and heldout <= all_train  # floor(36 * 0.25) training images
    assert train_files == all_train - heldout  # disjoint from the images trained on; none lost

    # evaluate: thresholds from the same held-out images, accuracy reported on val.  Fake
    # probabilities tell the two apart: 0.9 on every training-folder image, 0.6 on val.
    evaluated = _record_loaders(monkeypatch, evaluate_module, colour_data)

    def fake_probs(model, loader, world, **kwargs):
        files = _files(loader.dataset, colour_data)
        confidence = torch.tensor([0.9 if f.startswith("train/") else 0.6 for f in files])
        probs = torch.stack([confidence, 1 - confidence, torch.zeros_like(confidence)], -1).expand(model.T, -1, -1)
        return probs.contiguous(), torch.zeros(len(files), dtype=torch.long)  # every image "is" class 0

    monkeypatch.setattr(evaluate_module, "collect_probs", fake_probs)
    results = evaluate_checkpoint(out / "glance.safetensors", world=World(), save=False)
    assert [set(files) for _, files in evaluated] == [heldout, {f"val/{c}/{i}.png" for c in ("blue", "green", "red")
                                                                 for i in range(4)}]
    assert results["num_heldout"] == 9 and results["num_val"] == 12
    # Every held-out image has confidence 0.9, so each finite threshold is 0.9 (on val's 0.6 it
    # would be 0.6), and val's accuracy is 100 % whatever the exits.
    finite = {v for row in results["thresholds"] for v in row if isinstance(v, float)}
    assert finite and all(v == pytest.approx(0.9) for v in finite), finite
    assert all(p["accuracy"] == 100.0 for p in results["budgeted"])
