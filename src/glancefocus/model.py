"""GFNet: Glance and Focus Network (Wang et al., NeurIPS 2020), SPEC "The model".

Step 1 (glance) classifies the whole image resized to P×P with the global encoder fG.
Each later step (focus) asks the patch proposal network π where to look, crops a P×P window
of the full image there, encodes it with the local encoder fL, and updates the recurrent
classifier fC.  One :meth:`GFNet.step` serves training, all-steps evaluation, early-exit
inference and the multiply-add count, so the four cannot drift apart.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .backbones import create_encoder, probe_encoder
from .classifier import CascadeClassifier, GRUClassifier
from .config import GFNetConfig
from .patches import crop_patches, glance_resize
from .policy import PatchPolicy
from .presets import preset_config
from .pretrained import PACKAGE_MEAN, PACKAGE_STD, PACKAGE_WEIGHTS


@dataclass
class StepState:
    """What step t+1 needs from steps 1..t; every tensor is batch-first."""

    feature_map: torch.Tensor  # last encoder map, detached: π's input (as the release)
    classifier: torch.Tensor
    policy: torch.Tensor | None = None

    def select(self, keep: torch.Tensor) -> StepState:
        """The state of the samples in ``keep`` (a boolean mask or index tensor)."""
        return StepState(
            self.feature_map[keep],
            self.classifier[keep],
            None if self.policy is None else self.policy[keep],
        )


@dataclass
class _Look:
    """The choice of a focus location and what the policy computed to make it."""

    location: torch.Tensor | None = None
    log_prob: torch.Tensor | None = None
    value: torch.Tensor | None = None
    policy_state: torch.Tensor | None = None
    policy_input: torch.Tensor | None = None


@dataclass
class StepOutput:
    logits: torch.Tensor  # (B, C) logits of p_t
    aux_logits: torch.Tensor | None  # (B, C) the encoder's own head on ē_t (deep supervision)
    location: torch.Tensor | None = None  # (B, 2) l_t, None for the glance
    log_prob: torch.Tensor | None = None  # (B,) of a sampled l_t
    value: torch.Tensor | None = None  # (B,) critic's V(s_t)
    policy_input: torch.Tensor | None = None  # the map π read, kept for PPO re-evaluation


@dataclass
class GFNetOutput:
    logits: torch.Tensor  # (T, B, C)
    aux_logits: torch.Tensor | None  # (T, B, C)
    locations: torch.Tensor  # (T-1, B, 2)
    log_probs: torch.Tensor | None = None  # (T-1, B), with locations="sample"
    values: torch.Tensor | None = None  # (T-1, B)
    policy_inputs: list[torch.Tensor] | None = None


@dataclass
class Prediction:
    """Result of early-exit inference for a batch of B images."""

    labels: torch.Tensor  # (B,) predicted class at the exit step
    probs: torch.Tensor  # (B, C) softmax at the exit step
    exit_step: torch.Tensor  # (B,) 0-based step at which each image exited
    locations: torch.Tensor  # (B, T-1, 2) focus locations read; NaN after the exit


class GFNet(nn.Module):
    """Glance and Focus Network over any timm CNN backbone.

    Args:
        config: architecture; family defaults fill its ``None`` fields.
        pretrained: initial weights of both encoders: False, True (timm's hub), a package
            name such as ``"lite0"``, or a local weights file (see :func:`create_backbone`).
    """

    def __init__(self, config: GFNetConfig, *, pretrained: bool | str = False) -> None:
        super().__init__()
        if isinstance(pretrained, str) and pretrained in PACKAGE_WEIGHTS:
            # Offline package weights need their own architecture variant and input scaling.
            arch = PACKAGE_WEIGHTS[pretrained]
            if config.backbone not in (arch, arch.removeprefix("tf_")):
                raise ValueError(
                    f"pretrained={pretrained!r} are weights for {arch}, not for backbone {config.backbone!r}: "
                    f"pass --backbone {arch.removeprefix('tf_')} (or leave --backbone out), or another --pretrained"
                )
            config = replace(config, backbone=arch, mean=PACKAGE_MEAN, std=PACKAGE_STD)
        self.config = cfg = config.resolved()
        self.global_encoder = create_encoder(cfg.backbone, num_classes=cfg.num_classes, pretrained=pretrained)
        self.local_encoder = create_encoder(cfg.backbone, num_classes=cfg.num_classes, pretrained=pretrained)
        map_shape, features = probe_encoder(self.local_encoder, cfg.patch_size)
        if cfg.classifier == "gru":
            self.classifier = GRUClassifier(features, cfg.num_classes, hidden=cfg.classifier_hidden)
        elif cfg.classifier == "cascade":
            self.classifier = CascadeClassifier(features, cfg.num_classes, T=cfg.T)
        else:
            raise ValueError(f"unknown classifier {cfg.classifier!r}: use 'gru' or 'cascade'")
        self.policy = PatchPolicy(map_shape, kind=cfg.policy, hidden=cfg.policy_hidden, std=cfg.policy_std)

    @classmethod
    def from_preset(cls, name: str, *, num_classes: int = 1000, pretrained: bool | str = False, **overrides) -> GFNet:
        """A Table 2 configuration by name, e.g. ``GFNet.from_preset("resnet50-96-t5", num_classes=10)``."""
        return cls(preset_config(name, num_classes=num_classes, **overrides), pretrained=pretrained)

    @property
    def T(self) -> int:
        return self.config.T

    # ----------------------------------------------------------------------------- steps
    def step(
        self,
        images: torch.Tensor,
        t: int,
        state: StepState | None,
        *,
        locations: str | torch.Tensor = "policy",
        need_aux: bool = False,
    ) -> tuple[StepOutput, StepState]:
        """Run step ``t`` (0 = glance) on full-resolution ``images`` (B, 3, H, W).

        ``locations`` for focus steps: ``"policy"`` (π's mean, test time), ``"sample"``
        (l_t ~ N(mean, std²) clipped to [0, 1], Stage II), ``"random"`` (uniform, Stage I),
        or a (B, 2) tensor.  π is only run when it is needed.
        """
        cfg = self.config
        if t == 0:
            encoder, view, look = self.global_encoder, glance_resize(images, cfg.patch_size, interpolation=cfg.interpolation), _Look()
            classifier_state = None
        else:
            if state is None:
                raise ValueError("focus steps (t >= 1) need the state returned by the previous step")
            look = self._look(images.shape[0], images.device, state, locations)
            encoder, view = self.local_encoder, crop_patches(images, look.location, cfg.patch_size)
            classifier_state = state.classifier
        feature_map, pooled = encoder(view)
        cascade_first = t == 0 and isinstance(self.classifier, CascadeClassifier)
        aux = encoder.head(pooled) if (need_aux or cascade_first) else None
        logits, classifier_state = self.classifier(pooled, classifier_state, aux)
        out = StepOutput(logits, aux if need_aux else None, look.location, look.log_prob, look.value, look.policy_input)
        return out, StepState(feature_map.detach(), classifier_state, look.policy_state)

    def _look(self, batch: int, device: torch.device, state: StepState, locations: str | torch.Tensor) -> _Look:
        """Where the next patch is: given, uniformly random, or asked of π."""
        if isinstance(locations, torch.Tensor):
            return _Look(locations, policy_state=state.policy)
        if locations == "random":
            return _Look(torch.rand(batch, 2, device=device), policy_state=state.policy)
        if locations not in ("policy", "sample"):
            raise ValueError(f"unknown locations mode {locations!r}: use policy, sample, random or a tensor")
        mean, value, policy_state = self.policy(state.feature_map, state.policy)
        if locations == "policy":
            return _Look(mean, value=value, policy_state=policy_state)
        location, log_prob = self.policy.sample(mean)
        return _Look(location, log_prob, value, policy_state, policy_input=state.feature_map)

    def forward(
        self,
        images: torch.Tensor,
        *,
        locations: str | torch.Tensor = "policy",
        need_aux: bool | None = None,
    ) -> GFNetOutput:
        """All steps on the whole batch (training and all-steps evaluation).

        ``locations`` is a mode (see :meth:`step`) or a (T-1, B, 2) tensor of fractions.
        """
        need_aux = self.training if need_aux is None else need_aux
        state, outs = None, []
        for t in range(self.T):
            where = locations[t - 1] if isinstance(locations, torch.Tensor) and t > 0 else locations
            out, state = self.step(images, t, state, locations=where, need_aux=need_aux)
            outs.append(out)
        focus = outs[1:]
        sampled = isinstance(locations, str) and locations == "sample"
        return GFNetOutput(
            logits=torch.stack([o.logits for o in outs]),
            aux_logits=torch.stack([o.aux_logits for o in outs]) if need_aux else None,
            locations=torch.stack([o.location for o in focus]) if focus else images.new_zeros(0, images.shape[0], 2),
            log_probs=torch.stack([o.log_prob for o in focus]) if sampled and focus else None,
            values=torch.stack([o.value for o in focus]) if sampled and focus else None,
            policy_inputs=[o.policy_input for o in focus] if sampled else None,
        )

    # ------------------------------------------------------------------- early-exit inference
    @torch.inference_mode()
    def predict(
        self, images: torch.Tensor, thresholds: torch.Tensor, *, amp: torch.dtype | None = None
    ) -> Prediction:
        """Early-exit inference: after each step the images whose max probability reaches
        η_t leave the batch, so later steps compute only what is left (SPEC "Early exit").

        Predictions and exit steps equal those of the all-steps evaluation with the same
        thresholds.  Call in eval mode; ``amp`` (torch.bfloat16 / float16) enables autocast.
        """
        thresholds = torch.as_tensor(thresholds, dtype=torch.float32, device=images.device).flatten()
        if thresholds.numel() != self.T:
            raise ValueError(f"expected {self.T} thresholds (one per step, T={self.T}), got {thresholds.numel()}")
        B, C = images.shape[0], self.config.num_classes
        probs = images.new_zeros(B, C, dtype=torch.float32)
        exit_step = torch.full((B,), self.T - 1, dtype=torch.long, device=images.device)
        locations = torch.full((B, max(self.T - 1, 0), 2), float("nan"), device=images.device)
        index = torch.arange(B, device=images.device)
        autocast = (
            torch.autocast(images.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        )
        state = None
        with autocast:
            for t in range(self.T):
                out, state = self.step(images, t, state)
                step_probs = F.softmax(out.logits.float(), dim=1)
                if t > 0:
                    locations[index, t - 1] = out.location.float()
                done = step_probs.max(dim=1).values >= thresholds[t] if t < self.T - 1 else None
                if done is None:
                    probs[index] = step_probs
                    exit_step[index] = t
                    break
                probs[index[done]] = step_probs[done]
                exit_step[index[done]] = t
                keep = ~done
                if not bool(keep.any()):  # one host sync per step, not per sample
                    break
                images, index, state = images[keep], index[keep], state.select(keep)
        return Prediction(probs.argmax(dim=1), probs, exit_step, locations)

    # ------------------------------------------------------------------------ multiply-adds
    @torch.no_grad()
    def madds(self) -> list[float]:
        """Cumulative multiply-adds of steps 1..t for one image, t = 1..T.

        Counted by ``torch.utils.flop_counter`` (MAdds = FLOPs / 2) on exactly what early-exit
        inference runs: step 1 is fG + fC; step t ≥ 2 adds π, fL and fC.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        size = self.config.image_size
        images = torch.zeros(1, 3, size, size, device=device)
        state, total, cumulative = None, 0, []
        for t in range(self.T):
            with FlopCounterMode(display=False) as counter:
                _, state = self.step(images, t, state)
            total += counter.get_total_flops() // 2
            cumulative.append(float(total))
        self.train(was_training)
        return cumulative
