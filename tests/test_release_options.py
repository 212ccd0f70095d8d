"""The GFNetConfig fields that let a model compute what the authors' release computes:
their defaults keep our behaviour, and each alternative does what it says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

from glancefocus import GFNet, GFNetConfig, glance_resize
from glancefocus.models.checkpoint import save_checkpoint
from glancefocus.runtime.preprocess import Transform
from glancefocus.data.sources import image_transform

SMALL = {"backbone": "resnet18", "num_classes": 3, "patch_size": 32, "T": 3, "image_size": 64}
NEW_FIELDS = ("glance_resize", "glance_head", "policy_conv_bias", "resize_interpolation")
RELEASE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gfnet-release"
needs_release = pytest.mark.skipif(not RELEASE.is_dir(), reason="needs ../shared/reference/gfnet-release")


def test_defaults_are_our_behaviour():
    cfg = GFNetConfig(**SMALL).resolved()
    assert (cfg.glance_resize, cfg.glance_head, cfg.policy_conv_bias) == ("antialias", False, True)
    assert cfg.resize_interpolation == "bilinear"  # the data resize is the release's for ResNets
    assert GFNetConfig(backbone="efficientnet_b2").resolved().glance_head is True  # the cascade's step 1
    # The default glance is PIL's anti-aliased resize (the deviation from the release's
    # align_corners interpolation): checked against PIL itself, channel by channel in float.
    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    for size in (32, 24):
        for mode, resample in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
            out = glance_resize(images, size) if mode == "bicubic" else glance_resize(images, size, interpolation=mode)
            torch.testing.assert_close(out, _pil_resize(images, size, resample), rtol=0, atol=1e-5, msg=f"{mode} {size}")


def _pil_resize(images: torch.Tensor, size: int, resample: int) -> torch.Tensor:
    """PIL's resize of each channel as a float ("F") image to size × size."""
    return torch.tensor(np.stack([
        [np.asarray(Image.fromarray(channel.numpy()).resize((size, size), resample)) for channel in image]
        for image in images
    ]))


@needs_release
def test_align_corners_glance_is_the_releases_resize():
    from scripts.release_reference import release

    get_prime = release().inference.get_prime  # the release's glance: its own function, loaded from its folder
    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    for mode in ("bicubic", "bilinear"):
        out = glance_resize(images, 32, interpolation=mode, method="align_corners")
        torch.testing.assert_close(out, get_prime(images, 32, mode), rtol=0, atol=0, msg=mode)
    with pytest.raises(ValueError, match="antialias"):
        glance_resize(images, 32, method="nearest")


def test_glance_head_answers_step_one_with_fg_head_and_still_feeds_the_gru():
    torch.manual_seed(0)
    ours = GFNet(GFNetConfig(**SMALL)).eval()
    release_like = GFNet(GFNetConfig(**SMALL, glance_head=True)).eval()
    release_like.load_state_dict(ours.state_dict())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ours(images), release_like(images)
        pooled = release_like.global_encoder(glance_resize(images, 32))[1]
        torch.testing.assert_close(b.logits[0], release_like.global_encoder.head(pooled))
    assert not torch.allclose(a.logits[0], b.logits[0])
    torch.testing.assert_close(a.logits[1:], b.logits[1:])  # same GRU state after step 1


def test_cascade_cannot_drop_the_glance_head():
    with pytest.raises(ValueError, match="glance_head"):
        GFNetConfig(backbone="efficientnet_b2", glance_head=False).resolved()


def test_policy_conv_without_bias():
    model = GFNet(GFNetConfig(**SMALL, policy_trunk="conv", policy_conv_bias=False))
    assert model.policy.trunk[0].bias is None
    assert GFNet(GFNetConfig(**SMALL, policy_trunk="conv")).policy.trunk[0].bias is not None


def test_resize_interpolation_reaches_both_transforms():
    bicubic = Transform.of(GFNetConfig(**SMALL, resize_interpolation="bicubic"))
    for train in (False, True):
        assert image_transform(bicubic, train=train).transforms[0].interpolation == InterpolationMode.BICUBIC
    # the family's by default: bilinear for ResNet, bicubic for EfficientNet (the release's)
    assert image_transform(Transform.of(GFNetConfig(**SMALL)), train=False).transforms[0].interpolation == InterpolationMode.BILINEAR
    lite0 = image_transform(Transform.of(GFNetConfig(**{**SMALL, "backbone": "tf_efficientnet_lite0"})), train=True)
    assert lite0.transforms[0].interpolation == InterpolationMode.BICUBIC
    assert lite0.transforms[0].scale == (0.08, 1.0)  # RandomResizedCrop's default scale, as the release


def test_checkpoints_without_the_new_fields_still_load(tmp_path):
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(**SMALL)).eval()
    old_config = {k: v for k, v in model.config.to_dict().items() if k not in NEW_FIELDS}
    save_checkpoint(tmp_path / "old.safetensors", model.state_dict(), {"config": old_config})
    loaded = GFNet.from_checkpoint(tmp_path / "old.safetensors", channels_last=False)[0].eval()
    expected = {k: getattr(model.config, k) for k in NEW_FIELDS}
    # what the code that wrote such checkpoints did, not today's family default (bilinear for ResNets)
    expected["resize_interpolation"] = "bicubic"
    assert {k: getattr(loaded.config, k) for k in NEW_FIELDS} == expected
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, model(images).logits, rtol=0, atol=0)
