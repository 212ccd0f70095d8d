"""GFNet: Glance and Focus Network (Wang et al., NeurIPS 2020), SPEC "The model".

Step 1 (glance) classifies the whole image resized to P×P with the global encoder fG.
Each later step (focus) asks the patch proposal network π where to look, crops a P×P window
of the full image there, encodes it with the local encoder fL, and updates the recurrent
classifier fC.  Beyond the paper, the last steps may read the whole image at R > P px with a
whole-image encoder fW (``GFNetConfig.reads``; RANet, DRNet).  One :meth:`GFNet.step` serves
training, all-steps evaluation, early-exit inference and the multiply-add count, so the four
cannot drift apart.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .backbones import create_encoder, probe_encoder
from .outputs import GFNetOutput, Prediction, StepOutput, StepState
from .checkpoint import load_checkpoint
from .classifier import CLASSIFIERS
from ..config import GFNetConfig
from .patches import crop_patches, glance_resize, resample_patches
from .policy import PatchPolicy
from ..config.recipes import resolve
from ..config.weights import Pretrained, Weights


@dataclass
class _Look:
    """The choice of a focus location and what the policy computed to make it."""

    location: torch.Tensor | None = None
    log_prob: torch.Tensor | None = None
    value: torch.Tensor | None = None
    policy_state: torch.Tensor | None = None
    policy_input: torch.Tensor | None = None


class GFNet(nn.Module):
    """Glance and Focus Network over any timm CNN backbone.

    Args:
        config: architecture; family defaults fill its ``None`` fields.
        pretrained: initial weights of both encoders: False, True (timm's hub), a
            :class:`Weights` member (or its name, ``"lite0"``) for a config made by
            :meth:`Weights.configure`, or a local weights file (see :func:`create_backbone`).
    """

    def __init__(self, config: GFNetConfig, *, pretrained: Pretrained = False) -> None:
        super().__init__()
        if (weights := Weights.parse(pretrained)) is not None:
            weights.check_made_for(config)
        self.config = cfg = config.resolved()
        drops = {"drop_rate": cfg.drop_rate, "drop_path_rate": cfg.drop_path_rate}
        self.global_encoder = create_encoder(cfg.backbone, num_classes=cfg.num_classes, pretrained=pretrained, **drops)
        self.local_encoder = create_encoder(cfg.backbone, num_classes=cfg.num_classes, pretrained=pretrained, **drops)
        # fW, only for plans with whole-image reads (so the paper's checkpoints keep their keys).
        # Its own weights: the committed Imagenette model's fL, trained on 96 px patches, read
        # whole 224 px images 1.5 points below the backbone fine-tuned at 224 (RESULTS.md).
        if cfg.whole_size is not None:
            self.whole_encoder = create_encoder(cfg.backbone, num_classes=cfg.num_classes, pretrained=pretrained, **drops)
        map_shape, features = probe_encoder(self.local_encoder, cfg.patch_size)
        if cfg.classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {cfg.classifier!r}: use one of {sorted(CLASSIFIERS)}")
        self.classifier = CLASSIFIERS[cfg.classifier](features, cfg.num_classes, T=cfg.T, hidden=cfg.classifier_hidden)
        self.policy = PatchPolicy(
            map_shape, trunk=cfg.policy_trunk, hidden=cfg.policy_hidden, std=cfg.policy_std, conv_bias=cfg.policy_conv_bias,
            actions=cfg.action_dims,
        )

    @classmethod
    def from_recipe(cls, name: str, *, num_classes: int = 1000, pretrained: Pretrained | None = None, **overrides) -> GFNet:
        """A named recipe's model (``glancefocus recipes``), e.g. ``GFNet.from_recipe("resnet50-96-t5",
        num_classes=10)``; ``pretrained`` replaces the recipe's weights, ``overrides`` its model fields."""
        run_config = resolve(name, pretrained=pretrained, model={"num_classes": num_classes, **overrides})
        return cls(run_config.model, pretrained=run_config.pretrained)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, *, device: torch.device | str = "cpu", channels_last: bool = True
    ) -> tuple[GFNet, dict]:
        """A GFNet and its metadata from a checkpoint: any stage's, or one made by
        ``glancefocus import-release`` from the authors' published files.  In channels_last
        memory format unless told otherwise (same outputs, faster convolutions).  Config
        fields newer than the checkpoint take their defaults, so older checkpoints load."""
        weights, meta = load_checkpoint(path, device="cpu")
        model = cls(GFNetConfig.from_dict(meta["config"]))
        model.load_state_dict(weights)
        model.to(device)
        return (model.to(memory_format=torch.channels_last) if channels_last else model), meta

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
        locations: str | torch.Tensor = "mean",
        need_aux: bool = False,
        explore: torch.Tensor | None = None,
    ) -> tuple[StepOutput, StepState]:
        """Run step ``t`` (0 = glance, the paper's step t + 1) on full-resolution ``images`` (B, 3, H, W);
        it reads what ``config.plan[t]`` says: the glance, a patch, or the whole image at R px.

        ``locations`` for focus steps: ``"mean"`` (π's mean, test time), ``"sample"``
        (l_t ~ N(mean, std²) clipped to [0, 1], Stage II), ``"random"`` (uniform, Stage I),
        or a (B, A) tensor; A = ``config.action_dims``: (row, col), plus the scale fraction σ
        with a learned patch scale.  π is only run when it is needed.  ``explore`` (B,) marks
        images that read uniformly random regions instead of π's mean (the end-to-end
        stage's diversity augmentation).
        """
        read = self.config.plan[t]
        if t == 0:
            look, classifier_state = _Look(), None
        else:
            if state is None:
                raise ValueError("focus steps (t >= 1) need the state returned by the previous step")
            look = self._look(images.shape[0], images.device, state, locations, explore) if read.kind == "patch" else _Look(
                policy_state=state.policy)
            classifier_state = state.classifier
        encoder = self.encoder(read.kind)
        feature_map, pooled = encoder(self.view(images, look.location, size=read.size))
        head_first = t == 0 and self.config.glance_head
        aux = encoder.head(pooled) if (need_aux or head_first) else None
        logits, classifier_state = self.classifier(pooled, classifier_state, aux)
        if head_first:  # fC still reads ē1 (its state), but step 1 answers with fG's head
            logits = aux
        out = StepOutput(logits, aux if need_aux else None, look.location, look.log_prob, look.value, look.policy_input)
        return out, StepState(feature_map.detach(), classifier_state, look.policy_state)

    def encoder(self, kind: str) -> nn.Module:
        """The encoder of a read: fG for the glance, fL for patches, fW for the whole image."""
        if kind == "glance":
            return self.global_encoder
        return self.local_encoder if kind == "patch" else self.whole_encoder

    def view(self, images: torch.Tensor, location: torch.Tensor | None = None, *, size: int | None = None) -> torch.Tensor:
        """What an encoder reads: the whole image resized to ``size`` (the glance x̃1 at the
        patch size by default) when ``location`` is None, else the patch of the region at
        ``location``: the integer window (the paper's crop) or the resampled region."""
        cfg = self.config
        if location is None:
            size = size or cfg.patch_size
            if size == images.shape[-1] == images.shape[-2]:
                return images  # a whole read at the image's own size
            return glance_resize(images, size, interpolation=cfg.interpolation, method=cfg.glance_resize)
        if cfg.crop == "resample":
            return resample_patches(images, location, cfg.patch_size, scale_range=cfg.scale_range)
        return crop_patches(images, location, cfg.patch_size)

    def _look(
        self, batch: int, device: torch.device, state: StepState, locations: str | torch.Tensor, explore: torch.Tensor | None
    ) -> _Look:
        """Where the next patch is: given, uniformly random, or asked of π."""
        if isinstance(locations, torch.Tensor):
            return _Look(locations, policy_state=state.policy)
        if locations == "random":
            return _Look(torch.rand(batch, self.config.action_dims, device=device), policy_state=state.policy)
        if locations not in ("mean", "sample"):
            raise ValueError(f"unknown locations mode {locations!r}: use mean, sample, random or a tensor")
        mean, value, policy_state = self.policy(state.feature_map, state.policy)
        if locations == "mean":
            if explore is not None:
                mean = torch.where(explore[:, None], torch.rand_like(mean), mean)
            return _Look(mean, value=value, policy_state=policy_state)
        location, log_prob = self.policy.sample(mean)
        return _Look(location, log_prob, value, policy_state, policy_input=state.feature_map)

    def forward(
        self,
        images: torch.Tensor,
        *,
        locations: str | torch.Tensor = "mean",
        need_aux: bool | None = None,
        explore: torch.Tensor | None = None,
    ) -> GFNetOutput:
        """All steps on the whole batch (training and all-steps evaluation).

        ``locations`` is a mode (see :meth:`step`) or a (T-1, B, A) tensor of fractions;
        ``explore`` as in :meth:`step`, for every focus step.
        """
        need_aux = self.training if need_aux is None else need_aux
        state, outs = None, []
        for t in range(self.T):
            # patch steps are steps 2..K+1, so step t reads row t − 1 of a (K, B, A) tensor
            where = locations[t - 1] if isinstance(locations, torch.Tensor) and 0 < t <= self.config.patch_steps else locations
            out, state = self.step(images, t, state, locations=where, need_aux=need_aux, explore=explore)
            outs.append(out)
        focus = outs[1:self.config.patch_steps + 1]
        sampled = isinstance(locations, str) and locations == "sample"
        return GFNetOutput(
            logits=torch.stack([o.logits for o in outs]),
            aux_logits=torch.stack([o.aux_logits for o in outs]) if need_aux else None,
            locations=torch.stack([o.location for o in focus]) if focus else images.new_zeros(0, images.shape[0], self.config.action_dims),
            log_probs=torch.stack([o.log_prob for o in focus]) if sampled and focus else None,
            values=torch.stack([o.value for o in focus]) if sampled and focus else None,
            policy_inputs=[o.policy_input for o in focus] if sampled else None,
        )

    @torch.no_grad()
    def init_whole_steps(self) -> None:
        """Start each whole read's fC layer as fW's own head on ē_t alone (zero weight on
        ē_1..ē_{t−1}), as the cascade's step 1 is fG's head: a whole step then answers as
        the backbone fine-tuned at its size does, and training adds what the earlier reads
        tell.  The GRU classifier has no per-step layer and starts as it is."""
        if self.config.classifier != "cascade":
            return
        head = self.whole_encoder.head
        for t, read in enumerate(self.config.plan):
            if read.kind == "whole":
                layer = self.classifier.layers[t - 1]
                layer.weight.zero_()
                layer.weight[:, -head.in_features:] = head.weight
                layer.bias.copy_(head.bias)

    # ------------------------------------------------------------------- early-exit inference
    @torch.inference_mode()
    def predict(
        self, images: torch.Tensor, thresholds: torch.Tensor, *, amp: torch.dtype | None = None
    ) -> Prediction:
        """Early-exit inference: after each step the images whose max probability reaches
        η_t leave the batch, so later steps compute only what is left (SPEC "Early exit").

        Predictions and exit steps equal those of the all-steps evaluation with the same
        thresholds.  Call in eval mode; ``amp`` (torch.bfloat16 / float16) enables autocast.
        Exit steps are numbered 1..T, as in the paper.
        """
        return self._predict(images, thresholds, amp)

    def _predict(self, images: torch.Tensor, thresholds: torch.Tensor, amp: torch.dtype | None) -> Prediction:
        # Undecorated, so that mutation testing (which skips decorated functions) reaches it.
        thresholds = torch.as_tensor(thresholds, dtype=torch.float32, device=images.device).flatten()
        if thresholds.numel() != self.T:
            raise ValueError(f"expected {self.T} thresholds (one per step, T={self.T}), got {thresholds.numel()}")
        B, C = images.shape[0], self.config.num_classes
        probs = images.new_zeros(B, C, dtype=torch.float32)
        exit_step = torch.full((B,), self.T, dtype=torch.long, device=images.device)
        locations = torch.full((self.config.patch_steps, B, self.config.action_dims), float("nan"), device=images.device)
        index = torch.arange(B, device=images.device)
        autocast = (
            torch.autocast(images.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        )
        state = None
        with autocast:
            for t in range(self.T):
                out, state = self.step(images, t, state)
                step_probs = F.softmax(out.logits.float(), dim=1)
                if out.location is not None:
                    locations[t - 1, index] = out.location.float()
                done = step_probs.max(dim=1).values >= thresholds[t] if t < self.T - 1 else None
                if done is None:
                    probs[index] = step_probs
                    exit_step[index] = t + 1
                    break
                probs[index[done]] = step_probs[done]
                exit_step[index[done]] = t + 1
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
        inference runs: step 1 is fG + fC; a patch step adds π, fL and fC, a whole-image read
        fW at its size and fC (so steps may cost unequal amounts).  A patch step costs the
        same whatever the side s of its region: fL always reads a P×P patch (the resampling
        itself, a few multiply-adds per output pixel, is not counted, as the crop and the
        resize are not).
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

