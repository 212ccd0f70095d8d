"""Focus regions that can zoom (a learned patch scale) and the differentiable crop that lets
π learn end to end (beyond the paper: AdaFocusV2, Uni-AdaFocus)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from glancefocus import GFNet, GFNetConfig, TrainConfig, crop_patches
from glancefocus.models.patches import region_boxes, resample_patches
from glancefocus.evaluation.plots import region_pixels

P, SIZE = 16, 64


def _images(B: int = 4, H: int = SIZE, W: int = SIZE) -> torch.Tensor:
    return torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(0))


def _model(**fields) -> GFNet:
    torch.manual_seed(0)
    config = dict(backbone="resnet18", num_classes=5, patch_size=32, T=3, image_size=SIZE)
    return GFNet(GFNetConfig(**{**config, **fields}))


# ----------------------------------------------------------------------------- the crop
def test_resampling_an_unscaled_region_at_an_integer_corner_is_the_window_crop() -> None:
    images = _images(B=4, H=40, W=48)
    # corners (0, 0), (24, 32), (12, 8), (6, 16): l = corner / (H - P, W - P), exact in float
    locations = torch.tensor([[0, 0], [24, 32], [12, 8], [6, 16]]) / torch.tensor([24.0, 32.0])
    window = crop_patches(images, locations, P)
    torch.testing.assert_close(resample_patches(images, locations, P), window, rtol=1e-5, atol=1e-5)
    # the same with a scale column at its smallest side, s = lo = P
    sized = torch.cat([locations, torch.zeros(4, 1)], dim=1)
    torch.testing.assert_close(resample_patches(images, sized, P, scale_range=(P, 40)), window, rtol=1e-5, atol=1e-5)


def test_the_largest_region_of_the_whole_image_is_its_bilinear_resize() -> None:
    images = _images(B=3, H=SIZE, W=SIZE)
    regions = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.5, 1.0], [1.0, 0.3, 1.0]])  # s = 64: location has no room to move
    expected = F.interpolate(images, size=(P, P), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resample_patches(images, regions, P, scale_range=(P, SIZE)), expected, rtol=0, atol=1e-5)


def test_a_region_twice_the_patch_averages_pixel_pairs_where_it_says() -> None:
    images = _images(B=2, H=SIZE, W=SIZE)
    # s = 2P = 32 (σ = 0.5 of 16..48); corner l·(64 - 32) = (16, 0) and (32, 24)
    regions = torch.tensor([[0.5, 0.0, 0.5], [1.0, 0.75, 0.5]])
    got = resample_patches(images, regions, P, scale_range=(16, 48))
    # bilinear samples at the centre of each 2x2 block of the region: its mean
    for b, (r, c) in enumerate([(16, 0), (32, 24)]):
        expected = F.avg_pool2d(images[b : b + 1, :, r : r + 32, c : c + 32], 2)
        torch.testing.assert_close(got[b : b + 1], expected, rtol=0, atol=1e-5)
    boxes = region_boxes(regions, SIZE, SIZE, P, (16, 48))
    assert boxes.tolist() == [[16.0, 0.0, 32.0], [32.0, 24.0, 32.0]]


def test_bad_regions_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"regions must be \(2, 2\) or \(2, 3\)"):
        resample_patches(_images(B=2), torch.zeros(2, 4), P)
    with pytest.raises(ValueError, match="scale_range"):
        resample_patches(_images(B=2), torch.zeros(2, 3), P)
    with pytest.raises(ValueError, match="does not fit"):
        resample_patches(_images(B=2), torch.zeros(2, 3), P, scale_range=(16, 100))
    with pytest.raises(ValueError, match="crop='resample'"):
        GFNetConfig(backbone="resnet18", patch_scale="learned", crop="window")
    with pytest.raises(ValueError, match="scale_range"):
        GFNetConfig(backbone="resnet18", patch_scale="learned", scale_range=(96, 300))
    with pytest.raises(ValueError, match="patch_scale must be one of"):
        GFNetConfig(backbone="resnet18", patch_scale="zoom")


# ----------------------------------------------------------------------------- the model
def test_a_fixed_scale_model_still_reads_the_window_crop_bit_for_bit() -> None:
    model, images = _model().eval(), _images()
    assert model.config.crop == "window" and model.config.action_dims == 2
    locations = torch.rand(4, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.view(images, locations), crop_patches(images, locations, 32))


def test_a_learned_scale_model_chooses_three_numbers_per_step_and_reads_that_region() -> None:
    model, images = _model(patch_scale="learned").eval(), _images()
    assert model.config.crop == "resample" and model.config.scale_range == (32, SIZE)
    with torch.no_grad():
        out = model(images)
        sampled = model(images, locations="sample")
    assert out.locations.shape == (2, 4, 3) and sampled.locations.shape == (2, 4, 3)
    assert sampled.log_probs.shape == (2, 4)  # PPO's Gaussian covers the scale too
    regions = out.locations[0]
    expected = resample_patches(images, regions, 32, scale_range=(32, SIZE))
    assert torch.equal(model.view(images, regions), expected)
    random = model(images, locations="random").locations
    assert random.shape == (2, 4, 3) and 0 <= float(random.min()) and float(random.max()) <= 1


def test_multiply_adds_do_not_depend_on_the_region_side() -> None:
    fixed, learned = _model(), _model(patch_scale="learned")
    # only π's last layer grows by one output: 1024 hidden units (the MLP trunk) per focus step
    assert [b - a for a, b in zip(fixed.madds(), learned.madds())] == [0, 1024, 2048]
    learned.eval()
    images = _images(B=1)
    _, state = learned.step(images, 0, None)
    counted = []
    for sigma in (0.0, 0.5, 1.0):
        with FlopCounterMode(display=False) as counter:
            learned.step(images, 1, state, locations=torch.tensor([[0.2, 0.7, sigma]]))
        counted.append(counter.get_total_flops())
    assert counted[0] == counted[1] == counted[2] > 0


def test_the_loss_reaches_pi_through_the_resampling_crop_and_not_through_the_window() -> None:
    from glancefocus.training.losses import deep_supervision_loss

    targets = torch.tensor([0, 1, 2, 3])
    for crop, reaches in (("resample", True), ("window", False)):
        model = _model(crop=crop).eval()  # eval: no dropout, the same function twice
        loss = deep_supervision_loss(model(_images(), locations="mean", need_aux=True), targets, 1.0)
        loss.backward()
        grad = model.policy.actor.weight.grad
        assert (grad is not None and float(grad.abs().sum()) > 0) == reaches, crop
        # π reads detached feature maps: its regions, given as constants, leave fG's gradient as it was
        through_pi = [p.grad.clone() for p in model.global_encoder.parameters()]
        model.zero_grad()
        with torch.no_grad():
            regions = model(_images()).locations
        deep_supervision_loss(model(_images(), locations=regions, need_aux=True), targets, 1.0).backward()
        for a, p in zip(through_pi, model.global_encoder.parameters()):
            torch.testing.assert_close(a, p.grad, rtol=0, atol=1e-6)


def test_explore_replaces_pi_by_random_regions_for_the_marked_images_only() -> None:
    model, images = _model(patch_scale="learned").eval(), _images()
    explore = torch.tensor([True, False, True, False])
    with torch.no_grad():
        mean = model(images).locations
        mixed = model(images, explore=explore).locations
    assert torch.equal(mixed[:, ~explore], mean[:, ~explore])
    assert not torch.isclose(mixed[:, explore], mean[:, explore]).any()


def test_region_pixels_are_what_each_crop_reads() -> None:
    from glancefocus.models.patches import patch_corners

    locations = torch.tensor([[[0.3, 0.9]], [[1.0, 0.0]]])
    window = region_pixels(_model(), locations, SIZE, SIZE)
    assert window[..., :2].tolist() == patch_corners(locations.view(-1, 2), SIZE, SIZE, 32).view(2, 1, 2).float().tolist()
    assert window[..., 2].tolist() == [[32.0], [32.0]]
    regions = torch.tensor([[[0.5, 0.5, 1.0]]])
    assert region_pixels(_model(patch_scale="learned"), regions, SIZE, SIZE).tolist() == [[[0.0, 0.0, 64.0]]]


def test_differentiable_training_needs_the_differentiable_crop() -> None:
    from glancefocus.training.stages import STAGES

    class Setup:  # the stage refuses before it reads anything else
        model = _model()
        config = TrainConfig(policy_training="differentiable").for_model(model.config)

    with pytest.raises(ValueError, match="crop='resample'"):
        STAGES["end2end"].build(Setup())


def test_regions_are_clamped_and_boxed_whatever_the_leading_dimensions() -> None:
    # H = W = 64, P = 16, scale range (8, 48): sides 8 + σ·40; corners l · (64 − s).
    # Out-of-range numbers are clamped: l = -0.5 is the edge 0, 1.5 the far edge; σ = -1 is the
    # smallest side 8, σ = 2 the largest 48.  Step-first (T-1, B, 3) regions box the same.
    regions = torch.tensor([[[-0.5, 1.5, -1.0], [0.5, 0.25, 2.0]], [[1.5, -0.5, 0.5], [0.0, 1.0, 0.0]]])
    boxes = region_boxes(regions, SIZE, SIZE, P, (8, 48))
    assert boxes.tolist() == [[[0.0, 56.0, 8.0], [8.0, 4.0, 48.0]], [[36.0, 0.0, 28.0], [0.0, 56.0, 8.0]]]
    fixed = region_boxes(regions[..., :2], SIZE, SIZE, P)  # no scale column: every side is P
    assert fixed.tolist() == [[[0.0, 48.0, 16.0], [24.0, 12.0, 16.0]], [[48.0, 0.0, 16.0], [0.0, 48.0, 16.0]]]
    with pytest.raises(ValueError, match=r"^regions with a scale column \(B, 3\) need a scale_range \(lo, hi\)$"):
        region_boxes(regions, SIZE, SIZE, P)


def test_zooming_in_at_the_border_repeats_the_edge_pixel() -> None:
    # A side of 8 < P = 16 at the top-left corner: the outer output pixels sample a quarter
    # pixel outside the image (x = ((2·0 + 1)/16 − 1)·8/2 + 4 − 0.5 = −0.25).  Border padding
    # repeats the edge, so a constant image stays constant (zero padding would give 0.75).
    images = torch.ones(1, 1, SIZE, SIZE)
    patch = resample_patches(images, torch.tensor([[0.0, 0.0, 0.0]]), P, scale_range=(8, 48))
    assert torch.equal(patch, torch.ones(1, 1, P, P))


def test_resampling_keeps_the_images_dtype_and_checks_their_shape() -> None:
    images = _images(B=2)
    regions = torch.tensor([[0.3, 0.6, 0.5], [1.0, 0.0, 0.2]])
    single = resample_patches(images, regions, P, scale_range=(8, 48))
    double = resample_patches(images.double(), regions, P, scale_range=(8, 48))
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"^images must be \(B, C, H, W\), got shape \(3, 64, 64\)$"):
        resample_patches(images[0], regions[:1], P, scale_range=(8, 48))
