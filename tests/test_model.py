"""GFNet itself (SPEC "The model", "Evaluation"): recipes, components per family, MAdds,
which parameters each training stage reaches, and early-exit inference."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import glancefocus
from glancefocus import GFNet, GFNetConfig, exit_steps
from glancefocus import TABLE2 as TABLE2_RECIPES
from glancefocus.models.classifier import CascadeClassifier, GRUClassifier
from glancefocus.training.ppo import PolicyReplay, discounted_returns, ppo_loss, step_rewards

from conftest import tiny_model as tiny

FAMILY = {  # SPEC table: (fC, π trunk, glance interpolation)
    "resnet": ("gru", "mlp", "bicubic"),
    "densenet": ("gru", "mlp", "bilinear"),
    "regnet": ("gru", "conv", "bilinear"),
    "mobilenetv3": ("cascade", "conv", "bicubic"),
    "efficientnet": ("cascade", "conv", "bicubic"),
}
TABLE2 = {  # name -> (patch, T, image size)
    "resnet50-96-t5": (96, 5, 224),
    "resnet50-128-t5": (128, 5, 224),
    "densenet121-96-t5": (96, 5, 224),
    "densenet169-96-t5": (96, 5, 224),
    "densenet201-96-t5": (96, 5, 224),
    "regnety_006-96-t5": (96, 5, 224),
    "regnety_008-96-t5": (96, 5, 224),
    "regnety_016-96-t5": (96, 5, 224),
    "mobilenetv3_large_100-96-t3": (96, 3, 224),
    "mobilenetv3_large_100-128-t3": (128, 3, 224),
    "mobilenetv3_large_125-128-t3": (128, 3, 224),
    "efficientnet_b2-128-t4": (128, 4, 260),
    "efficientnet_b3-128-t4": (128, 4, 300),
    "efficientnet_b3-144-t4": (144, 4, 300),
}




def family(backbone: str) -> str:
    for prefix in FAMILY:
        if backbone.startswith(prefix):
            return prefix
    raise AssertionError(backbone)


def params(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return list(module.named_parameters())


# ----------------------------------------------------------------------------- helpers
def check_architecture(model: GFNet, name: str) -> None:
    """Classifier and policy of ``model`` are those of the SPEC table for its family."""
    cfg = model.config
    fc_kind, pi_kind, interp = FAMILY[family(cfg.backbone)]
    assert cfg.interpolation == interp
    if fc_kind == "gru":
        assert isinstance(model.classifier, GRUClassifier), name
        assert model.classifier.cell.hidden_size == 1024
        assert model.classifier.fc.in_features == 1024
        assert model.classifier.fc.out_features == cfg.num_classes
    else:
        assert isinstance(model.classifier, CascadeClassifier), name
        features = model.global_encoder.head.in_features
        # T - 1 linear layers of size tF x C, t = 2..T; step 1 is fG's own head
        assert [(l.in_features, l.out_features) for l in model.classifier.layers] == [
            (t * features, cfg.num_classes) for t in range(2, cfg.T + 1)
        ]
    trunk = model.policy.trunk
    linears = [m for m in trunk if isinstance(m, nn.Linear)]
    if pi_kind == "mlp":
        assert isinstance(trunk[0], nn.Flatten), name
        assert [l.out_features for l in linears] == [2048, 1024]
        assert model.policy.gru.hidden_size == 1024
    else:
        convs = [m for m in trunk if isinstance(m, nn.Conv2d)]
        assert isinstance(trunk[0], nn.Conv2d), name
        assert len(convs) == 1 and convs[0].out_channels == 32 and convs[0].kernel_size == (1, 1)
        assert [l.out_features for l in linears] == [256]
        assert model.policy.gru.hidden_size == 256
    assert model.policy.actor.out_features == 2
    assert model.policy.critic.out_features == 1


def check_output(model: GFNet, images: torch.Tensor) -> None:
    cfg = model.config
    B = images.shape[0]
    out = model(images)
    assert out.logits.shape == (cfg.T, B, cfg.num_classes)
    assert out.locations.shape == (cfg.T - 1, B, 2)
    if images.device.type != "meta":
        assert torch.isfinite(out.logits).all()
        assert ((out.locations >= 0) & (out.locations <= 1)).all()
    madds = model.madds()
    assert len(madds) == cfg.T
    assert all(b > a for a, b in zip(madds, madds[1:]))


# ----------------------------------------------------------------------------- recipes
def test_recipe_names_and_sizes():
    assert set(TABLE2_RECIPES) == set(TABLE2)
    for name, (patch, T, size) in TABLE2.items():
        cfg = TABLE2_RECIPES[name].model
        assert (cfg.patch_size, cfg.T, cfg.image_size) == (patch, T, size), name
        fc_kind, pi_kind, interp = FAMILY[family(cfg.backbone)]
        r = cfg.resolved()
        assert (r.classifier, r.policy_trunk, r.interpolation) == (fc_kind, pi_kind, interp), name
        assert r.classifier_hidden == {"gru": 1024, "cascade": 0}[fc_kind], name
        assert r.policy_hidden == {"mlp": 1024, "conv": 256}[pi_kind], name


def test_widths_follow_the_kind_asked_for_not_the_family():
    # SPEC "The model": π's GRU is 1024 wide after the MLP trunk and 256 after the conv trunk
    assert GFNetConfig(backbone="regnety_006", policy_trunk="mlp").resolved().policy_hidden == 1024
    assert GFNetConfig(backbone="resnet50", policy_trunk="conv").resolved().policy_hidden == 256
    assert GFNetConfig(backbone="efficientnet_b0", classifier="gru").resolved().classifier_hidden == 1024
    assert GFNetConfig(backbone="resnet50", policy_trunk="conv", policy_hidden=64).resolved().policy_hidden == 64


@pytest.mark.parametrize("name", list(TABLE2))
def test_every_recipe_forward_real(name):
    """Every Table 2 recipe: SPEC components, output shapes for 2 random full-size images
    (eval, learned policy; and training, random patches with deep supervision), MAdds."""
    torch.manual_seed(0)
    model = GFNet.from_recipe(name, num_classes=10).eval()
    size = TABLE2[name][2]
    check_architecture(model, name)
    with torch.no_grad():
        check_output(model, torch.randn(2, 3, size, size))
    model.train()
    out = model(torch.randn(2, 3, size, size), locations="random", need_aux=True)
    assert out.aux_logits.shape == out.logits.shape


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv3_small_050"])
def test_T7_both_classifier_kinds(backbone):
    model = tiny(backbone, T=7).eval()
    kind = GRUClassifier if backbone == "resnet18" else CascadeClassifier
    assert isinstance(model.classifier, kind)
    with torch.no_grad():
        check_output(model, torch.randn(2, 3, 64, 64))
    model.train()
    out = model(torch.randn(3, 3, 64, 64), locations="random", need_aux=True)
    assert out.logits.shape == out.aux_logits.shape == (7, 3, 10)


def test_T1_is_the_glance_alone():
    model = tiny(T=1).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
        # fC on fG's pooled features of the glance: the image resized to the 32 px patch size
        # (bicubic for ResNets, anti-aliased), with no state before it
        glance = F.interpolate(images, size=(32, 32), mode="bicubic", antialias=True, align_corners=False)
        expected, _ = model.classifier(model.global_encoder(glance)[1], None)
    assert out.logits.shape == (1, 2, 10)
    assert out.locations.shape == (0, 2, 2)
    torch.testing.assert_close(out.logits[0], expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- config errors
def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        GFNetConfig(T=0)
    with pytest.raises(ValueError):
        GFNetConfig(T=-3)
    with pytest.raises(ValueError):
        GFNetConfig(patch_size=224, image_size=224)
    with pytest.raises(ValueError):
        GFNetConfig(patch_size=256, image_size=224)
    GFNetConfig(patch_size=223, image_size=224)  # just fits


def test_unknown_recipe_suggests_close_names():
    with pytest.raises(ValueError, match="resnet50-96-t5"):
        GFNet.from_recipe("resnet50-96-t6", num_classes=10)
    with pytest.raises(ValueError, match="(?i)did you mean"):
        GFNet.from_recipe("densenet121-96", num_classes=10)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ValueError, match="resnet18") as info:
        GFNet(GFNetConfig(backbone="resnett18", num_classes=10, patch_size=32, image_size=64))
    assert "resnett18" in str(info.value)


# ----------------------------------------------------------------------------- MAdds
def _gru(inp: int, hidden: int) -> int:
    return 3 * (inp + hidden) * hidden


def encoder_madds(encoder: nn.Module, size: int, device: str = "cpu") -> int:
    """Multiply-adds of every Conv2d and Linear an encoder runs on one size×size image,
    counted by hand from the layer shapes (forward hooks), biases excluded."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * (module.in_channels // module.groups) * k
        else:
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in encoder.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            encoder(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
        encoder.train(was_training)
    return total


def policy_madds(model: GFNet) -> int:
    p = model.policy
    total = 0
    for m in p.trunk:
        if isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
        elif isinstance(m, nn.Conv2d):
            fmap = model.global_encoder(torch.zeros(1, 3, model.config.patch_size, model.config.patch_size))[0]
            total += fmap.shape[2] * fmap.shape[3] * m.in_channels * m.out_channels
    h = p.gru.hidden_size
    return total + _gru(p.gru.input_size, h) + h * 2 + h * 1


def test_madds_resnet50_96_against_paper():
    C = 1000
    with torch.device("meta"):
        model = GFNet.from_recipe("resnet50-96-t5", num_classes=C)
    madds = model.madds()
    assert len(madds) == 5
    fc = _gru(2048, 1024) + 1024 * C  # fC: GRUCell(2048 -> 1024) + Linear(1024 -> C)
    assert fc == 3 * (2048 + 1024) * 1024 + 1024 * C
    assert madds[0] == pytest.approx(0.753e9 + fc, rel=0.03)
    steps = [b - a for a, b in zip([0.0, *madds], madds)]
    assert all(s > 0 for s in steps)
    assert all(b > a for a, b in zip(madds, madds[1:]))
    # focus steps all cost the same: fL + π + fC, more than the glance by π's cost
    assert steps[1:] == [steps[1]] * 4
    # exactly: fG's convolutions + fC; then π + fL + fC
    with torch.device("meta"):
        enc = encoder_madds(model.local_encoder, 96, device="meta")
    assert madds[0] == enc + fc
    pi = 18432 * 2048 + 2048 * 1024 + _gru(1024, 1024) + 1024 * 3  # 2048×3×3 map flattened
    assert steps[1] == enc + pi + fc
    # and ResNet-50 at 224 is the 4.09 G of SPEC (its fc included)
    with torch.device("meta"):
        full = encoder_madds(model.global_encoder, 224, device="meta") + 2048 * 1000
    assert full == pytest.approx(4.09e9, rel=0.01)


def test_madds_densenet121_96_against_paper():
    with torch.device("meta"):
        model = GFNet.from_recipe("densenet121-96-t5", num_classes=1000)
    madds = model.madds()
    paper = [0.53e9, 1.08e9, 1.64e9, 2.2e9, 2.75e9]
    for got, want in zip(madds, paper):
        assert got == pytest.approx(want, rel=0.03)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv3_small_050", "regnety_002"])
def test_madds_equals_hand_count_tiny(backbone):
    T, C = 4, 10
    model = tiny(backbone, T=T, num_classes=C).eval()
    madds = model.madds()
    enc = encoder_madds(model.global_encoder, 32)
    assert enc == encoder_madds(model.local_encoder, 32)
    pi = policy_madds(model)
    if isinstance(model.classifier, GRUClassifier):
        F_ = model.classifier.cell.input_size
        fc = [_gru(F_, 1024) + 1024 * C] * T
        first = enc + fc[0]
    else:
        F_ = model.global_encoder.head.in_features
        fc = [0] + [t * F_ * C for t in range(2, T + 1)]
        first = enc + F_ * C  # fG's own head is step 1's classifier
    expected = [first]
    for t in range(1, T):
        expected.append(expected[-1] + pi + enc + fc[t])
    assert madds == [float(x) for x in expected]
    # madds() leaves the mode as it was
    assert not model.training
    model.train()
    assert model.madds() == madds
    assert model.training


# ----------------------------------------------------------------------------- forward modes
def test_forward_location_modes():
    model = tiny(T=4).eval()
    images = torch.randn(4, 3, 64, 64)
    given = torch.rand(3, 4, 2)
    with torch.no_grad():
        out = model(images, locations=given)
        assert torch.equal(out.locations, given)
        # deterministic given the locations
        out2 = model(images, locations=given.clone())
        assert torch.equal(out.logits, out2.logits)
        rnd = model(images, locations="random")
        assert ((rnd.locations >= 0) & (rnd.locations <= 1)).all()
        # uniform on [0, 1]: mean 1/2, standard deviation 1/sqrt(12) = 0.289, over 128 images
        many = torch.randn(128, 3, 64, 64)
        uniform, again, mean = (model(many, locations=m).locations for m in ("random", "random", "mean"))
        assert uniform.mean().item() == pytest.approx(0.5, abs=0.03)
        assert uniform.std().item() == pytest.approx(0.289, abs=0.02)
        assert (uniform - again).abs().min() > 0 and (uniform[0] - mean[0]).abs().mean() > 0.15
        sampled = model(images, locations="sample")
        assert sampled.log_probs.shape == sampled.values.shape == (3, 4)
        assert len(sampled.policy_inputs) == 3
        # step 1 (the glance) never depends on the locations
        assert torch.allclose(out.logits[0], rnd.logits[0])
        with pytest.raises(ValueError):
            model(images, locations="nowhere")


def test_eval_policy_is_deterministic():
    model = tiny(T=4).eval()
    images = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        a = model(images, locations="mean")
        b = model(images, locations="mean")
        s1 = model(images, locations="sample")
        s2 = model(images, locations="sample")
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.locations, b.locations)
    assert not torch.equal(s1.locations, s2.locations)  # training-time sampling is random
    # "sample" draws l ~ N(mean, 0.1²) clipped to [0, 1]: around the first focus step's mean
    # (later means depend on the patches read), entries away from the clipped edges spread by
    # 0.1 (a uniform draw would spread by ~0.29)
    many = torch.randn(128, 3, 64, 64)
    with torch.no_grad():
        mean, sampled = model(many, locations="mean").locations[0], model(many, locations="sample").locations[0]
    inside = (mean > 0.3) & (mean < 0.7)
    noise = (sampled - mean)[inside]
    assert inside.sum() > 100 and noise.std().item() == pytest.approx(0.1, rel=0.2) and noise.mean().abs() < 0.03



