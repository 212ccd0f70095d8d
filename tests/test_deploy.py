"""ONNX export and ONNX Runtime early exit: the same probabilities, exits, labels and
locations as PyTorch, for every backbone family, and clear errors for broken exports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from glancefocus import GFNet, GFNetConfig  # noqa: E402
from glancefocus.runtime.deploy import MANIFEST, OnnxGFNet  # noqa: E402
from glancefocus.export.bundle import export_gfnet  # noqa: E402
from glancefocus.models.patches import patch_corners  # noqa: E402

from conftest import make_image_folder  # noqa: E402

# One small timm network per family of the paper (GRU fC + MLP π, GRU + conv π, cascade + conv π).
FAMILIES = ["resnet18", "densenet121", "regnetx_002", "mobilenetv3_small_050", "tf_efficientnet_lite0"]
T, SIZE, PATCH, CLASSES = 3, 64, 32, 5
POINTS = [{"q": 1.0, "madds": 1.0, "accuracy": 50.0, "thresholds": [0.5, 0.5, "-inf"]}]


def _model(backbone: str) -> GFNet:
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(backbone=backbone, num_classes=CLASSES, patch_size=PATCH, T=T, image_size=SIZE)).eval()
    with torch.no_grad():  # sharper than a random init's near-uniform softmax, so confidences spread out
        for p in model.classifier.parameters():
            p.mul_(20)
        model.global_encoder.head.weight.mul_(20)
    return model


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, tmp_path_factory) -> tuple[GFNet, OnnxGFNet]:
    model = _model(request.param)
    out = export_gfnet(model, tmp_path_factory.mktemp(request.param) / "onnx", classes=[f"c{i}" for i in range(CLASSES)],
                       budget_points=POINTS)
    return model, OnnxGFNet(out, threads=1)


def _images(n: int = 24) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def test_every_step_matches_pytorch(exported) -> None:
    model, onnx_model = exported
    images = _images()
    with torch.no_grad():
        expected = model(images)
    probs = expected.logits.softmax(dim=2)
    for t in range(T):  # thresholds that make every image exit at step t
        thresholds = np.array([np.inf] * t + [-np.inf] * (T - t), dtype=np.float32)
        got = onnx_model.predict(images.numpy(), thresholds)
        assert (got.exit_step == t + 1).all()  # steps are numbered 1..T
        np.testing.assert_allclose(got.probs, probs[t].numpy(), atol=1e-4, rtol=0)
        if t:
            np.testing.assert_allclose(got.locations[:t], expected.locations[:t].numpy(), atol=1e-5, rtol=0)
        assert np.isnan(got.locations[t:]).all()


def test_early_exit_equals_gfnet_predict(exported) -> None:
    model, onnx_model = exported
    images = _images()
    with torch.no_grad():
        confidence = model(images).logits.softmax(dim=2).max(dim=2).values
    # Halfway between two neighbouring confidences, so float noise cannot flip an exit.
    ranked = confidence.sort(dim=1).values
    thresholds = torch.tensor([(ranked[0, 12] + ranked[0, 13]) / 2, (ranked[1, 16] + ranked[1, 17]) / 2, -float("inf")])
    expected = model.predict(images, thresholds)
    got = onnx_model.predict(images.numpy(), thresholds.numpy())
    assert len(set(got.exit_step.tolist())) == T  # images leave at every step: the compaction is exercised
    np.testing.assert_array_equal(got.exit_step, expected.exit_step.numpy())
    np.testing.assert_array_equal(got.labels, expected.labels.numpy())
    np.testing.assert_allclose(got.probs, expected.probs.numpy(), atol=1e-4, rtol=0)
    read = ~np.isnan(got.locations[..., 0])
    np.testing.assert_array_equal(read, ~torch.isnan(expected.locations[..., 0]).numpy())
    corners = patch_corners(torch.from_numpy(got.locations[read]), SIZE, SIZE, PATCH)
    assert torch.equal(corners, patch_corners(expected.locations[torch.from_numpy(read)], SIZE, SIZE, PATCH))
    np.testing.assert_allclose(got.locations[read], expected.locations.numpy()[read], atol=1e-5, rtol=0)


def test_manifest_says_what_was_exported(exported) -> None:
    model, onnx_model = exported
    manifest = json.loads((onnx_model.directory / MANIFEST).read_text())
    assert manifest["T"] == T and manifest["patch_size"] == PATCH and manifest["image_size"] == SIZE
    assert manifest["madds"] == model.madds() and manifest["opset"] == 18
    assert manifest["mean"] == list(model.config.mean) and manifest["interpolation"] == model.config.interpolation
    assert manifest["onnx_version"] and manifest["onnxruntime_version"]
    assert manifest["budget_points"] == POINTS and manifest["class_descriptions"] is None
    thresholds, point = onnx_model.thresholds()
    assert thresholds.tolist() == [0.5, 0.5, -np.inf] and point == {"q": 1.0, "madds": 1.0, "accuracy": 50.0}


def test_thresholds_are_those_of_the_budget_point_chosen(small_export: Path, monkeypatch) -> None:
    """η of the most accurate point within the budget, as ``glancefocus predict --budget`` chooses
    (thresholds exact in float32, so that they compare equal)."""
    onnx_model = OnnxGFNet(small_export, threads=1)
    points = [{"q": 0.1, "madds": 100.0, "accuracy": 60.0, "thresholds": [0.875, 0.75, "-inf"]},
              {"q": 0.5, "madds": 200.0, "accuracy": 70.0, "thresholds": [0.5, 0.25, "-inf"]},
              {"q": 1.0, "madds": 300.0, "accuracy": 65.0, "thresholds": [0.125, 0.0625, "-inf"]}]
    monkeypatch.setitem(onnx_model.manifest, "budget_points", points)
    for budget, chosen in ((150.0, 0), (250.0, 1), (None, 1), (1e9, 1)):
        thresholds, point = onnx_model.thresholds(budget)
        assert thresholds.dtype == np.float32  # as predict and the engine compare them with the probabilities
        assert thresholds.tolist() == [float(v) for v in points[chosen]["thresholds"]], budget
        assert point == {k: points[chosen][k] for k in ("q", "madds", "accuracy")}, budget


@pytest.fixture(scope="module")
def small_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small") / "onnx"
    return export_gfnet(_model("mobilenetv3_small_050"), out, classes=list("abcde"), budget_points=POINTS)


def test_deploy_runs_without_torch(small_export: Path, tmp_path: Path) -> None:
    make_image_folder(tmp_path / "images", classes=2, per_class=2, size=80, splits=("val",))
    script = (
        "import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\n"  # any import of them fails
        "from glancefocus.runtime.deploy import OnnxGFNet\nfrom glancefocus.runtime.preprocess import image_files\n"
        f"m = OnnxGFNet({str(small_export)!r}, threads=1)\n"
        f"rows, skipped = m.predict_files(image_files([{str(tmp_path / 'images')!r}]), m.thresholds()[0])\n"
        "assert len(rows) == 4 and not skipped, rows\nassert 'torch' not in [k for k, v in sys.modules.items() if v]\n"
    )
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_broken_exports_are_refused_by_name(small_export: Path, tmp_path: Path) -> None:
    for name in ("focus.onnx", "cascade.npz"):
        missing = _copy(small_export, tmp_path / f"without-{name}")
        (missing / name).unlink()
        with pytest.raises(FileNotFoundError, match=f"{name} is missing"):
            OnnxGFNet(missing)
    changed = _copy(small_export, tmp_path / "changed")
    (changed / "glance.onnx").write_bytes((small_export / "focus.onnx").read_bytes())  # a graph from elsewhere
    with pytest.raises(ValueError, match=r"glance\.onnx does not match manifest\.json"):
        OnnxGFNet(changed)
    with pytest.raises(FileNotFoundError, match="not a glancefocus ONNX export"):
        OnnxGFNet(tmp_path)
    with pytest.raises(ValueError, match="expected 3 thresholds"):
        OnnxGFNet(small_export).predict(np.zeros((1, 3, SIZE, SIZE), np.float32), np.zeros(2))


def test_export_refuses_a_non_empty_directory_and_leaves_nothing_when_it_fails(tmp_path: Path, monkeypatch) -> None:
    model = _model("mobilenetv3_small_050")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty: pass --force"):
        export_gfnet(model, out, classes=list("abcde"), budget_points=POINTS)
    assert (out / "notes.txt").read_text() == "mine"

    import glancefocus.export.bundle as export

    def broken(*args, **kwargs):
        raise RuntimeError("the exported graphs disagree with PyTorch")

    monkeypatch.setattr(export, "_verify", broken)
    with pytest.raises(RuntimeError, match="disagree"):
        export_gfnet(model, tmp_path / "new", classes=list("abcde"), budget_points=POINTS, force=True)
    with pytest.raises(RuntimeError, match="disagree"):
        export_gfnet(model, out, classes=list("abcde"), budget_points=POINTS, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial export, no temporary folder
    assert (out / "notes.txt").read_text() == "mine"  # and the old contents are untouched


def test_a_model_configured_as_the_release_exports_faithfully(tmp_path: Path) -> None:
    """Imported checkpoints glance with align_corners (no anti-aliasing), answer step 1 with
    fG's head and have no bias in π's conv: the graphs must compute that too."""
    torch.manual_seed(0)
    config = GFNetConfig(backbone="regnetx_002", num_classes=CLASSES, patch_size=PATCH, T=T, image_size=SIZE,
                         glance_resize="align_corners", glance_head=True, policy_conv_bias=False, interpolation="bilinear")
    model = GFNet(config).eval()
    onnx_model = OnnxGFNet(export_gfnet(model, tmp_path / "onnx", classes=list("abcde"), budget_points=POINTS), threads=1)
    images = _images(6)
    never = np.array([np.inf] * (T - 1) + [-np.inf], dtype=np.float32)
    with torch.no_grad():
        expected = model(images).logits.softmax(dim=2)[-1]
    np.testing.assert_allclose(onnx_model.predict(images.numpy(), never).probs, expected.numpy(), atol=1e-4, rtol=0)
    first = onnx_model.predict(images.numpy(), np.full(T, -np.inf, dtype=np.float32))  # everyone leaves at the glance
    with torch.no_grad():
        head = model.global_encoder.head(model.global_encoder(model.view(images))[1]).softmax(dim=1)
    np.testing.assert_allclose(first.probs, head.numpy(), atol=1e-4, rtol=0)


def test_verification_refuses_graphs_that_disagree_with_pytorch(tmp_path: Path) -> None:
    """``_verify`` compares the written graphs with ``GFNet.predict``: a model changed after the
    graphs were written (as if the export had dropped a weight) is refused, naming what differs."""
    from glancefocus.export.bundle import TOLERANCE, _verify

    model = _model("mobilenetv3_small_050")
    out = export_gfnet(model, tmp_path / "onnx", classes=list("abcde"), budget_points=POINTS)
    rng = torch.random.get_rng_state()
    _verify(model, out)  # the faithful export passes
    assert torch.equal(torch.random.get_rng_state(), rng)  # on images of its own generator: the caller's draws stay as they were
    for name in ("probabilities", "locations"):
        changed = _model("mobilenetv3_small_050")
        with torch.no_grad():
            if name == "probabilities":  # every step's class scores, one class pushed up
                for layer in (m for m in changed.classifier.modules() if isinstance(m, torch.nn.Linear)):
                    layer.bias[0] += 5.0
            else:  # π's mean moved by 0.3 before its sigmoid
                changed.policy.actor.bias += 0.3
        with pytest.raises(RuntimeError, match="the exported graphs disagree with PyTorch") as e:
            _verify(changed, out)
        differences = dict(re.findall(r"'(\w+)': ([0-9.e-]+)", str(e.value)))
        assert float(differences[name]) > TOLERANCE, (name, str(e.value))


@pytest.mark.parametrize("steps", [1, 2])
def test_verification_of_one_and_two_step_models(steps: int, tmp_path: Path) -> None:
    """A one-step model exports its glance alone and has no locations to compare; a two-step
    model's one region is compared: a moved region is refused, naming the locations."""
    from glancefocus.export.bundle import TOLERANCE, _verify

    def model() -> GFNet:
        torch.manual_seed(0)
        config = GFNetConfig(backbone="mobilenetv3_small_050", num_classes=CLASSES, patch_size=PATCH, T=steps, image_size=SIZE)
        return GFNet(config).eval()

    points = [{**POINTS[0], "thresholds": [0.5] * (steps - 1) + ["-inf"]}]
    out = export_gfnet(model(), tmp_path / "onnx", classes=list("abcde"), budget_points=points)  # verified as it is written
    _verify(model(), out)
    changed, name = model(), "probabilities" if steps == 1 else "locations"
    with torch.no_grad():
        if steps == 1:  # the cascade's step 1 is fG's own head
            changed.global_encoder.head.bias[0] += 5.0
        else:  # π's mean moved by 0.3 before its sigmoid
            changed.policy.actor.bias += 0.3
    with pytest.raises(RuntimeError, match="the exported graphs disagree with PyTorch") as e:
        _verify(changed, out)
    differences = {k: float(v) for k, v in re.findall(r"'(\w+)': ([0-9.e-]+)", str(e.value))}
    assert differences[name] > TOLERANCE, str(e.value)
    if steps == 1:
        assert differences["locations"] == 0.0


