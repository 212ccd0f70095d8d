"""The authors' release's recipe as config fields: dropout and drop-path in both encoders,
learning rates scaled with the batch, the family's data interpolation, Stage III on sampled
locations; the distillation lever; and the demo recipe, which pins the values its numbers
were measured with."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from timm.layers import DropPath

from glancefocus import GFNet, GFNetConfig
from glancefocus.config import DataConfig, TrainConfig
from glancefocus.runtime.preprocess import Transform
from glancefocus.data.sources import load_data
from glancefocus.distributed import World
from glancefocus.config.recipes import DEMO, IMAGENETTE_LITE0
from glancefocus.training.trainer import Run, Trainer
from glancefocus.training.losses import deep_supervision_loss, distillation_loss
from glancefocus.models.outputs import GFNetOutput
from glancefocus.training.stages import Setup, stage1, stage3

TINY = {"backbone": "resnet18", "num_classes": 3, "patch_size": 32, "T": 3, "image_size": 64}


@pytest.mark.parametrize("backbone, drop, drop_path, interpolation", [
    ("tf_efficientnet_lite0", 0.3, 0.2, "bicubic"),
    ("efficientnet_b3", 0.3, 0.2, "bicubic"),
    ("mobilenetv3_large_100", 0.2, 0.2, "bilinear"),
    ("resnet50", 0.0, 0.0, "bilinear"),
    ("densenet121", 0.0, 0.0, "bilinear"),
    ("regnety_008", 0.0, 0.0, "bilinear"),
])
def test_family_defaults_are_the_releases(backbone, drop, drop_path, interpolation) -> None:
    resolved = GFNetConfig(backbone=backbone).resolved()
    assert (resolved.drop_rate, resolved.drop_path_rate, resolved.resize_interpolation) == (drop, drop_path, interpolation)
    assert Transform.of(GFNetConfig(backbone=backbone)).interpolation == interpolation
    assert GFNetConfig(backbone=backbone, drop_rate=0.1).resolved().drop_rate == 0.1


def test_dropout_acts_on_pooled_features_in_training_only() -> None:
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(**TINY, drop_rate=0.5, drop_path_rate=0.1))
    images = torch.randn(4, 3, 64, 64)
    encoder = model.local_encoder.eval()
    _, plain = encoder(images[:, :, :32, :32])
    encoder.dropout.train()  # dropout alone in training mode: BatchNorm keeps its statistics
    _, dropped = encoder(images[:, :, :32, :32])
    kept = dropped != 0
    assert 0.2 < kept.float().mean() < 0.8  # about half of ē is dropped ...
    torch.testing.assert_close(dropped[kept], plain[kept] / 0.5)  # ... the rest rescaled, as nn.Dropout
    # drop-path (stochastic depth) is in the encoders' blocks, with the rate asked for
    rates = {m.drop_prob for m in model.local_encoder.modules() if isinstance(m, DropPath)}
    assert rates and max(rates) == pytest.approx(0.1)


def test_dropout_leaves_evaluation_unchanged() -> None:
    """step / forward, madds and predict in eval mode equal those of the same weights
    without dropout or drop-path; in training mode two passes differ."""
    torch.manual_seed(0)
    plain = GFNet(GFNetConfig(**TINY, drop_rate=0.0, drop_path_rate=0.0))
    dropping = GFNet(GFNetConfig(**TINY, drop_rate=0.5, drop_path_rate=0.2))
    dropping.load_state_dict(plain.state_dict())  # no new parameters: checkpoints interchange
    images, where = torch.randn(4, 3, 64, 64), torch.rand(2, 4, 2)
    plain.eval(), dropping.eval()
    with torch.no_grad():
        torch.testing.assert_close(dropping(images, locations=where).logits, plain(images, locations=where).logits, rtol=0, atol=0)
        thresholds = torch.tensor([0.6, 0.6, 0.0])
        a, b = dropping.predict(images, thresholds), plain.predict(images, thresholds)
    assert torch.equal(a.probs, b.probs) and torch.equal(a.exit_step, b.exit_step)
    assert dropping.madds() == plain.madds()
    dropping.train()
    first, second = (dropping(images, locations=where, need_aux=True) for _ in range(2))
    assert not torch.allclose(first.logits, second.logits)
    assert not torch.allclose(first.aux_logits, second.aux_logits)  # deep supervision reads the dropped ē too


def _setup(config: TrainConfig, model: GFNet | None = None, data: Path | None = None, tmp: Path | None = None) -> Setup:
    splits = load_data(DataConfig(root=str(data)), model.config, seed=0) if data is not None else None
    run = Run(tmp or Path("unused"), World(), quiet=True)
    config = config.for_model(model.config) if model is not None else config
    return Setup(model, splits, config, Trainer(run, config), {})


def test_learning_rates_scale_with_the_batch() -> None:
    param = torch.nn.Parameter(torch.zeros(2))

    def lrs(**fields) -> list[float]:
        optimizer = _setup(TrainConfig(weight_decay=0.0, **fields)).sgd([{"params": [param], "lr": 0.1}])
        return [g["lr"] for g in optimizer.param_groups]

    assert lrs(batch_size=64) == [pytest.approx(0.025)]
    assert lrs(batch_size=512) == [pytest.approx(0.2)]
    assert lrs(batch_size=64, lr_reference_batch=64) == [pytest.approx(0.1)]
    assert lrs(batch_size=64, scale_lr=False) == [pytest.approx(0.1)]
    with pytest.raises(ValueError, match="lr_reference_batch"):
        TrainConfig(lr_reference_batch=0)


@pytest.mark.parametrize("mode", ["sample", "mean"])
def test_stage3_trains_on_sampled_locations(mode: str, tiny_data: Path, tmp_path: Path) -> None:
    """Stage III reads patches at l ~ N(π's mean, 0.1²) clipped to [0, 1], as the release
    does (``stage3_locations="sample"``), or at π's mean."""
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(**{**TINY, "num_classes": 2}))
    plan = stage3(_setup(TrainConfig(batch_size=8, stage3_locations=mode), model, tiny_data, tmp_path))
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(out.locations.detach()))
    plan.train_mode()
    torch.manual_seed(1)
    images, targets = torch.randn(256, 3, 64, 64), torch.randint(0, 2, (256,))
    with torch.no_grad():
        plan.step(images, targets)
        means = model(images, locations="mean").locations
    read, mean = seen[0], means
    assert read.min() >= 0 and read.max() <= 1
    if mode == "mean":
        assert torch.equal(read[0], mean[0])
        return
    inside = ((mean[0] > 0.35) & (mean[0] < 0.65)).all(1)  # far from the clipped edges
    noise = (read[0] - mean[0])[inside]
    assert inside.sum() > 50 and noise.std().item() == pytest.approx(0.1, rel=0.2) and noise.mean().abs() < 0.03


