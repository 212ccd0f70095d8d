"""Steps that read different sizes (``GFNetConfig.reads``): the plan, its multiply-adds, early
exit in PyTorch and ONNX, the training pipeline (``whole`` stage, learning, resume, two
processes), PPO on the patch steps only, and the plain cascade it is measured against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from glancefocus import DataConfig, GFNet, GFNetConfig, TrainConfig
from glancefocus.cli import main
from glancefocus.config import PPOConfig
from glancefocus.config.recipes import Recipe, resolve
from glancefocus.distributed import World
from glancefocus.evaluation.cascade import evaluate_cascade
from glancefocus.models.checkpoint import read_meta
from glancefocus.training.ppo import rollout
from glancefocus.training.stages import ReadClassifier
from glancefocus.training.trainer import Run
from glancefocus.training.pipeline import train

from conftest import RUN_ARGS, make_image_folder

LITE = dict(backbone="tf_efficientnet_lite0", num_classes=5, patch_size=32, image_size=64)
PLAN = ("glance", "patch", "whole:64")
CLI_MODEL = ["--backbone", "resnet18", "--patch-size", "32", "--image-size", "64", "--reads", "glance,patch,whole:48"]


# ------------------------------------------------------------------------------- the plan
@pytest.mark.parametrize("reads, message", [
    (("patch", "whole:64"), "the first read, and only the first, must be the glance"),
    (("glance", "whole:64", "patch"), "whole-image reads must come after every patch"),
    (("glance", "whole"), "needs its size"),
    (("glance", "patch:48"), "the glance and patches read the patch size"),
    (("glance", "whole:32"), "larger than the patch size"),
    (("glance", "whole:65"), "at most the image size"),
    (("glance", "zoom:64"), "unknown read"),
])
def test_a_bad_plan_is_refused_with_the_fix(reads, message) -> None:
    with pytest.raises(ValueError, match=message):
        GFNetConfig(**LITE, T=len(reads), reads=reads)


def test_T_follows_the_plan_and_a_contradicting_T_is_refused() -> None:
    assert resolve("imagenette-lite0", model={"reads": ("glance", "patch", "whole:224")}).model.T == 3
    with pytest.raises(ValueError, match=r"T \(4\) must equal the number of reads \(2"):
        GFNetConfig(**LITE, T=4, reads=("glance", "whole:64"))
    paper = GFNetConfig(**LITE, T=3)
    assert [str(r) for r in paper.plan] == ["glance:32", "patch:32", "patch:32"] and paper.whole_size is None


def _flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def test_madds_of_an_unequal_plan_are_the_sum_of_its_reads() -> None:
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(**LITE, T=3, reads=("glance", "patch", "whole:48"))).eval()
    paper = GFNet(GFNetConfig(**LITE, T=2)).eval()
    madds = model.madds()
    assert madds[:2] == paper.madds()  # the glance and the patch cost what they cost in the paper's plan
    x48 = torch.zeros(1, 3, 48, 48)
    features = model.whole_encoder(x48)[1].shape[1]
    whole = _flops(lambda: model.whole_encoder(x48)) + 3 * features * 5  # fW at 48 px, then fC's 3F x C layer
    assert madds[2] - madds[1] == whole
    assert madds[2] - madds[1] > 2 * (madds[1] - madds[0])  # 48² px through fW cost more than a 32 px patch


def test_a_whole_step_starts_as_the_encoder_fine_tuned_at_its_size() -> None:
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(**LITE, T=3, reads=("glance", "patch", "whole:48"))).eval()
    model.init_whole_steps()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images).logits[2], ReadClassifier(model, "whole")(images), rtol=0, atol=1e-5)


def _spread_model(reads=PLAN) -> GFNet:
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(**LITE, T=len(reads), reads=reads)).eval()
    with torch.no_grad():  # confident answers, so that every step has exits
        for p in model.classifier.parameters():
            p.mul_(20)
        model.global_encoder.head.weight.mul_(20)
    return model


def _median_thresholds(model: GFNet, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        confidence = model(images).logits.softmax(2).max(2).values  # (T, B)
    return torch.cat([confidence[:-1].median(dim=1).values, torch.tensor([float("-inf")])])


def test_early_exit_on_unequal_steps_equals_the_all_steps_output_at_each_exit() -> None:
    model, images = _spread_model(), torch.randn(12, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    thresholds = _median_thresholds(model, images)
    with torch.no_grad():
        probs = model(images).logits.softmax(2)  # (T, B, C)
    got = model.predict(images, thresholds)
    confident = probs.max(2).values >= thresholds[:, None]
    expected_exit = torch.where(confident.any(0), confident.float().argmax(0), model.T - 1)
    assert torch.equal(got.exit_step, expected_exit + 1)
    assert set(got.exit_step.tolist()) == {1, 2, 3}
    torch.testing.assert_close(got.probs, probs[expected_exit, torch.arange(12)], rtol=0, atol=1e-5)
    assert got.locations.shape == (1, 12, 2)  # the one patch step's regions; NaN after an exit at the glance
    assert torch.isnan(got.locations[0, got.exit_step == 1]).all() and not torch.isnan(got.locations[0, got.exit_step > 1]).any()


@pytest.mark.parametrize("reads", [PLAN, ("glance", "whole:48", "whole:64")], ids=["patch-then-whole", "two-whole-sizes"])
def test_an_unequal_plan_exports_and_onnx_exits_as_pytorch(reads, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from glancefocus.export.bundle import export_gfnet
    from glancefocus.runtime import OnnxGFNet

    model, images = _spread_model(reads), torch.randn(12, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    thresholds = _median_thresholds(model, images)
    points = [{"q": 1.0, "madds": 1.0, "accuracy": 50.0, "thresholds": thresholds.tolist()}]
    out = export_gfnet(model, tmp_path / "onnx", classes=list("abcde"), budget_points=points)
    onnx_model = OnnxGFNet(out, threads=1)
    assert onnx_model.reads == [str(r) for r in model.config.plan]
    assert {p.name for p in out.glob("*.onnx")} == {"glance.onnx", *(f"whole{r.size}.onnx" if r.kind == "whole" else "focus.onnx"
                                                                     for r in model.config.plan[1:])}
    got, expected = onnx_model.predict(images.numpy(), thresholds.numpy()), model.predict(images, thresholds)
    np.testing.assert_array_equal(got.exit_step, expected.exit_step.numpy())
    np.testing.assert_allclose(got.probs, expected.probs.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.locations, expected.locations.numpy(), atol=1e-5, rtol=0)


def test_int8_export_of_a_whole_plan_is_refused_clearly(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from glancefocus.export.bundle import export_gfnet

    points = [{"q": 1.0, "madds": 1.0, "accuracy": 50.0, "thresholds": [0.5, 0.5, "-inf"]}]
    with pytest.raises(ValueError, match="not available for plans with whole-image reads"):
        export_gfnet(_spread_model(), tmp_path / "q", classes=list("abcde"), budget_points=points, quantize="int8",
                     calibration_data=tmp_path)


def test_ppo_acts_and_scores_at_the_patch_steps_only() -> None:
    model, images, targets = _spread_model(("glance", "patch", "patch", "whole:64")), torch.randn(4, 3, 64, 64), torch.arange(4)
    torch.manual_seed(0)
    batch = rollout(model, images, targets, PPOConfig(normalize_returns=False))
    assert batch.actions.shape == (2, 4, 2) and batch.log_probs.shape == (2, 4)
    assert batch.rewards.shape == (2, 4) and batch.returns.shape == (2, 4) and len(batch.feature_maps) == 2
    assert batch.accuracy.shape == (4,)  # every step's accuracy, the whole read's included
    # the patch steps' returns count the whole read after them: R_2 = r_2 + γ r_3 + γ² r_4
    with torch.no_grad():
        probs = model(images, locations=batch.actions).logits.softmax(2)
    true = probs[:, torch.arange(4), targets]
    r = true[1:] - true[:-1]
    gamma = PPOConfig().gamma
    torch.testing.assert_close(batch.rewards, r[:2])
    torch.testing.assert_close(batch.returns[0], r[0] + gamma * r[1] + gamma ** 2 * r[2])


# ---------------------------------------------------------------------------- training
def test_the_pipeline_of_a_plan_fine_tunes_fw_and_learns(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=10, size=64)
    out = tmp_path / "run"
    assert main(["train", "--stage", "all", "--data", str(data), *CLI_MODEL, "--epochs", "1", "--stage1-epochs", "4",
                 "--holdout", "0.2", *RUN_ARGS, "--out", str(out)]) == 0
    assert all((out / f"{s}.safetensors").exists() for s in ("glance", "whole", "stage1", "stage2", "stage3"))
    whole, stage1 = (load_file(str(out / f"{s}.safetensors")) for s in ("whole", "stage1"))
    glance = load_file(str(out / "glance.safetensors"))
    key = "whole_encoder.model.conv1.weight"
    assert torch.equal(whole["global_encoder.model.conv1.weight"], glance["global_encoder.model.conv1.weight"])
    assert not torch.equal(whole[key], stage1[key])  # ResNets train fW in Stage I as they train fG
    losses = [h["train_loss"] for h in read_meta(out / "stage1.safetensors")["history"]]
    assert losses[-1] < 0.9 * losses[0], losses
    meta = read_meta(out / "stage3.safetensors")
    assert meta["config"]["reads"] == ["glance", "patch", "whole:48"] and len(meta["results"]["madds"]) == 3
    assert meta["results"]["anytime_accuracy"][-1] > 75, meta["results"]["anytime_accuracy"]  # two classes: chance is 50
    # as a user runs it: predict and visualize on the trained plan
    image = next((data / "val" / "class0").iterdir())
    assert main(["predict", "--checkpoint", str(out / "stage3.safetensors"), "--budget", "1e12", "--device", "cpu",
                 "--json", str(tmp_path / "rows.json"), str(image)]) == 0
    assert main(["visualize", "--checkpoint", str(out / "stage3.safetensors"), "--out", str(tmp_path / "v.png"),
                 "--device", "cpu", str(image)]) == 0


def test_a_plan_without_patches_skips_stage2(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4, size=64)
    out = tmp_path / "run"
    assert main(["train", "--stage", "all", "--data", str(data), "--backbone", "resnet18", "--patch-size", "32", "--image-size", "64",
                 "--reads", "glance,whole:48", "--epochs", "1", *RUN_ARGS, "--out", str(out)]) == 0
    assert not (out / "stage2.safetensors").exists() and (out / "stage3.safetensors").exists()


def test_whole_stage_of_a_plan_without_a_whole_read_is_refused(tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / "data", per_class=2, size=64)
    rc = main(["train", "--stage", "whole", "--data", str(data), "--backbone", "resnet18", "--patch-size", "32",
               "--image-size", "64", "--T", "2", *RUN_ARGS, "--out", str(tmp_path / "run")])
    assert rc != 0 and "has none: give --reads" in capsys.readouterr().err


def test_a_resumed_plan_run_matches_an_uninterrupted_one(tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / "data", per_class=6, size=64)
    lite = ["--backbone", "tf_efficientnet_lite0", *CLI_MODEL[2:]]  # a cascade fC, fG and fW frozen after their fine-tunes
    common = ["train", "--data", str(data), "--epochs", "1", *lite, *RUN_ARGS]
    assert main([*common, "--stage", "all", "--out", str(tmp_path / "straight")]) == 0
    assert main([*common, "--stage", "glance", "--out", str(tmp_path / "stopped")]) == 0
    assert main([*common, "--stage", "1", "--out", str(tmp_path / "stopped")]) != 0  # Stage I needs fW's fine-tune first
    assert "Run --stage whole first" in capsys.readouterr().err
    assert main([*common, "--stage", "whole", "--out", str(tmp_path / "stopped")]) == 0
    assert main([*common, "--stage", "all", "--resume", "--out", str(tmp_path / "stopped")]) == 0
    a, b = (load_file(str(tmp_path / run / "stage2.safetensors")) for run in ("straight", "stopped"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    whole, stage1 = (load_file(str(tmp_path / "straight" / f"{s}.safetensors")) for s in ("whole", "stage1"))
    assert all(torch.equal(v, stage1[k]) for k, v in whole.items() if k.startswith("whole_encoder."))  # fW frozen in Stage I


# LayerNorm, not BatchNorm: a batch split over two processes computes what one process does.
DDP_CONFIG = dict(backbone="convnext_atto", num_classes=2, patch_size=32, T=3, image_size=64, reads=("glance", "patch", "whole:48"))
DDP_TRAIN = TrainConfig(batch_size=8, glance_epochs=1, stage1_epochs=1)


def _worker(rank: int, world_size: int, init_file: str, data: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        run = Run(Path(out), World(rank, world_size, torch.device("cpu")), quiet=True)
        for stage in ("glance", "whole"):  # each starts from the checkpoint rank 0 wrote (Stage I: test_distributed)
            _, model = train(resolve(Recipe("tiny", GFNetConfig(**DDP_CONFIG), DDP_TRAIN)), [stage],
                             data=DataConfig(data, holdout=0.25, workers=0), run=run)
            torch.save(model.state_dict(), Path(out) / f"{stage}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_train_a_plan_as_one(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=16, size=64)  # 24 training images: three batches of 8
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(data), str(tmp_path / "ddp")), nprocs=2, join=True)
    for stage in ("glance", "whole"):
        r0, r1 = (torch.load(tmp_path / "ddp" / f"{stage}.rank{r}.pt", weights_only=True) for r in range(2))
        assert all(torch.equal(r0[k], r1[k]) for k in r0), f"{stage}: the two processes drifted apart"
    # fW's fine-tune has no random draws: two processes x 4 images per step == one process x 8 images
    _, one = train(resolve(Recipe("tiny", GFNetConfig(**DDP_CONFIG), DDP_TRAIN)), ["glance", "whole"],
                   data=DataConfig(str(data), holdout=0.25, workers=0), run=Run(tmp_path / "single", World(), quiet=True))
    r0 = torch.load(tmp_path / "ddp" / "whole.rank0.pt", weights_only=True)
    for k, v in one.state_dict().items():
        torch.testing.assert_close(r0[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert not torch.equal(r0["whole_encoder.model.stem.0.weight"],
                           torch.load(tmp_path / "ddp" / "glance.rank0.pt", weights_only=True)["whole_encoder.model.stem.0.weight"])


# ------------------------------------------------------------------------ the plain cascade
class _Table(torch.nn.Module):
    """A 'classifier' that answers image i (its pixel value) with row i of ``logits``."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits[images[:, 0, 0, 0].long()]


def test_the_plain_cascade_against_a_hand_computed_example() -> None:
    # four images of classes 0, 1, 0, 1; a cheap first stage and a dear, better second one
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    loader = DataLoader(TensorDataset(images, torch.tensor([0, 1, 0, 1])), batch_size=3)
    cheap = _Table([[4.0, 0.0], [0.0, 3.0], [0.0, 0.5], [1.0, 0.0]])  # right, right, wrong (unsure), wrong (unsure)
    dear = _Table([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])  # right on all four
    r = evaluate_cascade([cheap, dear], [10.0, 90.0], loader, loader, World())
    assert r["madds"] == [10.0, 100.0] and r["anytime_accuracy"] == [50.0, 100.0]
    assert r["oracle"] == {"accuracy": 100.0, "madds": 55.0, "by_step": [50.0, 100.0]}
    # q = 1: half the held-out images (the two most confident, 0 and 1) leave after the cheap stage
    point = next(p for p in r["budgeted"] if p["q"] == 1.0)
    assert point == {"q": 1.0, "madds": 55.0, "accuracy": 100.0}
    with pytest.raises(ValueError, match="one MAdds count per stage"):
        evaluate_cascade([cheap, dear], [10.0], loader, loader, World())
