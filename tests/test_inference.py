"""Early-exit prediction and the picture of where the model looks, through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from glancefocus import exit_steps
from glancefocus.models.checkpoint import read_meta
from glancefocus.cli import main
from glancefocus.inference import select_thresholds
from glancefocus.runtime.predictions import choose_budget_point

from conftest import tiny_model


@pytest.fixture
def trained(trained_run: Path, colour_data: Path) -> tuple[Path, Path]:
    return trained_run / "stage3.safetensors", colour_data


# A curve where the cheapest point within a budget, the dearest point within it and the most
# accurate one within it are three different points (as a real curve's can be).
POINTS = [{"q": 0.05, "madds": 100.0, "accuracy": 70.0}, {"q": 0.1, "madds": 150.0, "accuracy": 80.0},
          {"q": 0.15, "madds": 200.0, "accuracy": 78.0}, {"q": 0.2, "madds": 300.0, "accuracy": 75.0}]


@pytest.mark.parametrize("budget, chosen", [
    (100, 0),    # exactly the cheapest point's cost: it fits (a ceiling, not a strict bound)
    (160, 1),    # 100 and 150 fit: 80 % beats 70 %
    (250, 1),    # 100, 150, 200 fit: the 80 % point, not the dearest that fits (78 %)
    (300, 1),    # all fit
    (1e12, 1),   # far above the dearest point: the most accurate point, not an error
    (None, 1),   # no budget: the most accurate overall, not the dearest (75 %)
])
def test_the_most_accurate_point_within_the_budget_is_chosen(budget, chosen) -> None:
    assert choose_budget_point(POINTS, budget) == chosen
    assert choose_budget_point(POINTS[:3] + [{**POINTS[3], "accuracy": 90.0}], budget) == (3 if budget is None or budget >= 300 else chosen)


def test_a_budget_below_the_cheapest_point_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"--budget 99.5 is below this model's cheapest budget point, 100 .*at least 100$"):
        choose_budget_point(POINTS, 99.5)
    with pytest.raises(ValueError) as empty:
        choose_budget_point([], 100)
    assert str(empty.value) == "this model has no budgeted curve: run `glancefocus evaluate --checkpoint CK` first"
    # The message in full, at a real model's scale: 1 000 050 100 MAdds is 1000.0501 M, "1000.1 M"
    curve = [{"q": 0.05, "madds": 1_000_050_100.0, "accuracy": 70.0}, {"q": 1.0, "madds": 2.5e9, "accuracy": 80.0}]
    with pytest.raises(ValueError) as below:
        choose_budget_point(curve, 9e8)
    assert str(below.value) == (
        "--budget 9e+08 is below this model's cheapest budget point, 1e+09 mean multiply-adds per image "
        "(1000.1 M; its curve spans 1e+09 to 2.5e+09): choose a budget of at least 1e+09"
    )


def test_predict_cli_follows_the_budget(trained, tmp_path: Path, capsys) -> None:
    checkpoint, data = trained
    meta = read_meta(checkpoint)
    cheapest = min(p["madds"] for p in meta["results"]["budgeted"])
    dearest = max(p["madds"] for p in meta["results"]["budgeted"])
    for budget in (cheapest, (cheapest + dearest) / 2, dearest, 1e15):
        out = tmp_path / f"pred{budget:.0f}.json"
        assert main(["predict", "--checkpoint", str(checkpoint), str(data / "val"), "--budget", str(budget), "--json", str(out)]) == 0
        result = json.loads(out.read_text())
        rows = result["predictions"]
        assert len(rows) == 3 * 4
        assert result["budget_point"]["madds"] <= budget
        within = [p for p in meta["results"]["budgeted"] if p["madds"] <= budget]
        assert result["budget_point"]["accuracy"] == max(p["accuracy"] for p in within)
        thresholds, _ = select_thresholds(meta, budget)
        for row in rows:
            assert row["class"] in meta["classes"] and 1 <= row["exit_step"] <= 3
            assert len(row["locations"]) == row["exit_step"] - 1
            assert row["madds"] == meta["madds"][row["exit_step"] - 1]
            if row["exit_step"] < 3:
                assert row["probability"] >= float(thresholds[row["exit_step"] - 1])
    assert "mean" in capsys.readouterr().out


def test_visualize_writes_a_png(trained, tmp_path: Path) -> None:
    checkpoint, data = trained
    png = tmp_path / "where.png"
    images = sorted((data / "val" / "red").iterdir())[:2]
    budget = max(p["madds"] for p in read_meta(checkpoint)["results"]["budgeted"])
    assert main(["visualize", "--checkpoint", str(checkpoint), *map(str, images), "--out", str(png), "--budget", str(budget)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_visualize_draws_each_box_where_the_model_looked(tmp_path: Path, monkeypatch) -> None:
    """The boxes in the PNG sit at the regions of the locations the model returns: red on each
    box's edges, the (black) image inside and just outside them; the earlier region on the
    next panel in orange.  A non-square image, so rows and columns cannot be swapped."""
    import matplotlib.figure
    from PIL import Image

    from glancefocus.evaluation.plots import visualize

    H, W, P, T = 64, 96, 32, 3
    model = tiny_model(T=T, num_classes=5).eval()
    # where the model looks: (row, col) fractions per focus step and image, all distinct
    where = torch.tensor([[[0.1, 0.8], [0.9, 0.05]], [[0.7, 0.2], [0.3, 0.6]]])
    run = model.forward
    monkeypatch.setattr(model, "forward", lambda images, **kw: run(images, **{**kw, "locations": where}))
    saved = []
    savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **kw: (saved.append((fig, kw["dpi"])), savefig(fig, *a, **kw))[1])
    mean, std = torch.tensor(model.config.mean).view(1, 3, 1, 1), torch.tensor(model.config.std).view(1, 3, 1, 1)
    black = (torch.zeros(2, 3, H, W) - mean) / std  # shown as black
    with torch.no_grad():
        assert torch.equal(model(black, locations="mean", need_aux=False).locations, where)
    visualize(model, black, tmp_path / "where.png", classes=list("abcde"))

    (fig, dpi), = saved
    png = np.asarray(Image.open(tmp_path / "where.png").convert("RGB")).astype(int)
    scale = dpi / fig.dpi

    def pixel(ax, x: float, y: float) -> np.ndarray:  # image coordinates (column, row) -> the PNG's RGB
        px, py = ax.transData.transform((x, y)) * scale
        return png[png.shape[0] - 1 - int(round(py)), int(round(px))]

    def is_black(rgb) -> bool:
        return bool((rgb < 40).all())

    def is_red(rgb) -> bool:
        return rgb[0] > 200 and rgb[1] < 80 and rgb[2] < 80

    def is_orange(rgb) -> bool:
        return rgb[0] > 150 and 0.5 < rgb[1] / rgb[0] < 0.8 and rgb[2] < 60  # matplotlib's orange, (255, 165, 0)

    axes = np.array(fig.axes).reshape(2, T)
    for b in range(2):
        for t in range(1, T):
            ax = axes[b, t]
            boxes = [(math.floor(float(where[s, b, 0]) * (H - P)), math.floor(float(where[s, b, 1]) * (W - P))) for s in range(t)]
            (r, c) = boxes[-1]  # the newest region: solid red
            top, left, bottom, right = r - 0.5, c - 0.5, r - 0.5 + P, c - 0.5 + P
            middle_row, middle_col = (top + bottom) / 2, (left + right) / 2
            for x, y in ((left, middle_row), (right, middle_row), (middle_col, top), (middle_col, bottom)):
                assert is_red(pixel(ax, x, y)), (b, t, x, y, pixel(ax, x, y))
            assert is_black(pixel(ax, middle_col, middle_row)), (b, t)
            # a few pixels outside each edge (where the image extends that far): the image
            for x, y in ((left - 4, middle_row), (right + 4, middle_row), (middle_col, top - 4), (middle_col, bottom + 4)):
                if 0 <= x <= W - 1 and 0 <= y <= H - 1:
                    assert is_black(pixel(ax, x, y)), (b, t, x, y)
            for r, c in boxes[:-1]:  # earlier regions, dashed orange: their left edge, dashes and gaps
                assert sum(is_orange(pixel(ax, c - 0.5, r - 0.5 + k)) for k in range(P)) >= P // 3, (b, t)
        assert not any(is_red(pixel(axes[b, 0], x, y)) for x in range(0, W, 4) for y in range(0, H, 4))  # no box on the glance


@pytest.mark.parametrize("amp", [None, torch.bfloat16, torch.float16])
def test_predict_agrees_with_all_steps_under_options(amp) -> None:
    torch.manual_seed(0)
    model = tiny_model(T=3, num_classes=5).eval()
    model = model.to(memory_format=torch.channels_last)
    images = torch.randn(12, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        probs = model(images).logits.float().softmax(dim=2)
    confidence = probs.max(dim=2).values
    thresholds = torch.tensor([confidence[0].median(), confidence[1].median(), -float("inf")])
    result = model.predict(images, thresholds, amp=amp)
    expected = exit_steps(confidence, thresholds)
    assert torch.equal(result.exit_step, expected)
    assert 0 < int((expected == 1).sum()) < 12  # some, not all, exit at the glance
    assert torch.equal(result.labels, probs.argmax(dim=2).gather(0, expected.view(1, -1) - 1)[0])


def test_predict_needs_thresholds_in_the_checkpoint(trained_run: Path, colour_data: Path, capsys) -> None:
    # Stage I's checkpoint was never evaluated, so it stores no thresholds.
    assert main(["predict", "--checkpoint", str(trained_run / "stage1.safetensors"), str(colour_data / "val")]) == 2
    assert "run `glancefocus evaluate" in capsys.readouterr().err


def test_policy_locations_match_one_batch_and_spread_is_per_step() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from glancefocus.distributed import World
    from glancefocus.evaluation.evaluate import location_spread, policy_locations

    torch.manual_seed(0)
    model = tiny_model(T=3, num_classes=3).eval()
    images = torch.randn(7, 3, 64, 64)
    batched = policy_locations(model, DataLoader(TensorDataset(images, torch.zeros(7)), batch_size=3), World())
    with torch.inference_mode():
        whole = model(images, locations="mean").locations
    assert batched.shape == (2, 7, 2)
    torch.testing.assert_close(batched, whole)  # batching and order do not change where π looks

    fixed = torch.tensor([[[0.5, 0.5]] * 4, [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    spread = location_spread(fixed)
    assert spread[0] == {"mean": [0.5, 0.5], "std": [0.0, 0.0]}  # one place for every image
    assert spread[1]["mean"] == [0.5, 0.5] and spread[1]["std"] == pytest.approx([0.57735, 0.57735], abs=1e-5)


def test_first_focus_grid_is_step_2_with_its_patch_at_each_place() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from glancefocus.distributed import World
    from glancefocus.evaluation import first_focus_grid, grid_locations

    torch.manual_seed(0)
    model = tiny_model(T=3, num_classes=3).eval()
    images, targets = torch.randn(5, 3, 64, 64), torch.tensor([0, 1, 2, 1, 0])
    glance, focus, confidence, true_prob = first_focus_grid(model, DataLoader(TensorDataset(images, targets), batch_size=2), World(), grid=3)
    places = grid_locations(3)
    assert places[:4].tolist() == [[0.0, 0.0], [0.0, 0.5], [0.0, 1.0], [0.5, 0.0]] and focus.shape == (9, 5)
    with torch.inference_mode():
        for k, where in enumerate(places):
            logits = model(images, locations=where.expand(2, 5, 2)).logits
            assert torch.equal(glance, logits[0].argmax(1) == targets)
            assert torch.equal(focus[k], logits[1].argmax(1) == targets)
            torch.testing.assert_close(confidence[k], logits[1].softmax(1).max(1).values)
            torch.testing.assert_close(true_prob[k], logits[1].softmax(1)[torch.arange(5), targets])
    assert focus.float().std() > 0  # the places give different answers: the test compares something


def test_evaluate_model_measures_what_evaluate_checkpoint_does(trained_run: Path) -> None:
    """A model in memory with loaders of one's own: the results a checkpoint's evaluation gives."""
    from glancefocus import GFNet
    from glancefocus.data.sources import load_data, make_loader
    from glancefocus.distributed import World
    from glancefocus.evaluation import evaluate_checkpoint, evaluate_model
    from glancefocus.evaluation.evaluate import trained_data

    checkpoint = trained_run / "stage2.safetensors"
    found = evaluate_checkpoint(checkpoint, world=World(), batch_size=6, save=False, workers=0)
    model, meta = GFNet.from_checkpoint(checkpoint)
    splits = load_data(trained_data(meta), model.config, seed=meta["train_config"]["seed"])
    loader = lambda data: make_loader(data, batch_size=6, world=World(), train=False, workers=0)  # noqa: E731
    assert found.pop("patches") == "learned"
    assert evaluate_model(model, loader(splits.heldout), loader(splits.val), World()) == found