def test_thresholds_are_compared_in_float32_as_pytorch_compares_them(small_export: Path) -> None:
    """η given in float64 just above an image's glance confidence rounds to it in float32, as
    GFNet.predict rounds it: the image reaches η and exits at the glance in both."""
    onnx_model = OnnxGFNet(small_export, threads=1)
    images = _images(6)
    confidence = onnx_model.predict(images.numpy(), np.full(T, -np.inf)).probs.max(axis=1)  # float32, at the glance
    k = int(np.argsort(confidence)[3])
    eta = float(confidence[k]) + 1e-12  # between two float32 values, nearest to confidence[k]
    assert np.float32(eta) == confidence[k] and eta > float(confidence[k])
    thresholds = np.array([eta, np.inf, -np.inf])  # float64
    got = onnx_model.predict(images.numpy(), thresholds)
    assert got.exit_step[k] == 1
    np.testing.assert_array_equal(got.exit_step, _model("mobilenetv3_small_050").predict(images, torch.from_numpy(thresholds)).exit_step.numpy())


def test_predict_takes_float64_and_non_contiguous_images(small_export: Path) -> None:
    """Images are made contiguous float32 before they reach the session (which takes nothing
    else); the results are float32 probabilities and locations, int64 exit steps."""
    onnx_model = OnnxGFNet(small_export, threads=1)
    images = _images(4).numpy()
    thresholds = np.array([np.inf, np.inf, -np.inf], dtype=np.float32)
    expected = onnx_model.predict(images, thresholds)
    assert (expected.probs.dtype, expected.locations.dtype, expected.exit_step.dtype) == (np.float32, np.float32, np.int64)
    for other in (images.astype(np.float64), np.asfortranarray(images)):
        got = onnx_model.predict(other, thresholds)
        np.testing.assert_allclose(got.probs, expected.probs, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got.exit_step, expected.exit_step)


