"""Focus patches and the glance input (SPEC "The model")."""

from __future__ import annotations


import pytest
import torch

from reference import reference_crop

from glancefocus import crop_patches, glance_resize


def unambiguous_locations(B: int, H: int, W: int, P: int, g: torch.Generator) -> torch.Tensor:
    """Uniform float32 locations, steering clear of values where l·(H−P) is within float32
    rounding of an integer (there float32 and float64 products may floor differently)."""
    locs = torch.rand(B, 2, generator=g)
    span = torch.tensor([H - P, W - P], dtype=torch.float64)
    scaled = locs.double() * span
    near = (scaled - scaled.round()).abs() < 1e-4
    locs[near] = (locs[near] + 1e-3).clamp(0, 1)
    return locs


@pytest.mark.parametrize(
    "B,C,H,W,P",
    [
        (1, 3, 64, 64, 32),
        (5, 3, 64, 64, 32),
        (7, 3, 224, 224, 96),
        (4, 1, 50, 80, 17),  # non-square, odd patch
        (6, 2, 90, 33, 33),  # non-square, patch = W (no room sideways)
        (3, 3, 48, 48, 48),  # patch = whole image
        (8, 3, 20, 31, 1),
    ],
)
@pytest.mark.parametrize("method", [None, "gather", "slices"])
def test_crop_patches_equals_per_sample_slicing(B, C, H, W, P, method):
    g = torch.Generator().manual_seed(B * 1000 + H + W + P)
    images = torch.randn(B, C, H, W, generator=g)
    for trial in range(5):
        locations = unambiguous_locations(B, H, W, P, g)
        if trial == 1:
            locations[0] = torch.tensor([0.0, 0.0])
            locations[-1] = torch.tensor([1.0, 1.0])
        if trial == 2:
            locations[:, 0] = 1.0
            locations[:, 1] = 0.0
        if trial == 3:
            locations[:, 0] = 0.0
            locations[:, 1] = 1.0
        out = crop_patches(images, locations, P, method=method)
        assert out.shape == (B, C, P, P)
        assert torch.equal(out, reference_crop(images, locations, P))


def test_crop_patches_corners_and_centre():
    H = W = 64
    P = 32
    images = torch.arange(H * W, dtype=torch.float32).view(1, 1, H, W).repeat(5, 1, 1, 1)
    locations = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    out = crop_patches(images, locations, P)
    # top-left pixel of each window is image[row, col] = row * W + col
    corners = [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]
    for b, (r, c) in enumerate(corners):
        assert out[b, 0, 0, 0].item() == r * W + c
        assert out[b, 0, -1, -1].item() == (r + P - 1) * W + (c + P - 1)
    # rows are the first coordinate, columns the second
    out = crop_patches(images[:1], torch.tensor([[0.25, 0.75]]), P)
    assert out[0, 0, 0, 0].item() == 8 * W + 24


@pytest.mark.parametrize("method", ["gather", "slices"])
def test_crop_patches_keeps_dtype_and_gradient(method):
    images = torch.randn(2, 3, 40, 40, dtype=torch.float64, requires_grad=True)
    out = crop_patches(images, torch.tensor([[0.1, 0.9], [0.6, 0.3]]), 16, method=method)
    assert out.dtype == torch.float64
    out.sum().backward()
    # each window's pixels receive exactly one unit of gradient; everything else none
    assert images.grad.sum().item() == 2 * 3 * 16 * 16
    assert set(images.grad.unique().tolist()) <= {0.0, 1.0}


def test_crop_patches_rejects_bad_inputs():
    images = torch.randn(2, 3, 32, 48)
    with pytest.raises(ValueError):
        crop_patches(images, torch.rand(2, 2), 33)  # larger than the shorter side
    with pytest.raises(ValueError):
        crop_patches(images, torch.rand(2, 2), 64)
    with pytest.raises(ValueError):
        crop_patches(images, torch.rand(3, 2), 16)  # wrong batch
    with pytest.raises(ValueError):
        crop_patches(images, torch.rand(2, 3), 16)  # wrong coordinate count
    with pytest.raises(ValueError):
        crop_patches(images, torch.rand(2), 16)
    with pytest.raises(ValueError):
        crop_patches(images[0], torch.rand(1, 2), 16)  # not a batch
    with pytest.raises(ValueError, match="crop method"):
        crop_patches(images, torch.rand(2, 2), 16, method="loop")
    assert crop_patches(images[:0], torch.rand(0, 2), 16, method="slices").shape == (0, 3, 16, 16)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("H,W,size", [(224, 224, 96), (64, 64, 32), (50, 80, 24), (32, 32, 48)])
