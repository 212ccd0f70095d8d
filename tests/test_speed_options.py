"""The speed options of training (``--amp bf16``, ``--compile``) compute what eager fp32 does,
within a tolerance, and the frozen glance builds no autograd graph without being told."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F

import glancefocus.training.pipeline as pipeline
from glancefocus import GFNet, GFNetConfig
from glancefocus.config import DataConfig, TrainConfig
from glancefocus.data.sources import load_data
from glancefocus.distributed import World
from glancefocus.distributed import autocast
from glancefocus.training.trainer import Run
from glancefocus.training.pipeline import fit

from conftest import make_image_folder

CPU = torch.device("cpu")


def _model() -> GFNet:
    torch.manual_seed(0)
    # a tiny EfficientNet with the light families' cascade fC and conv π
    config = GFNetConfig(backbone="test_efficientnet", num_classes=3, patch_size=32, T=3, image_size=64,
                         classifier="cascade", policy_trunk="conv", drop_rate=0.0, drop_path_rate=0.0)
    return GFNet(config).to(memory_format=torch.channels_last)


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 64, 64, generator=g), torch.rand(2, 8, 2, generator=g), torch.randint(0, 3, (8,), generator=g)


def _gradients(model: GFNet, images, where, targets, amp: str = "none") -> list[torch.Tensor]:
    """Stage I's loss on fixed patches, fG frozen as for EfficientNet: the gradients of fL and fC."""
    model.train()
    model.global_encoder.requires_grad_(False).eval()
    model.zero_grad(set_to_none=True)
    with autocast(amp, CPU):
        out = model(images, locations=where, need_aux=True)
        flat = targets.repeat(model.T)
        loss = F.cross_entropy(out.logits.flatten(0, 1).float(), flat) + F.cross_entropy(out.aux_logits.flatten(0, 1).float(), flat)
    loss.backward()
    return [p.grad for p in (*model.local_encoder.parameters(), *model.classifier.parameters()) if p.grad is not None]


def test_bf16_autocast_agrees_with_fp32() -> None:
    model, (images, where, targets) = _model().eval(), _inputs()
    with torch.inference_mode():
        fp32 = F.softmax(model(images, locations=where).logits, -1)
        with autocast("bf16", CPU):
            bf16 = F.softmax(model(images, locations=where).logits.float(), -1)
    torch.testing.assert_close(bf16, fp32, atol=2e-2, rtol=0)
    # and autocast did run the encoders in bf16 (agreeing by doing nothing would pass above)
    seen = []
    hook = model.local_encoder.register_forward_hook(lambda module, args, out: seen.append(out[1].dtype))
    with torch.inference_mode(), autocast("bf16", CPU):
        model(images, locations=where)
    with torch.inference_mode():
        model(images, locations=where)
    hook.remove()
    assert seen == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]  # two focus steps each
    reference, low = _gradients(model, images, where, targets), _gradients(model, images, where, targets, "bf16")
    cosine = F.cosine_similarity(torch.cat([g.flatten() for g in low]), torch.cat([g.flatten() for g in reference]), dim=0)
    assert cosine > 0.98


def test_compiled_encoders_agree_with_eager(tmp_path: Path, monkeypatch) -> None:
    """``TrainConfig(compile=True)`` compiles both encoders in ``fit`` (in place), and the
    compiled model computes what the eager one does."""
    model, (images, where, targets) = _model(), _inputs()
    eager = copy.deepcopy(model)
    data = DataConfig(str(make_image_folder(tmp_path / "data", classes=3, per_class=4)), holdout=0.25)
    monkeypatch.setattr(pipeline.Trainer, "fit", lambda self, plan: None)  # compiling is all we need of fit
    fit(model, load_data(data, model.config, seed=0), ["stage1"], config=TrainConfig(compile=True, batch_size=4),
        run=Run(tmp_path / "run", World(), quiet=True), data=data)
    assert all(e.model._compiled_call_impl is not None for e in (model.global_encoder, model.local_encoder))
    assert eager.global_encoder.model._compiled_call_impl is None
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images, locations=where).logits, eager.eval()(images, locations=where).logits,
                                   atol=1e-4, rtol=1e-4)
    for a, b in zip(_gradients(model, images, where, targets), _gradients(eager, images, where, targets)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_frozen_glance_builds_no_graph() -> None:
    """fG's parameters are frozen and the images need no gradient, so autograd records
    nothing for the glance: an explicit no_grad would change nothing (bench_train_step.py)."""
    model, (images, where, _) = _model(), _inputs()
    model.train()
    model.global_encoder.requires_grad_(False).eval()
    out, state = model.step(images, 0, None, need_aux=True)
    assert out.logits.grad_fn is None and out.aux_logits.grad_fn is None and state.classifier.grad_fn is None
    focus, _ = model.step(images, 1, state, locations=where[0], need_aux=True)
    assert focus.logits.grad_fn is not None  # fL and fC still learn