def test_the_last_step_takes_every_image_left_whatever_its_threshold(small_export: Path) -> None:
    """η_T is not compared: every image still in the batch at step T exits there, with its
    probabilities (in ONNX Runtime and in PyTorch alike)."""
    onnx_model, model = OnnxGFNet(small_export, threads=1), _model("mobilenetv3_small_050")
    images = _images(6)
    unreachable = np.array([np.inf, np.inf, 2.0], dtype=np.float32)  # no probability reaches 2
    for pred in (onnx_model.predict(images.numpy(), unreachable), model.predict(images, torch.from_numpy(unreachable))):
        assert (np.asarray(pred.exit_step) == T).all()
        np.testing.assert_allclose(np.asarray(pred.probs).sum(axis=1), 1.0, rtol=0, atol=1e-5)


# int8 (`glancefocus export --quantize int8`): a GRU-fC model, calibrated on 40 self-made images.
QS = (0.5, 1.0, 2.0)


@pytest.fixture(scope="module")
def int8_pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(fp32 export, int8 export, calibration folder) of one model with three budget points."""
    from glancefocus.models.budget import exit_fractions, find_thresholds, threshold_json

    work = tmp_path_factory.mktemp("int8")
    calibration = make_image_folder(work / "heldout", classes=CLASSES, per_class=8, size=SIZE, splits=("train",)) / "train"
    model = _model("regnetx_002")
    fp32 = export_gfnet(model, work / "fp32", classes=list("abcde"), budget_points=POINTS)
    with torch.no_grad():  # the fp32 thresholds as evaluation sets them on held-out images
        probs = model(torch.from_numpy(_calibration(fp32, calibration))).logits.softmax(dim=2)
    rows = find_thresholds(probs, torch.stack([exit_fractions(q, T) for q in QS])).tolist()
    points = [{"q": q, "madds": 1.0, "accuracy": 50.0, "thresholds": [threshold_json(v) for v in row]} for q, row in zip(QS, rows)]
    fp32 = export_gfnet(model, fp32, classes=list("abcde"), budget_points=points, force=True)
    int8 = export_gfnet(model, work / "int8", classes=list("abcde"), budget_points=points, quantize="int8",
                        calibration_data=calibration)
    return fp32, int8, calibration


def _calibration(export: Path, folder: Path) -> np.ndarray:
    from glancefocus.export.quantize import calibration_images

    return calibration_images(folder, OnnxGFNet(export).transform, limit=500)


def test_int8_export_holds_smaller_quantized_graphs_and_says_so(int8_pair) -> None:
    import onnx

    fp32, int8, _ = int8_pair
    for name in ("glance.onnx", "focus.onnx"):
        ops = {n.op_type for n in onnx.load(str(int8 / name)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, name
        assert (int8 / name).stat().st_size < 0.4 * (fp32 / name).stat().st_size, name  # int8 weights: about a quarter
    manifest = json.loads((int8 / MANIFEST).read_text())
    q = manifest["quantization"]
    assert (q["type"], q["format"], q["calibration_images"]) == ("int8", "QDQ", 40)
    assert "quantization" not in json.loads((fp32 / MANIFEST).read_text())
    OnnxGFNet(int8)  # the checksums in the manifest are the quantized files'


def test_int8_predictions_mostly_agree_with_fp32(int8_pair) -> None:
    from glancefocus.export.quantize import MIN_AGREEMENT, all_steps

    fp32, int8, calibration = int8_pair
    images = _calibration(fp32, calibration)
    models = [OnnxGFNet(fp32, threads=1), OnnxGFNet(int8, threads=1)]
    (expected, _), (got, _) = (all_steps(m, images) for m in models)
    assert np.abs(got - expected).max() > 1e-3  # quantized: the probabilities moved ...
    agreement = (got.argmax(axis=2) == expected.argmax(axis=2)).mean(axis=1)
    assert (agreement >= MIN_AGREEMENT).all(), agreement  # ... the classes mostly did not
    np.testing.assert_allclose(json.loads((int8 / MANIFEST).read_text())["quantization"]["agreement_with_fp32"], agreement)
    fresh = _images(16).numpy()  # and on images it was not calibrated on, through early exit
    labels = [m.predict(fresh, m.thresholds()[0]).labels for m in models]
    assert (labels[0] == labels[1]).mean() >= 0.75, labels


def test_int8_thresholds_are_the_library_search_on_the_quantized_probabilities(int8_pair) -> None:
    from glancefocus.export.quantize import all_steps
    from glancefocus.models.budget import exit_fractions, find_thresholds

    fp32, int8, calibration = int8_pair
    probs, _ = all_steps(OnnxGFNet(int8, threads=1), _calibration(int8, calibration))
    expected = find_thresholds(torch.from_numpy(probs), torch.stack([exit_fractions(q, T) for q in QS]))
    before, after = (json.loads((e / MANIFEST).read_text())["budget_points"] for e in (fp32, int8))
    assert [p["q"] for p in after] == list(QS) and [p["madds"] for p in after] == [p["madds"] for p in before]
    got = torch.tensor([[float(v) for v in p["thresholds"]] for p in after])
    assert torch.equal(got, expected.to(got.dtype))
    moved = got != torch.tensor([[float(v) for v in p["thresholds"]] for p in before])
    assert moved[:, :-1].any()  # new probabilities, new thresholds (η_T stays -inf)


def test_quantize_refuses_bad_calibration_input_by_name(tmp_path: Path) -> None:
    model, kw = _model("regnetx_002"), {"classes": list("abcde"), "budget_points": POINTS}
    folder = make_image_folder(tmp_path / "few", classes=2, per_class=4, size=SIZE, splits=("train",))
    (tmp_path / "empty").mkdir()
    cases = [({"quantize": "int8"}, "--quantize int8 needs --calibration-data DIR"),
             ({"calibration_data": folder}, "add --quantize int8"),
             ({"quantize": "int4", "calibration_data": folder}, "--quantize 'int4' is not one of int8"),
             ({"quantize": "int8", "calibration_data": tmp_path / "empty"}, "holds no images"),
             ({"quantize": "int8", "calibration_data": tmp_path / "nowhere"}, "is not a folder"),
             ({"quantize": "int8", "calibration_data": folder}, "gives 8 images .* fewer than 32")]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            export_gfnet(model, tmp_path / "out", **kw, **options)
    assert not (tmp_path / "out").exists()


def test_quantized_graphs_that_disagree_with_fp32_are_refused_and_leave_nothing(int8_pair, tmp_path: Path, monkeypatch) -> None:
    import glancefocus.export.quantize as quantize

    _, _, calibration = int8_pair
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)  # a rule no quantized export meets
    with pytest.raises(RuntimeError, match=r"the int8 graphs give the fp32 class on only .* at step \d"):
        export_gfnet(_model("regnetx_002"), tmp_path / "out", classes=list("abcde"), budget_points=POINTS,
                     quantize="int8", calibration_data=calibration)
    assert list(tmp_path.iterdir()) == []  # no partial export, no temporary folder


def test_export_help_documents_quantization() -> None:
    from glancefocus.cli.parser import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["export"]
    text = sub.format_help()
    assert all(option in text for option in ("--quantize {int8}", "--calibration-data DIR", "--calibration-images N"))


def test_int8_leaves_the_stem_fp32_and_quantizes_the_rest(int8_pair) -> None:
    import onnx

    from glancefocus.export.quantize import stem

    fp32, int8, _ = int8_pair
    for name in ("glance.onnx", "focus.onnx"):
        graph = onnx.load(str(int8 / name)).graph
        first = stem(onnx.load(str(fp32 / name)).graph)
        assert len(first) == 1, first  # regnetx_002: one stem Conv after the images
        weights = {i.name: i.data_type for i in graph.initializer}
        convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
        assert weights[convs[first[0]].input[1]] == onnx.TensorProto.FLOAT, name  # the stem reads fp32 weights ...
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        assert sum(n.input[1] in dequantized for n in convs.values()) == len(convs) - 1, name  # ... every other Conv int8