def test_demo_recipe_pins_what_its_numbers_were_measured_with() -> None:
    """The demo's results must not move with the release's defaults."""
    model, train = DEMO.model.resolved(), DEMO.train
    assert (model.drop_rate, model.drop_path_rate) == (0.0, 0.0)
    assert (train.lr_scale, train.glance_patience, train.stage3_locations) == (1.0, 0, "mean")
    # the reproduction follows the release: scaled rates, dropout, a glance run to its plateau
    lite0 = IMAGENETTE_LITE0.model.resolved()
    assert (lite0.drop_rate, lite0.drop_path_rate, lite0.resize_interpolation) == (0.3, 0.2, "bicubic")
    assert IMAGENETTE_LITE0.train.lr_scale == 0.25 and IMAGENETTE_LITE0.train.glance_patience > 0
    assert IMAGENETTE_LITE0.train.stage1_epochs == 30


def test_deep_supervision_loss_on_a_hand_worked_example() -> None:
    """T = 2 steps, B = 2 images, C = 2 classes; image 1 is class 0, image 2 class 1."""
    ln3 = math.log(3)
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[ln3, 0.0], [ln3, 0.0]]])  # (T, B, C)
    aux = torch.tensor([[[0.0, ln3], [0.0, ln3]], [[0.0, 0.0], [0.0, 0.0]]])
    out = GFNetOutput(logits=logits, aux_logits=aux, locations=torch.zeros(1, 2, 2))
    # CE of p_t:  image 1: step 1 ln 2, step 2 -ln(3/4) = ln(4/3);  image 2: ln 2, -ln(1/4) = ln 4
    # CE of aux:  image 1: -ln(1/4) = ln 4, ln 2;                    image 2: ln(4/3), ln 2
    # sum of p_t's = 2 ln 2 + ln(4/3) + ln 4 = 3.0602708, the aux sum the same;
    # with λ = 5: (3.0602708 + 5 * 3.0602708) / (T * B = 4) = 4.5904062
    targets = torch.tensor([0, 1])
    assert deep_supervision_loss(out, targets, 5.0).item() == pytest.approx(4.5904062, abs=1e-6)
    assert deep_supervision_loss(out, targets, 1.0).item() == pytest.approx(1.5301354, abs=1e-6)  # 2 * 3.0602708 / 4
    assert deep_supervision_loss(out, targets, 0.0).item() == pytest.approx(0.7650677, abs=1e-6)  # 3.0602708 / 4


def test_distillation_loss_is_the_tempered_kl_to_the_teacher() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(4, 3)
    assert distillation_loss(teacher.expand(2, 4, 3), teacher, 2.0).abs() < 1e-6  # the teacher's own answer costs nothing
    student = torch.randn(2, 4, 3)
    for tau in (1.0, 2.0, 3.0):  # τ² is 1, 4, 9 (at τ = 2 alone, 2τ would read the same 4)
        p = torch.softmax(teacher / tau, -1)
        kl = sum((p * (p.log() - torch.log_softmax(s / tau, -1))).sum(-1).mean() for s in student) / 2
        torch.testing.assert_close(distillation_loss(student, teacher, tau), kl * tau**2)
    torch.testing.assert_close(distillation_loss(student, teacher), distillation_loss(student, teacher, 1.0))


