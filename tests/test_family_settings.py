"""Per-family training settings against appendix A.2-A.3, and what they do in a real run:
a frozen fG (MobileNet-V3, EfficientNet) keeps its weights and BatchNorm statistics through
Stage I, and EfficientNet skips Stage III."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import glancefocus.training.pipeline as pipeline
from glancefocus import GFNet, GFNetConfig
from glancefocus.config import DataConfig, PPOConfig, TrainConfig
from glancefocus.distributed import World
from glancefocus.training.trainer import Run
from glancefocus.data.sources import load_data
from glancefocus.training.pipeline import fit

from conftest import make_image_folder

# Appendix A.3, "Stage I": encoder rates 0.01, 0.01, 0.02, 0.005, 0.005; L2 5e-5 for RegNets,
# 1e-4 for the others; λ 1 for ResNets, DenseNets, RegNets and 5 for MobileNets-V3 and
# EfficientNets; 60 epochs, 90 for MobileNets-V3, 30 for EfficientNets.  "Initialization": fG
# fixed for MobileNets-V3 and EfficientNets.  "Stage III": not run for EfficientNets, same
# epochs as Stage I otherwise.
APPENDIX = {  # backbone: (encoder lr, weight decay, λ, fG frozen, Stage I epochs, Stage III)
    "resnet50": (0.01, 1e-4, 1.0, False, 60, True),
    "densenet121": (0.01, 1e-4, 1.0, False, 60, True),
    "regnety_006": (0.02, 5e-5, 1.0, False, 60, True),
    "mobilenetv3_large_100": (0.005, 1e-4, 5.0, True, 90, True),
    "efficientnet_b2": (0.005, 1e-4, 5.0, True, 30, False),
}


@pytest.mark.parametrize("backbone", sorted(APPENDIX))
def test_each_family_trains_with_the_appendix_settings(backbone: str) -> None:
    lr, decay, aux, frozen, epochs, stage3 = APPENDIX[backbone]
    c = TrainConfig().for_model(GFNetConfig(backbone=backbone))
    assert (c.lr_encoder, c.weight_decay, c.aux_weight, c.freeze_glance) == (lr, decay, aux, frozen)
    assert (c.stage1_epochs, c.stage3_epochs, c.run_stage3) == (epochs, epochs, stage3)
    # the same for every family: fC at 0.1 in Stage I and 0.01 in Stage III, Nesterov 0.9, batch 256
    assert (c.lr_classifier, c.lr_classifier_stage3, c.momentum, c.batch_size) == (0.1, 0.01, 0.9, 256)
    # an explicit value is kept, not replaced by the family's
    assert TrainConfig(lr_encoder=0.3, aux_weight=2.0).for_model(GFNetConfig(backbone=backbone)).lr_encoder == 0.3


def test_stage2_settings_are_appendix_a2() -> None:
    # Adam β1 0.9, β2 0.999, rate 0.0003; γ 0.7, ε 0.2, c1 0.5, c2 0.01; 15 epochs
    p = PPOConfig()
    assert (p.lr, p.betas, p.gamma, p.clip, p.value_coef, p.entropy_coef) == (3e-4, (0.9, 0.999), 0.7, 0.2, 0.5, 0.01)
    assert TrainConfig().stage2_epochs == 15


def _stage1(backbone: str, data: Path, out: Path) -> tuple[dict, dict]:
    """(weights before, weights after) two Stage I steps."""
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(backbone=backbone, num_classes=2, patch_size=32, T=2, image_size=64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(batch_size=4, stage1_epochs=1, max_steps_per_epoch=2, channels_last=False)
    data_config = DataConfig(str(data), holdout=0.25)
    fit(model, load_data(data_config, model.config, seed=0), ["stage1"], config=config, run=Run(out, World(), quiet=True),
        data=data_config)
    return before, model.state_dict()


@pytest.mark.parametrize("backbone, frozen", [("mobilenetv3_small_050", True), ("resnet18", False)])
def test_a_frozen_global_encoder_keeps_weights_and_batchnorm_statistics(backbone: str, frozen: bool,
                                                                        tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=6)
    before, after = _stage1(backbone, data, tmp_path / "run")
    changed = {k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])}
    glance = {k for k in before if k.startswith("global_encoder.") and before[k].is_floating_point()}
    statistics = {k for k in glance if k.endswith(("running_mean", "running_var"))}
    assert statistics  # both encoders have BatchNorm
    local_statistics = {k for k in changed if k.startswith("local_encoder.") and k.endswith("running_mean")}
    assert local_statistics  # fL learnt and its statistics moved: the run did train
    if frozen:
        assert not changed & glance, sorted(changed & glance)[:5]
    else:
        assert statistics <= changed and len(changed & glance) > len(statistics)


def test_efficientnet_skips_stage3_and_mobilenet_does_not(tmp_path: Path, monkeypatch, capsys) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    fitted = []
    monkeypatch.setattr(pipeline.Trainer, "fit", lambda self, plan: fitted.append(plan.name))
    for backbone in ("efficientnet_b0", "mobilenetv3_small_050"):
        fitted.clear()
        model = GFNet(GFNetConfig(backbone=backbone, num_classes=2, patch_size=32, T=2, image_size=64))
        data_config = DataConfig(str(data), holdout=0.25)
        fit(model, load_data(data_config, model.config, seed=0), ["stage1", "stage2", "stage3"],
            config=TrainConfig(batch_size=4), run=Run(tmp_path / backbone, World(), quiet=True), data=data_config)
        assert fitted == (["stage1", "stage2"] if backbone.startswith("efficientnet") else ["stage1", "stage2", "stage3"])
    assert capsys.readouterr().out.count("skipping Stage III") == 1