@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv3_small_050"])
def test_channels_last_model_feeds_its_convs_channels_last_with_same_outputs(backbone):
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(backbone=backbone, num_classes=5, patch_size=32, T=3, image_size=64)).eval()
    reference = copy.deepcopy(model)
    model.to(memory_format=torch.channels_last)
    seen = []
    for encoder in (model.global_encoder, model.local_encoder):
        stem = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d))
        stem.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    images = torch.randn(6, 3, 64, 64)  # NCHW, as a data loader yields them
    with torch.no_grad():
        ours, ref = model(images), reference(images)
    assert seen == [True, True, True]  # glance and both patches reach the stem conv channels_last
    assert torch.allclose(ours.logits, ref.logits, atol=1e-4) and torch.allclose(ours.locations, ref.locations, atol=1e-5)


# ----------------------------------------------------------------------------- gradients
def stage1_loss(model: GFNet, images, targets, aux_weight: float = 1.0):
    out = model(images, locations="random", need_aux=True)
    T, B, C = out.logits.shape
    flat = targets.repeat(T)
    return (
        F.cross_entropy(out.logits.reshape(T * B, C), flat)
        + aux_weight * F.cross_entropy(out.aux_logits.reshape(T * B, C), flat)
    )


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv3_small_050"])
def test_stage1_gradients_reach_encoders_and_classifier_not_policy(backbone):
    model = tiny(backbone, T=4).train()
    images, targets = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    stage1_loss(model, images, targets).backward()
    for part in (model.global_encoder, model.local_encoder, model.classifier):
        grads = [p.grad for _, p in params(part)]
        assert all(g is not None for g in grads), [n for n, p in params(part) if p.grad is None]
        assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None or not p.grad.any() for p in model.policy.parameters())


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv3_small_050"])
def test_stage2_ppo_gradients_reach_only_policy(backbone):
    torch.manual_seed(1)
    model = tiny(backbone, T=4).eval()  # Stage II runs the frozen parts in eval mode
    images, targets = torch.randn(6, 3, 64, 64), torch.tensor([0, 1, 2, 3, 4, 5])
    # The rollout is run WITH autograd on and every parameter trainable, so that any
    # leak (an undetached feature map, a differentiable action) would show up as a gradient.
    rollout = model(images, locations="sample")
    assert rollout.logits.requires_grad
    for fmap in rollout.policy_inputs:
        assert not fmap.requires_grad and fmap.grad_fn is None
    assert not rollout.locations.requires_grad
    # π's first input is fG's map of the glance, the next ones fL's maps of the patches
    with torch.no_grad():
        glance_map = model.global_encoder(
            glancefocus.glance_resize(images, 32, interpolation=model.config.interpolation)
        )[0]
        patch_map = model.local_encoder(glancefocus.crop_patches(images, rollout.locations[0], 32))[0]
    assert torch.allclose(rollout.policy_inputs[0], glance_map, atol=1e-5)
    assert torch.allclose(rollout.policy_inputs[1], patch_map, atol=1e-5)

    probs = F.softmax(rollout.logits.detach(), dim=2)
    returns = discounted_returns(step_rewards(probs, targets), 0.7)
    log_probs, values, entropy = PolicyReplay(model.policy)(rollout.policy_inputs, rollout.locations)
    # same parameters: the replay scores the rollout's actions exactly as the rollout did
    assert torch.allclose(log_probs, rollout.log_probs, atol=1e-4)
    assert torch.allclose(values, rollout.values, atol=1e-5)
    ppo_loss(log_probs, rollout.log_probs, values, returns, entropy).loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("policy."):
            assert p.grad is not None and p.grad.any(), name
        else:
            assert p.grad is None, name