def test_stage1_adds_the_distillation_term(tiny_data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(**{**TINY, "num_classes": 2}))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2))
    images, targets = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 0, 1])
    teacher(images)
    losses = {}
    for weight in (0.0, 0.5):
        setup = _setup(TrainConfig(batch_size=4, distill_weight=weight), model, tiny_data, tmp_path)
        setup.teacher = teacher.eval()
        plan = stage1(setup)
        plan.train_mode()
        torch.manual_seed(1)
        losses[weight] = plan.step(images, targets)[0]
    torch.manual_seed(1)  # the same random patches again
    with torch.no_grad():
        out = model(images, locations="random", need_aux=True)
    torch.testing.assert_close(losses[0.5] - losses[0.0], 0.5 * distillation_loss(out.logits, teacher(images)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="teacher"):
        stage1(_setup(TrainConfig(batch_size=4, distill_weight=0.5), model, tiny_data, tmp_path))


def test_train_with_a_recipe_takes_its_batch_size_and_weights_unless_told_otherwise() -> None:
    from glancefocus.cli.commands import _resolve
    from glancefocus.cli.parser import build_parser
    from glancefocus.config.weights import Weights
    from glancefocus.data.sources import data_source

    def resolved(*flags: str):
        run_config = _resolve(build_parser().parse_args(["train", "--stage", "1", *flags]), data_source("builtin"))
        return run_config.train.batch_size, run_config.pretrained

    assert resolved("--recipe", "imagenette-lite0") == (64, Weights.LITE0)
    assert resolved("--recipe", "imagenette-lite0", "--batch-size", "32", "--pretrained", "false") == (32, False)
    assert resolved() == (256, False)
    assert "distill_weight" not in vars(build_parser().parse_args(["train", "--stage", "1"]))  # no teacher on the CLI


@pytest.mark.parametrize("images", ["augmented", "plain"])
def test_stage2_rolls_out_on_the_chosen_view_with_the_chosen_lr(images: str, tiny_data: Path, tmp_path: Path) -> None:
    """``stage2_images="plain"`` gives π the training images exactly as evaluation crops them
    (the held-out view's pixels); the default keeps the release's random crops.  ``ppo.lr``
    is π's Adam rate, unscaled by the batch."""
    from dataclasses import replace

    from glancefocus.config import PPOConfig
    from glancefocus.training.stages import stage2

    model = GFNet(GFNetConfig(**{**TINY, "num_classes": 2}))
    config = TrainConfig(batch_size=8, stage2_images=images, ppo=replace(PPOConfig(), lr=1e-3))
    s = _setup(config, model, tiny_data, tmp_path)
    plan = stage2(s)
    assert [g["lr"] for g in plan.optimizer.param_groups] == [1e-3]
    dataset = plan.loader.dataset
    dataset.set_epoch(0, "stage2")
    first, again = dataset[0][0], dataset[0][0]
    index = dataset.dataset.indices[0]
    plain = s.splits.heldout.dataset[index][0]  # the evaluation view of the same training image
    assert torch.equal(first, again)  # one epoch's draw is reproducible either way
    assert torch.equal(first, plain) == (images == "plain")


def test_ppo_lr_and_stage2_images_are_flags() -> None:
    from glancefocus.cli.commands import _resolve
    from glancefocus.cli.parser import build_parser
    from glancefocus.data.sources import data_source

    args = build_parser().parse_args(["train", "--stage", "2", "--ppo-lr", "0.002", "--stage2-images", "plain",
                                      "--ppo-baseline", "greedy"])
    config = _resolve(args, data_source("builtin")).train
    assert (config.ppo.lr, config.stage2_images, config.ppo.baseline, config.ppo.gamma) == (0.002, "plain", "greedy", 0.7)


def test_misspelt_stage_options_are_refused() -> None:
    from glancefocus.config import PPOConfig

    with pytest.raises(ValueError, match="stage2_images must be one of 'augmented', 'plain'"):
        TrainConfig(stage2_images="Plain")
    with pytest.raises(ValueError, match="baseline must be one of"):
        PPOConfig(baseline="self-critical")
    with pytest.raises(ValueError, match="stage3_locations"):
        TrainConfig(stage3_locations="centre")
    with pytest.raises(ValueError, match="amp must be one of 'none', 'bf16', 'fp16'"):
        TrainConfig(amp="bfloat16")


def test_builtin_data_has_no_augmentation_to_leave_out_in_stage2() -> None:
    """The built-in set's training data are canvases drawn afresh each epoch, served as
    evaluation serves them: ``stage2_images="plain"`` keeps them (not one fixed draw)."""
    from dataclasses import replace

    splits = load_data(DataConfig(), replace(DEMO.model, num_classes=10), seed=0)
    assert splits.train_plain is splits.train and splits.train.redraw is not None
