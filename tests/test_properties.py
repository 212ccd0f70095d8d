"""Property-based tests (hypothesis) over shapes, locations, patch sizes and T."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, assume, given, settings
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


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 4), patch=st.sampled_from([16, 24, 32]), batch=st.integers(1, 6), seed=st.integers(0, 1000))
def test_early_exit_equals_all_steps(T: int, patch: int, batch: int, seed: int) -> None:
    torch.manual_seed(seed)
    model = GFNet(GFNetConfig(backbone="resnet18", num_classes=4, patch_size=patch, T=T, image_size=48)).eval()
    images = torch.randn(batch, 3, 48, 48)
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
    assert torch.equal(result.labels, probs.argmax(dim=2).gather(0, expected.view(1, -1) - 1)[0])