def test_glance_resize_output(H, W, size, interpolation):
    images = torch.randn(3, 3, H, W)
    out = glance_resize(images, size, interpolation=interpolation)
    assert out.shape == (3, 3, size, size)
    # a constant image stays constant; channels and samples are not mixed
    flat = torch.ones(2, 3, H, W) * torch.tensor([0.25, -1.0, 2.0]).view(1, 3, 1, 1)
    out = glance_resize(flat, size, interpolation=interpolation)
    assert torch.allclose(out, flat[:, :, :1, :1].expand_as(out), atol=1e-5)


def test_glance_resize_is_a_downscale_of_the_whole_image():
    # Left half 0, right half 1: after resizing, the left part stays ~0 and the right ~1.
    images = torch.zeros(1, 1, 128, 128)
    images[..., 64:] = 1.0
    out = glance_resize(images, 32)
    assert out[..., :12].abs().max() < 1e-3
    assert (out[..., 20:] - 1).abs().max() < 1e-3
    assert out.mean().item() == pytest.approx(0.5, abs=1e-3)


def test_error_messages_name_the_problem():
    images = torch.randn(2, 3, 32, 48)
    with pytest.raises(ValueError, match=r"^images must be \(B, C, H, W\), got shape \(3, 32, 48\)$"):
        crop_patches(images[0], torch.rand(1, 2), 16)
    with pytest.raises(ValueError, match=r"^locations must be \(2, 2\) for a batch of 2, got \(3, 2\)$"):
        crop_patches(images, torch.rand(3, 2), 16)
    with pytest.raises(ValueError, match=r"^patch_size 33 does not fit in images of size 32x48: choose 1 <= patch_size <= 32$"):
        crop_patches(images, torch.rand(2, 2), 33)
    with pytest.raises(ValueError, match=r"^unknown glance resize method 'nearest': use 'antialias' or 'align_corners'$"):
        glance_resize(images, 16, method="nearest")


def test_locations_outside_the_unit_square_are_clamped_to_the_edges():
    from glancefocus.models.patches import patch_corners

    # H = 10, W = 12, P = 4: corners floor(l * (6, 8)); -0.5 is the top/left edge, 1.5 the
    # bottom/right one (0 and 8, as for l = 0 and 1), never a window outside the image.
    locations = torch.tensor([[-0.5, 1.5], [1.5, -0.5], [0.5, 0.5]])
    assert patch_corners(locations, 10, 12, 4).tolist() == [[0, 8], [6, 0], [3, 4]]
    images = torch.arange(2 * 10 * 12, dtype=torch.float32).view(2, 1, 10, 12)
    out = crop_patches(images, locations[:2], 4)
    assert torch.equal(out[0], images[0, :, 0:4, 8:12]) and torch.equal(out[1], images[1, :, 6:10, 0:4])


def test_glance_resize_antialiases_and_align_corners_keeps_the_corners():
    # Vertical stripes 1 0 1 0 ... of width 12 resized to 4 (by 3): plain interpolation samples
    # the centre pixels 1, 4, 7, 10 and keeps full contrast (0 1 0 1, aliasing); the
    # anti-aliased resize averages over each 3-pixel cell and stays near the mean 0.5.
    stripes = torch.zeros(1, 1, 12, 12)
    stripes[..., 0::2] = 1.0
    smooth = glance_resize(stripes, 4)
    assert float(smooth.max() - smooth.min()) < 0.5
    plain = torch.nn.functional.interpolate(stripes, size=(4, 4), mode="bicubic", align_corners=False)
    assert float(plain.max() - plain.min()) > 0.99
    # The release's resize (align_corners=True) puts output corners on input corners: a
    # random image's four corner pixels come through exactly (bicubic weights 1, 0, 0, 0).
    images = torch.rand(2, 3, 13, 17, generator=torch.Generator().manual_seed(0))
    out = glance_resize(images, 6, method="align_corners")  # samples 0, 2.4, ..., 12: between pixels
    assert out.shape == (2, 3, 6, 6)
    for r, c, R, C in ((0, 0, 0, 0), (0, -1, 0, -1), (-1, 0, -1, 0), (-1, -1, -1, -1)):
        torch.testing.assert_close(out[..., r, c], images[..., R, C], rtol=0, atol=1e-6)
    # and it is not the anti-aliased resize
    assert not torch.allclose(out, glance_resize(images, 6), atol=1e-3)
    bilinear = glance_resize(images, 6, interpolation="bilinear", method="align_corners")
    torch.testing.assert_close(bilinear[..., 0, 0], images[..., 0, 0], rtol=0, atol=1e-6)
    assert not torch.allclose(bilinear, out, atol=1e-3)
