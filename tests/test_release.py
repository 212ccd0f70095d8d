"""Importing the authors' published checkpoints: parity with their own network, and safety.

For every family the release's networks are built with random weights, saved in the
release's checkpoint format, imported with ``import_release``, and both run on the same
images: every step's logits, every location, and the budgeted-classification thresholds
and results must agree.  Tests that need the release's code skip when ``../shared`` is absent.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED

from glancefocus import GFNet, budgeted_accuracy, exit_fractions, find_thresholds
from glancefocus.models.checkpoint import read_meta
from glancefocus.cli import main
from glancefocus.models.release import import_release
from scripts.release_reference import BATCH, randomize_norms

needs_release = pytest.mark.skipif(
    not (SHARED / "reference" / "gfnet-release").is_dir(), reason="needs ../shared/reference/gfnet-release"
)

# The families at their Table 2 patch size and T; full images just larger than a patch.
FAMILIES = {
    "resnet50": (96, 5, 128),
    "densenet121": (96, 5, 128),
    "regnety_600m": (96, 5, 128),
    "mobilenetv3_large_100": (96, 3, 128),
    "mobilenetv3_large_125": (128, 3, 160),
    "efficientnet_b2": (128, 4, 160),
}
@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tmp_path_factory):
    """(release logits, release locations, our output, images, T) for one family."""
    from scripts.release_reference import build_gfnet, run_gfnet, save_checkpoint

    name = request.param
    patch, T, size = FAMILIES[name]
    torch.manual_seed(0)
    nets = build_gfnet(name, patch)
    randomize_norms(nets["model_prime"], nets["model"])
    images = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(2))
    ref_logits, ref_locations = run_gfnet(nets, name, images, patch, T)
    folder = tmp_path_factory.mktemp(name)
    save_checkpoint(folder / "release.pth.tar", nets, name, patch, T)
    import_release(folder / "release.pth.tar", folder / "imported.safetensors")
    ours = GFNet.from_checkpoint(folder / "imported.safetensors", channels_last=False)[0].eval()
    with torch.no_grad():
        out = ours(images, locations="mean")
    return ref_logits, ref_locations, out, T


@needs_release
def test_logits_match_the_release_at_every_step(pair):
    ref_logits, _, out, T = pair
    assert out.logits.shape == ref_logits.shape == (T, BATCH, 1000)
    for t in range(T):
        scale = ref_logits[t].abs().max()
        assert (out.logits[t] - ref_logits[t]).abs().max() <= 1e-4 * scale, f"step {t + 1}"


@needs_release
def test_locations_match_the_release_at_every_step(pair):
    _, ref_locations, out, _ = pair
    assert (out.locations - ref_locations).abs().max() <= 1e-5


@needs_release
def test_budgeted_classification_matches_the_release(pair):
    """The release's threshold search and evaluation on its probabilities equal ours on ours."""
    from scripts.release_reference import release

    ref_logits, _, out, T = pair
    inference = release().inference
    ref_probs, probs = F.softmax(ref_logits, dim=2), F.softmax(out.logits, dim=2)
    targets = ref_probs[-1].argmax(dim=1).roll(1)  # some right, some wrong
    flops = [1e8 * (t + 1) for t in range(T)]
    for k in range(1, 40):
        q = torch.tensor([k / 20])  # the release's exit fractions, as its inference.py computes them
        p = torch.exp(torch.log(q) * torch.arange(1, T + 1, dtype=torch.float32))
        ref_thresholds = inference.dynamic_find_threshold(ref_probs, targets, p / p.sum())
        thresholds = find_thresholds(probs, exit_fractions(k / 20, T))
        as_ours = ref_thresholds.clone()
        as_ours[as_ours >= 1e8], as_ours[as_ours <= -1e8] = math.inf, -math.inf
        torch.testing.assert_close(thresholds, as_ours, rtol=1e-5, atol=1e-6, msg=f"thresholds at q={k / 20}")
        ref_accuracy, ref_flops = inference.dynamic_evaluate(ref_probs, targets, flops, ref_thresholds)
        accuracy, cost = budgeted_accuracy(probs, targets, flops, thresholds)
        assert accuracy == pytest.approx(ref_accuracy) and cost == pytest.approx(ref_flops), f"q={k / 20}"


@pytest.fixture(scope="module")
def release_file(tmp_path_factory):
    """A small release checkpoint (MobileNet-V3 1.00, 96 px, T=3), as the authors save one."""
    from scripts.release_reference import build_gfnet, save_checkpoint

    path = tmp_path_factory.mktemp("release") / "r.pth.tar"
    save_checkpoint(path, build_gfnet("mobilenetv3_large_100", 96), "mobilenetv3_large_100", 96, 3)
    return path


@needs_release
def test_imported_metadata_carries_the_releases_results(release_file, tmp_path):
    import_release(release_file, tmp_path / "m.safetensors")
    meta = read_meta(tmp_path / "m.safetensors")
    published = torch.load(release_file, weights_only=True)
    assert meta["release"]["flops"] == published["flops"]
    assert meta["release"]["anytime_classification"] == published["anytime_classification"]
    assert meta["results"]["source"] == "release"
    assert [p["madds"] for p in meta["results"]["budgeted"]] == published["budgeted_batch_classification"][0]
    torch.testing.assert_close(torch.tensor(meta["results"]["thresholds"]), published["dynamic_threshold"])
    cfg = meta["config"]
    assert (cfg["glance_resize"], cfg["policy_conv_bias"], cfg["glance_head"]) == ("align_corners", False, True)