def test_policy_locations_have_no_gradient_path_into_encoders():
    model = tiny(T=4).train()
    out = model(torch.randn(3, 3, 64, 64), locations="mean")
    out.locations.sum().backward()
    assert any(p.grad is not None and p.grad.any() for p in model.policy.parameters())
    for part in (model.global_encoder, model.local_encoder, model.classifier):
        assert all(p.grad is None for p in part.parameters())


# ----------------------------------------------------------------------------- early exit
class CallCounter:
    """Batch sizes seen by a module's forward calls."""

    def __init__(self, module: nn.Module) -> None:
        self.sizes: list[int] = []
        self.handle = module.register_forward_hook(lambda m, inp, out: self.sizes.append(inp[0].shape[0]))

    def close(self) -> None:
        self.handle.remove()


def spread_model(backbone: str, T: int) -> GFNet:
    """A random model whose confidences are spread out (sharper linear classifiers)."""
    model = tiny(backbone, T=T).eval()
    with torch.no_grad():
        heads = [model.global_encoder.head, model.local_encoder.head]
        heads += [model.classifier.fc] if isinstance(model.classifier, GRUClassifier) else list(model.classifier.layers)
        for layer in heads:
            layer.weight.mul_(30)
    return model


def mixed_thresholds(conf: torch.Tensor, *, exit_share: float = 0.3) -> torch.Tensor:
    """Thresholds between observed confidences, so that some samples exit at every step and
    no sample lies within float noise of a threshold."""
    T, N = conf.shape
    remaining = torch.ones(N, dtype=torch.bool)
    out = []
    for t in range(T - 1):
        values = conf[t][remaining].sort(descending=True).values
        k = max(1, round(len(values) * exit_share))
        assert k < len(values)
        gaps = values[:-1] - values[1:]
        # the widest gap among the first few candidate cuts near k
        candidates = range(max(1, k - 1), min(len(values), k + 2))
        cut = max(candidates, key=lambda i: float(gaps[i - 1]))
        assert float(gaps[cut - 1]) > 1e-4
        eta = float((values[cut - 1] + values[cut]) / 2)
        out.append(eta)
        remaining &= ~(conf[t] >= eta)
    out.append(-math.inf)
    return torch.tensor(out)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv3_small_050"])
