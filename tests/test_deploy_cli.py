"""``glancefocus export`` and ``glancefocus predict`` on photo folders, for both runtimes:
the same rows, unreadable files skipped by name, budgets below the curve refused (above it,
the most accurate point), ImageNet class names shown, and the evaluation transform without
torch equal to torchvision's."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from glancefocus import GFNet, GFNetConfig  # noqa: E402
from glancefocus.models.checkpoint import save_checkpoint  # noqa: E402
from glancefocus.cli import main  # noqa: E402
from glancefocus.data.sources import image_transform  # noqa: E402
from glancefocus.evaluation.evaluate import evaluate_results  # noqa: E402
from glancefocus.runtime.preprocess import Transform  # noqa: E402

from conftest import make_image_folder  # noqa: E402

WNIDS = ["n01440764", "n02102040", "n02979186"]  # Imagenette's first three classes
DESCRIPTIONS = ["tench, Tinca tinca", "English springer, English springer spaniel", "cassette player"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path, dict]:
    """An evaluated checkpoint (random weights, thresholds from other random images), its
    export, and a folder of photos."""
    root = tmp_path_factory.mktemp("deploy_cli")
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(backbone="mobilenetv3_small_050", num_classes=3, patch_size=32, T=3, image_size=64)).eval()
    with torch.no_grad():
        for p in (*model.classifier.parameters(), model.global_encoder.head.weight):
            p.mul_(20)
        probs = model(torch.randn(64, 3, 64, 64)).logits.softmax(dim=2)
    results = evaluate_results(probs[:, :32], probs[:, 32:], torch.randint(0, 3, (32,)), model.madds())
    checkpoint = root / "stage3.safetensors"
    save_checkpoint(checkpoint, model.state_dict(), {"config": model.config.to_dict(), "classes": WNIDS,
                                                    "stage": "stage3", "madds": model.madds(), "results": results})
    photos = make_image_folder(root / "photos", classes=3, per_class=4, size=80, splits=("val",)) / "val"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(root / "onnx")]) == 0
    return checkpoint, root / "onnx", photos, results


def _predict(source: list[str], photos: Path, out: Path, *extra: str) -> dict:
    assert main(["predict", *source, str(photos), "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_both_runtimes_write_the_same_rows(setup, tmp_path: Path, capsys) -> None:
    checkpoint, onnx_dir, photos, results = setup
    budget = str(sorted(p["madds"] for p in results["budgeted"])[len(results["budgeted"]) // 2])
    torch_rows = _predict(["--checkpoint", str(checkpoint)], photos, tmp_path / "t.json", "--budget", budget)
    onnx_rows = _predict(["--onnx", str(onnx_dir)], photos, tmp_path / "o.json", "--budget", budget)
    assert onnx_rows["budget_point"] == torch_rows["budget_point"] and onnx_rows["skipped"] == []
    assert len(onnx_rows["predictions"]) == 12
    for a, b in zip(torch_rows["predictions"], onnx_rows["predictions"]):
        assert {k: a[k] for k in ("file", "label", "class", "description", "exit_step", "madds")} == \
               {k: b[k] for k in ("file", "label", "class", "description", "exit_step", "madds")}
        assert b["probability"] == pytest.approx(a["probability"], abs=1e-4)
        np.testing.assert_allclose(b["locations"], a["locations"], atol=1e-5)
        assert b["description"] == DESCRIPTIONS[b["label"]]  # wnids get their ImageNet names
    assert len({r["exit_step"] for r in onnx_rows["predictions"]}) > 1
    first = onnx_rows["predictions"][0]
    assert f"{first['class']} ({first['description']})" in capsys.readouterr().out


@pytest.mark.parametrize("runtime", ["--checkpoint", "--onnx"])
def test_unreadable_images_are_skipped_by_name_or_stop_the_run(setup, runtime: str, tmp_path: Path, capsys) -> None:
    checkpoint, onnx_dir, photos, _ = setup
    source = [runtime, str(checkpoint if runtime == "--checkpoint" else onnx_dir)]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    files = [str(p) for p in sorted(photos.rglob("*.png"))[:3]]
    assert main(["predict", *source, *files, str(bad)]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "--skip-bad-images" in err
    out = tmp_path / "pred.json"
    assert main(["predict", *source, *files, str(bad), "--skip-bad-images", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [s["file"] for s in result["skipped"]] == [str(bad)] and len(result["predictions"]) == 3
    assert "3 images, 1 skipped" in capsys.readouterr().out


@pytest.mark.parametrize("runtime", ["--checkpoint", "--onnx"])
def test_a_budget_below_the_curve_names_the_cheapest_point(setup, runtime: str, tmp_path: Path, capsys) -> None:
    checkpoint, onnx_dir, photos, results = setup
    source = [runtime, str(checkpoint if runtime == "--checkpoint" else onnx_dir)]
    low = min(p["madds"] for p in results["budgeted"])
    for budget in (-5, low * 0.99):
        assert main(["predict", *source, str(photos), "--budget", str(budget)]) == 2
        err = capsys.readouterr().err
        assert "below this model's cheapest budget point" in err and f"at least {low:.4g}" in err
    # a budget is a ceiling: far above the dearest point it takes the most accurate point
    out = tmp_path / "pred.json"
    assert main(["predict", *source, str(photos), "--budget", "1e15", "--json", str(out)]) == 0
    best = max(results["budgeted"], key=lambda p: p["accuracy"])
    assert json.loads(out.read_text())["budget_point"] == best


def test_export_refuses_what_is_not_an_evaluated_gfnet(setup, tmp_path: Path, capsys) -> None:
    checkpoint, onnx_dir, _, _ = setup
    from safetensors.torch import load_file, save_file

    from glancefocus.models.checkpoint import read_meta

    weights, meta = load_file(str(checkpoint)), read_meta(checkpoint)
    cases = {
        "glance.safetensors": ({**meta, "stage": "glance"}, "not a GFNet: export the checkpoint of Stage I, II or III"),
        "unevaluated.safetensors": ({k: v for k, v in meta.items() if k != "results"}, "run `glancefocus evaluate"),
        "foreign.safetensors": (None, "not a glancefocus checkpoint"),
    }
    for name, (case_meta, message) in cases.items():
        if case_meta is None:
            save_file({"w": torch.zeros(1)}, str(tmp_path / name))
        else:
            save_checkpoint(tmp_path / name, weights, {k: v for k, v in case_meta.items() if k != "format"})
        assert main(["export", "--checkpoint", str(tmp_path / name), "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x").exists()
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(onnx_dir)]) == 2
    assert "exists and is not empty: pass --force" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(onnx_dir), "--force"]) == 0


def test_eval_transform_without_torch_equals_torchvision() -> None:
    g = np.random.default_rng(0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for (width, height), interpolation in product([(80, 64), (64, 101), (73, 73), (64, 64), (500, 333)], ["bicubic", "bilinear"]):
        image = Image.fromarray(g.integers(0, 256, (height, width, 3), dtype=np.uint8))
        expected = image_transform(Transform(64, 0.875, mean, std, interpolation), train=False)(image)
        got = Transform(64, 0.875, mean, std, interpolation)(image)
        assert got.dtype == np.float32 and got.shape == (3, 64, 64)
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6, rtol=0)