# ------------------------------------------------------------------ malformed and hostile files
def _refused(src, tmp_path, match: str) -> None:
    """Importing ``src`` raises a ValueError matching ``match`` and leaves the output untouched."""
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous")
    with pytest.raises(ValueError, match=match):
        import_release(src, out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []  # no temporary left


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_that_runs_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model_name": "resnet50", "patch_size": 96, "flops": [1.0], "payload": _RunsCode(marker)}, tmp_path / "evil.pth.tar")
    _refused(tmp_path / "evil.pth.tar", tmp_path, "refused rather than executed")
    assert not marker.exists()


def test_files_that_are_not_release_checkpoints_are_refused(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pth.tar")
    _refused(tmp_path / "tensor.pth.tar", tmp_path, "not the release's checkpoint dict")
    torch.save({"model_name": "resnet50", "patch_size": 96}, tmp_path / "partial.pth.tar")
    _refused(tmp_path / "partial.pth.tar", tmp_path, "missing .*'policy'")
    (tmp_path / "garbage.pth.tar").write_bytes(b"not a pickle at all")
    _refused(tmp_path / "garbage.pth.tar", tmp_path, "not a loadable")


@needs_release
def test_wrong_keys_or_shapes_are_refused(release_file, tmp_path):
    ckpt = torch.load(release_file, weights_only=True)
    renamed = dict(ckpt, model_state_dict={k.replace("conv_stem", "stem_conv"): v for k, v in ckpt["model_state_dict"].items()})
    torch.save(renamed, tmp_path / "keys.pth.tar")
    _refused(tmp_path / "keys.pth.tar", tmp_path, "missing .*conv_stem.*unexpected .*stem_conv")
    torch.save(dict(ckpt, patch_size=128), tmp_path / "shapes.pth.tar")  # π's linear was sized for 96 px
    _refused(tmp_path / "shapes.pth.tar", tmp_path, "wrong shapes .*policy.trunk.3.weight")
    torch.save(dict(ckpt, model_name="resnet50"), tmp_path / "family.pth.tar")
    _refused(tmp_path / "family.pth.tar", tmp_path, "do not fit GFNet resnet50")


@needs_release
def test_numpy_numbers_in_the_results_are_accepted(release_file, tmp_path):
    ckpt = torch.load(release_file, weights_only=True)
    ckpt.update(flops=[np.float64(f) for f in ckpt["flops"]], model_flops=np.float32(0.5e9), fc_flops=np.int64(2))
    torch.save(ckpt, tmp_path / "numpy.pth.tar")
    import_release(tmp_path / "numpy.pth.tar", tmp_path / "m.safetensors")
    assert read_meta(tmp_path / "m.safetensors")["release"]["flops"] == [float(f) for f in ckpt["flops"]]


@needs_release
def test_cli_imports_then_predicts_and_visualizes(release_file, tmp_path, capsys):
    from conftest import make_image_folder

    out = tmp_path / "gfnet.safetensors"
    assert main(["import-release", str(release_file), "--out", str(out)]) == 0
    images = make_image_folder(tmp_path / "img", classes=2, per_class=1, size=64, splits=("val",)) / "val"
    budget = read_meta(out)["results"]["budgeted"][0]["madds"]
    assert main(["predict", str(images), "--checkpoint", str(out), "--budget", str(budget), "--device", "cpu"]) == 0
    assert "2 images" in capsys.readouterr().out
    assert main(["visualize", str(images), "--checkpoint", str(out), "--out", str(tmp_path / "v.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "v.png").stat().st_size > 0
    assert main(["import-release", str(tmp_path / "missing.pth.tar"), "--out", str(out)]) == 2


@needs_release
def test_cli_evaluates_an_imported_checkpoint(tmp_path):
    """A two-class release-format model (ImageNet would take hours) through `evaluate`."""
    from conftest import make_image_folder
    from scripts.release_reference import build_gfnet, save_checkpoint

    data = make_image_folder(tmp_path / "data", size=128)

    save_checkpoint(tmp_path / "r.pth.tar", build_gfnet("mobilenetv3_large_100", 96, num_classes=2), "mobilenetv3_large_100", 96, 3)
    out = tmp_path / "gfnet.safetensors"
    assert main(["import-release", str(tmp_path / "r.pth.tar"), "--out", str(out)]) == 0
    args = ["evaluate", "--checkpoint", str(out), "--data", str(data), "--json", str(tmp_path / "r.json"), "--device", "cpu"]
    assert main([*args, "--batch-size", "8", "--workers", "0", "--quiet"]) == 0
    meta = read_meta(out)
    assert "source" not in meta["results"] and len(meta["results"]["thresholds"]) == 39  # recomputed here
    assert meta["release"]["model_name"] == "mobilenetv3_large_100"  # the release's own numbers stay
