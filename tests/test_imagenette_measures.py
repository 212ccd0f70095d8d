"""The reproduction's own measures (``scripts/imagenette``): each encoder's head on its input
alone, step 2's grid summarised with its place chosen on the held-out images, the 10-way head
cut from the ImageNet one."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import tiny_model
from torch.utils.data import DataLoader, TensorDataset

from glancefocus.distributed import World
from glancefocus.evaluation import collect_probs
from scripts.imagenette.grid import grid_bound
from scripts.imagenette.heads import encoder_probs, restrict_head


def test_encoder_head_reads_each_input_alone() -> None:
    """Step 1 is fG's head on the glance, step t fL's head on patch t alone, whatever fC has
    seen before; the random patches are those collect_probs draws from the same generator."""
    torch.manual_seed(0)
    model = tiny_model(T=3, num_classes=3).eval()
    images = torch.randn(5, 3, 64, 64)
    loader = DataLoader(TensorDataset(images, torch.zeros(5)), batch_size=2)
    probs, _ = encoder_probs(model, loader, World(), patches="random", generator=torch.Generator().manual_seed(0))
    draws, alone = torch.Generator().manual_seed(0), []
    with torch.inference_mode():
        for batch in images.split(2):
            where = torch.rand(2, len(batch), 2, generator=draws)
            steps = [model.global_encoder.head(model.global_encoder(model.view(batch))[1])]
            steps += [model.local_encoder.head(model.local_encoder(model.view(batch, w))[1]) for w in where]
            alone.append(torch.stack(steps))
    torch.testing.assert_close(probs, torch.cat(alone, dim=1).softmax(2))
    answers, _ = collect_probs(model, loader, World(), patches="random", generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(answers[1:], probs[1:])  # fC reads the steps together
    learned, _ = encoder_probs(model, loader, World(), patches="learned")
    torch.testing.assert_close(learned[0], probs[0])  # the glance is the glance, wherever the patches go
    with pytest.raises(ValueError, match="unknown patches 'fixed'"):
        encoder_probs(model, loader, World(), patches="fixed")


def test_restrict_head_keeps_the_chosen_imagenet_rows() -> None:
    net = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=1000)
    weight, bias = net.get_classifier().weight.detach().clone(), net.get_classifier().bias.detach().clone()
    restrict_head(net, [7, 3])
    assert torch.equal(net.get_classifier().weight, weight[[7, 3]]) and torch.equal(net.get_classifier().bias, bias[[7, 3]])
    with pytest.raises(ValueError, match="1000-way"):
        restrict_head(net, [0])


def test_grid_bound_picks_its_place_on_the_heldout_images() -> None:
    heldout = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1]], dtype=torch.bool)  # place 2 is best there
    focus = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    confidence = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.9, 0.2, 0.2, 0.9], [0.1, 0.1, 0.9, 0.1], [0.2, 0.9, 0.2, 0.2]])
    glance = torch.tensor([0, 1, 0, 0], dtype=torch.bool)
    bound = grid_bound(heldout, glance, focus, confidence, grid=2)
    assert bound["best_place"] == {"location": [1.0, 0.0], "accuracy": 25.0}  # not val's best place, place 0
    assert bound["mean_place"] == 43.75 and bound["accuracy_by_place"] == [[100.0, 25.0], [25.0, 25.0]]
    # the most confident places are 1, 3, 2, 1: wrong, wrong, wrong, right (place 0 was right on all)
    assert bound["most_confident_place"] == 25.0
    focus[0] = False
    bound = grid_bound(heldout, glance, focus, confidence, grid=2)
    assert bound["best_place_per_image"] == 75.0 and bound["oracle_exit_within_2"] == 100.0
