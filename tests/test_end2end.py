"""End-to-end (differentiable) training of π and a learned patch scale, through the CLI as a
user runs it: the pipeline, learning, resume, bf16, two processes and ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from glancefocus import DataConfig, GFNet, GFNetConfig, TrainConfig
from glancefocus.models.checkpoint import read_meta
from glancefocus.cli import main
from glancefocus.distributed import World
from glancefocus.training.trainer import Run
from glancefocus.config.recipes import Recipe, resolve
from glancefocus.training.pipeline import new_model, train

from conftest import MODEL_ARGS, RUN_ARGS, make_image_folder, write_folder

E2E = ["--policy-training", "differentiable", "--patch-scale", "learned"]


def test_the_differentiable_pipeline_trains_pi_with_the_rest_and_learns(tmp_path: Path) -> None:
    data = write_folder(tmp_path / "bw", {"bright": (220, 220, 220), "dark": (35, 35, 35)}, n_train=20, n_val=6)
    out = tmp_path / "run"
    rc = main(["train", "--stage", "all", "--data", str(data), *MODEL_ARGS, *E2E, "--glance-epochs", "1",
               "--stage1-epochs", "2", "--end2end-epochs", "5", "--holdout", "0.2", *RUN_ARGS, "--out", str(out)])
    assert rc == 0
    # Stage I on random regions, then the end-to-end stage in place of Stages II and III
    assert all((out / f"{s}.safetensors").exists() for s in ("glance", "stage1", "end2end"))
    assert not (out / "stage2.safetensors").exists()
    meta = read_meta(out / "end2end.safetensors")
    assert meta["config"]["patch_scale"] == "learned" and meta["config"]["crop"] == "resample"
    assert meta["results"]["budgeted"]  # --stage all evaluates the last stage
    first = read_meta(out / "stage1.safetensors")["history"][0]["train_loss"]
    losses = [h["train_loss"] for h in meta["history"]]
    assert len(losses) == 5 and losses[-1] < 0.7 * first, (first, losses)
    trained = load_file(str(out / "end2end.safetensors"))
    initial = new_model(GFNetConfig.from_dict(meta["config"]), seed=0).state_dict()
    assert not torch.equal(trained["policy.actor.weight"], initial["policy.actor.weight"])  # π learned
    assert torch.equal(trained["policy.critic.weight"], initial["policy.critic.weight"])  # PPO's critic did not


def test_differentiable_training_with_a_fixed_scale_uses_the_resampling_crop(colour_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "fixed"
    assert main(["train", "--stage", "all", "--data", str(colour_data), *MODEL_ARGS, "--policy-training", "differentiable",
                 "--epochs", "1", *RUN_ARGS, "--out", str(out)]) == 0
    config = read_meta(out / "end2end.safetensors")["config"]
    assert (config["patch_scale"], config["crop"]) == ("fixed", "resample")


def test_a_resumed_differentiable_run_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=6, size=64)
    common = ["train", "--data", str(data), "--epochs", "1", *MODEL_ARGS, *E2E, *RUN_ARGS]
    assert main([*common, "--stage", "all", "--out", str(tmp_path / "straight")]) == 0
    assert main([*common, "--stage", "glance", "--out", str(tmp_path / "stopped")]) == 0
    assert main([*common, "--stage", "all", "--resume", "--out", str(tmp_path / "stopped")]) == 0
    a, b = (load_file(str(tmp_path / run / "end2end.safetensors")) for run in ("straight", "stopped"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_bf16_differentiable_training_keeps_float32_weights(colour_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    assert main(["train", "--stage", "all", "--data", str(colour_data), *MODEL_ARGS, *E2E, "--epochs", "1", "--amp", "bf16",
                 *RUN_ARGS, "--out", str(out)]) == 0
    weights = load_file(str(out / "end2end.safetensors"))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# LayerNorm, not BatchNorm: a batch split over two processes computes what one process does.
CONFIG = dict(backbone="convnext_atto", num_classes=2, patch_size=32, T=3, image_size=64, patch_scale="learned")
TRAIN = TrainConfig(batch_size=8, glance_epochs=1, end2end_epochs=1, policy_training="differentiable", end2end_random=0.0)


def _worker(rank: int, world_size: int, init_file: str, data: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        run = Run(Path(out), World(rank, world_size, torch.device("cpu")), quiet=True)
        _, model = train(resolve(Recipe("tiny", GFNetConfig(**CONFIG), TRAIN)), ["glance", "end2end"], data=DataConfig(data, holdout=0.25, workers=0),
                         run=run)
        torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_train_end_to_end_as_one(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=16, size=64)  # 24 training images: three batches of 8
    out = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(data), str(out)), nprocs=2, join=True)
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "the two processes drifted apart"
    single = tmp_path / "single"
    _, one = train(resolve(Recipe("tiny", GFNetConfig(**CONFIG), TRAIN)), ["glance", "end2end"], data=DataConfig(str(data), holdout=0.25, workers=0),
                   run=Run(single, World(), quiet=True))
    for k, v in one.state_dict().items():  # two processes x 4 images per step == one process x 8 images
        torch.testing.assert_close(r0[k], v, rtol=1e-4, atol=1e-5, msg=k)


# ----------------------------------------------------------------------------- deployment
@pytest.fixture(scope="module")
def learned_export(tmp_path_factory) -> tuple[GFNet, Path]:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from glancefocus.export.bundle import export_gfnet

    torch.manual_seed(0)
    model = GFNet(GFNetConfig(backbone="tf_efficientnet_lite0", num_classes=5, patch_size=32, T=3, image_size=64,
                              patch_scale="learned")).eval()
    with torch.no_grad():  # spread π's regions over places and scales, and sharpen the answers
        model.policy.actor.weight.mul_(50)
        for p in model.classifier.parameters():
            p.mul_(20)
    points = [{"q": 1.0, "madds": 1.0, "accuracy": 50.0, "thresholds": [0.5, 0.5, "-inf"]}]
    out = export_gfnet(model, tmp_path_factory.mktemp("learned") / "onnx", classes=[f"c{i}" for i in range(5)], budget_points=points)
    return model, out


def test_a_learned_scale_model_exports_with_the_same_regions_and_exits(learned_export) -> None:
    from glancefocus.runtime.deploy import OnnxGFNet

    model, out = learned_export
    onnx_model = OnnxGFNet(out, threads=1)
    images = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(images)
    assert float(expected.locations[..., 2].std()) > 0.05  # the scales differ between images
    every = np.array([np.inf, np.inf, -np.inf], dtype=np.float32)  # every image runs all steps
    got = onnx_model.predict(images.numpy(), every)
    np.testing.assert_allclose(got.locations, expected.locations.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.probs, expected.logits[-1].softmax(1).numpy(), atol=1e-4, rtol=0)
    thresholds = torch.tensor([0.3, 0.3, -float("inf")])
    predicted = model.predict(images, thresholds)
    got = onnx_model.predict(images.numpy(), thresholds.numpy())
    np.testing.assert_array_equal(got.exit_step, predicted.exit_step.numpy())
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["patch_scale"], manifest["scale_range"], manifest["crop"]) == ("learned", [32, 64], "resample")


def test_a_trained_learned_scale_run_exports_predicts_and_draws_as_a_user_runs_it(colour_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "run"
    assert main(["train", "--stage", "all", "--data", str(colour_data), *MODEL_ARGS, *E2E, "--epochs", "1", *RUN_ARGS,
                 "--out", str(out)]) == 0
    checkpoint = out / "end2end.safetensors"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "onnx")]) == 0
    photos = colour_data / "val"
    rows = {}
    for name, source in (("torch", ["--checkpoint", str(checkpoint)]), ("onnx", ["--onnx", str(tmp_path / "onnx")])):
        assert main(["predict", *source, str(photos), "--json", str(tmp_path / f"{name}.json")]) == 0
        rows[name] = json.loads((tmp_path / f"{name}.json").read_text())["predictions"]
    for a, b in zip(rows["torch"], rows["onnx"]):
        assert (a["label"], a["exit_step"]) == (b["label"], b["exit_step"])
        assert all(len(region) == 3 for region in a["locations"])  # row, col and scale fraction
        np.testing.assert_allclose(b["locations"], a["locations"], atol=1e-5)
    picture = tmp_path / "patches.png"
    assert main(["visualize", "--checkpoint", str(checkpoint), "--out", str(picture), str(next(photos.rglob("*.png")))]) == 0
    assert picture.stat().st_size > 0
