"""Property-based tests (hypothesis) over shapes, locations, patch sizes and T."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from reference import reference_crop, reference_thresholds

from glancefocus import GFNet, GFNetConfig, crop_patches, exit_fractions, exit_steps, find_thresholds

locations = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 5),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    data=st.data(),
)
def test_crop_equals_slicing(batch: int, height: int, width: int, data) -> None:
    patch = data.draw(st.integers(1, min(height, width)))
    locs = torch.tensor(data.draw(st.lists(st.tuples(locations, locations), min_size=batch, max_size=batch)))
    images = torch.randn(batch, 2, height, width)
    assert torch.equal(crop_patches(images, locs, patch), reference_crop(images, locs, patch))


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 6), N=st.integers(1, 60), C=st.integers(2, 5), q=st.floats(0.05, 1.95), seed=st.integers(0, 10_000),
       ties=st.booleans())
def test_thresholds_match_the_reference_loop(T: int, N: int, C: int, q: float, seed: int, ties: bool) -> None:
    logits = torch.randn(T, N, C, generator=torch.Generator().manual_seed(seed))
    if ties:
        logits = logits.round()  # many equal confidences
    probs = logits.softmax(dim=2)
    fractions = exit_fractions(q, T)
    assert find_thresholds(probs, fractions).tolist() == reference_thresholds(probs, fractions)


# Early exit equals the all-steps evaluation: the GRU and the cascade classifier (whose step 1
# answers with fG's head), one to four steps, square and non-square images.  The @examples
# always run; the slow variant draws many more.
EARLY_EXIT = dict(
    backbone=st.sampled_from(["resnet18", "mobilenetv3_small_050"]),  # GRU fC, cascade fC
    T=st.integers(1, 4),
    patch=st.sampled_from([16, 24, 32]),
    size=st.sampled_from([(48, 48), (48, 64), (64, 40)]),  # (H, W)
    batch=st.integers(1, 6),
    seed=st.integers(0, 1000),
)
_MODELS: dict[tuple, GFNet] = {}


def _early_exit_equals_all_steps(backbone: str, T: int, patch: int, size: tuple[int, int], batch: int, seed: int) -> None:
    key = (backbone, T, patch, seed % 4)  # a few random initialisations per configuration, built once
    if key not in _MODELS:
        torch.manual_seed(seed % 4)
        _MODELS[key] = GFNet(GFNetConfig(backbone=backbone, num_classes=4, patch_size=patch, T=T, image_size=48)).eval()
    model = _MODELS[key]
    images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed)) * 2
    with torch.inference_mode():
        probs = model(images).logits.softmax(dim=2)
    confidence = probs.max(dim=2).values
    # Thresholds halfway between two observed confidences, so that exits are mixed. Not at one:
    # predict runs smaller batches, whose last-bit differences would decide a tie either way.
    ranked = confidence[:-1].sort(dim=1).values  # (T-1, B)
    if batch == 1:
        between = ranked[:, 0]  # one image: predict's batch is the all-steps batch, no tie to fear
    else:
        low, high = ranked[:, (batch - 1) // 2], ranked[:, (batch - 1) // 2 + 1]
        assume(T == 1 or bool((high - low).min() > 1e-5))
        between = (low + high) / 2
    thresholds = torch.cat([between, torch.tensor([-math.inf])])
    expected = exit_steps(confidence, thresholds)
    result = model.predict(images, thresholds)
    assert torch.equal(result.exit_step, expected)
    assert result.locations.shape == (T - 1, batch, 2)  # none for a one-step model
    chosen = expected.view(1, -1) - 1
    assert torch.equal(result.labels, probs.argmax(dim=2).gather(0, chosen)[0])
    torch.testing.assert_close(result.probs, probs.gather(0, chosen[..., None].expand(1, -1, 4))[0], rtol=0, atol=1e-5)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**EARLY_EXIT)
@example(backbone="mobilenetv3_small_050", T=3, patch=24, size=(48, 64), batch=6, seed=1)  # cascade, non-square
@example(backbone="resnet18", T=4, patch=16, size=(64, 40), batch=5, seed=6)  # GRU, non-square
@example(backbone="mobilenetv3_small_050", T=1, patch=32, size=(48, 48), batch=3, seed=3)  # one step: no exit to choose
@example(backbone="resnet18", T=1, patch=16, size=(48, 64), batch=1, seed=4)
def test_early_exit_equals_all_steps(**kw) -> None:
    _early_exit_equals_all_steps(**kw)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**EARLY_EXIT)
def test_early_exit_equals_all_steps_many(**kw) -> None:
    _early_exit_equals_all_steps(**kw)