def test_predict_matches_all_steps_and_runs_only_what_is_needed(backbone):
    T, B = 4, 20
    model = spread_model(backbone, T)
    torch.manual_seed(2)
    images = torch.randn(B, 3, 64, 64) * 1.5
    with torch.no_grad():
        full = model(images)
    probs = F.softmax(full.logits, dim=2)  # (T, B, C)
    conf = probs.max(dim=2).values

    order = conf[0].sort(descending=True).values
    cases = {
        "all_first": torch.zeros(T),
        "none_early": torch.full((T,), 2.0),
        # η_1 equal to a sample's own glance confidence: "reaches" means >=, so it exits
        "tie_at_glance": torch.tensor([float(order[B // 2])] + [2.0] * (T - 1)),
        "mixed": mixed_thresholds(conf),
        "mixed_more": mixed_thresholds(conf, exit_share=0.5),
    }
    for label, thresholds in cases.items():
        expected_steps = exit_steps(conf, thresholds)  # 1..T
        if label.startswith("mixed"):
            counts = torch.bincount(expected_steps - 1, minlength=T)
            assert (counts > 0).all(), (label, counts)  # a real mix: exits at every step
        counters = [CallCounter(model.global_encoder), CallCounter(model.local_encoder), CallCounter(model.policy)]
        try:
            pred = model.predict(images, thresholds)
        finally:
            for c in counters:
                c.close()
        glance, local, policy = (c.sizes for c in counters)
        assert torch.equal(pred.exit_step, expected_steps), label
        want_labels = probs[expected_steps - 1, torch.arange(B)].argmax(dim=1)
        assert torch.equal(pred.labels, want_labels), label
        assert torch.allclose(pred.probs, probs[expected_steps - 1, torch.arange(B)], atol=1e-5), label
        # a sample exiting at step e ran the glance and e - 1 focus steps, no more
        assert glance == [B], label
        assert sum(local) == int((expected_steps - 1).sum()), label
        assert local == [int((expected_steps > k).sum()) for k in range(1, T) if (expected_steps > k).any()], label
        assert policy == local, label
        # locations: those of the all-steps run up to the exit, NaN after
        for n in range(B):
            e = int(expected_steps[n]) - 1  # focus steps read
            assert torch.allclose(pred.locations[:e, n], full.locations[:e, n], atol=1e-5), (label, n)
            assert torch.isnan(pred.locations[e:, n]).all(), (label, n)
    # the trivial cases really are trivial
    assert int(model.predict(images, cases["tie_at_glance"]).exit_step.eq(1).sum()) == B // 2 + 1
    assert model.predict(images, cases["all_first"]).exit_step.eq(1).all()
    assert model.predict(images, cases["none_early"]).exit_step.eq(T).all()


def test_predict_rejects_wrong_threshold_count():
    model = tiny(T=4).eval()
    images = torch.randn(2, 3, 64, 64)
    for bad in (torch.zeros(3), torch.zeros(5), torch.zeros(1, 3), torch.zeros(0)):
        with pytest.raises(ValueError, match=rf"expected 4 thresholds \(one per step, T=4\), got {bad.numel()}$"):
            model.predict(images, bad)


def test_predict_answers_float32_probabilities_and_int64_exit_steps_for_a_float64_model():
    model = tiny(T=3).eval().double()
    images = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    pred = model.predict(images, torch.tensor([0.5, 0.5, -float("inf")]))
    assert (pred.probs.dtype, pred.exit_step.dtype) == (torch.float32, torch.int64)
    with torch.no_grad():
        probs = F.softmax(model(images).logits, dim=2)[pred.exit_step - 1, torch.arange(4)]
    torch.testing.assert_close(pred.probs, probs.float(), rtol=0, atol=1e-6)
