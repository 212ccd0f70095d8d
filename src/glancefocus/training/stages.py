"""The training algorithm, in the order of the paper (appendix A.2–A.3):

0. ``glance``: low-resolution fine-tune of the global encoder fG (appendix B.1), and
   ``whole``: the same fine-tune of the whole-image encoder fW at its size (beyond the paper,
   for plans with whole-image reads; skipped otherwise);
1. ``stage1``: fG, fL and fC with uniformly random patches, deep supervision;
2. ``stage2``: π alone with PPO, everything else frozen;
3. ``stage3``: fL and fC (and fG unless frozen) again, with π's locations.

Beyond the paper, ``end2end`` trains π through the differentiable crop with fL and fC.
Each stage is a row of :data:`STAGES` (its name, the stage it starts from, its builder);
:data:`PIPELINES` lists the stages of each way of training π, and
:func:`glancefocus.training.pipeline.fit` runs them in order.  The epoch loop, checkpoints and resume
are the :class:`~glancefocus.training.trainer.Trainer`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data.sources import Splits, make_loader
from ..distributed import autocast, gather_in_order, wrap
from ..evaluation.evaluate import anytime_accuracy, collect_probs
from .losses import deep_supervision_loss, distillation_loss
from ..models.gfnet import GFNet
from .ppo import PolicyReplay, rollout, update_loss
from .trainer import StagePlan, Trainer, cosine_schedule, steps_per_epoch


@dataclass
class Setup:
    """What every stage builder reads: the model, the data and how to train it."""

    model: GFNet | None  # None for a plain classifier's fine_tune (fine_tune_classifier)
    splits: Splits
    config: TrainConfig  # resolved for the model's family
    trainer: Trainer
    meta: dict[str, Any]
    workers: int = 0
    teacher: nn.Module | None = None  # soft targets of Stages I/III when config.distill_weight > 0

    @property
    def world(self):
        return self.trainer.world

    def loader(self, dataset, *, train: bool):
        return make_loader(dataset, batch_size=self.config.batch_size, world=self.world, train=train,
                           seed=self.config.seed, workers=self.workers)

    def cosine(self, optimizer: torch.optim.Optimizer, loader, epochs: int):
        return cosine_schedule(optimizer, steps_per_epoch(loader, self.config.max_steps_per_epoch) * epochs)

    def sgd(self, groups: list[dict[str, Any]]) -> torch.optim.SGD:
        """Nesterov SGD over ``groups``, their rates scaled with the batch (``TrainConfig.lr_scale``)."""
        groups = [{**g, "lr": g["lr"] * self.config.lr_scale} for g in groups if g["params"]]
        return torch.optim.SGD(groups, momentum=self.config.momentum, nesterov=True, weight_decay=self.config.weight_decay)

    def heldout_accuracy(self, patches: str) -> dict[str, Any]:
        """Anytime accuracy on the held-out training images (model selection, appendix B.2)."""
        probs, targets = collect_probs(self.model, self.loader(self.splits.heldout, train=False), self.world,
                                       patches=patches, amp=self.config.amp)
        accuracy = anytime_accuracy(probs, targets)
        # the last step π acts on: the last of all in the paper's plan, before any whole-image read otherwise
        return {"heldout_accuracy": accuracy, "final_accuracy": accuracy[-1],
                "last_patch_accuracy": accuracy[self.model.config.patch_steps]}


# --------------------------------------------------------------------------------- stage 0
class ReadClassifier(nn.Module):
    """An encoder and its own head on the whole image resized to ``size``: fG on the glance
    x̃1 (the low-resolution fine-tune's model), or fW on a whole-image read."""

    def __init__(self, model: GFNet, kind: str = "glance") -> None:
        super().__init__()
        self.encoder, self.view = model.encoder(kind), model.view
        self.size = model.config.patch_size if kind == "glance" else model.config.whole_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.head(self.encoder(self.view(images, size=self.size))[1])


def fine_tune(
    s: Setup, name: str, classifier: nn.Module, *, epochs: int, lr: float, saved: nn.Module, patience: int = 0
) -> StagePlan:
    """Plain cross-entropy fine-tuning of ``classifier`` (images -> logits), kept in ``saved``'s
    checkpoint; evaluated each epoch on the held-out training images.  With ``patience`` it
    stops after that many epochs without a better held-out accuracy (``epochs`` at most) and
    keeps the best epoch; without, it runs ``epochs`` and keeps the last."""
    net = wrap(classifier, s.world)
    optimizer = s.sgd([{"params": list(classifier.parameters()), "lr": lr}])
    loader = s.loader(s.splits.train, train=True)

    def step(images, targets):
        logits = net(images)
        return F.cross_entropy(logits, targets), {"accuracy": (logits.argmax(1) == targets).float().mean() * 100}

    @torch.inference_mode()
    def evaluate():
        classifier.eval()
        heldout, hits = s.loader(s.splits.heldout, train=False), []
        for images, targets in heldout:
            images, targets = images.to(s.world.device), targets.to(s.world.device)
            with autocast(s.config.amp, s.world.device):
                hits.append((classifier(images).argmax(1) == targets).float())
        return {"heldout_accuracy": 100.0 * float(gather_in_order(torch.cat(hits), heldout, s.world).mean())}

    return StagePlan(name, saved, optimizer, loader, epochs, s.meta, step, evaluate, scheduler=s.cosine(optimizer, loader, epochs),
                     select="heldout_accuracy" if patience else None, patience=patience)


def glance_stage(s: Setup) -> StagePlan:
    """Fine-tune fG on all training images resized to H'×W' (appendix A.3 "Initialization"),
    until its held-out accuracy stops improving (appendix B.1 gives no epoch count)."""
    c = s.config
    return fine_tune(s, "glance", ReadClassifier(s.model), epochs=c.glance_epochs, lr=c.glance_lr, saved=s.model,
                     patience=c.glance_patience)


def whole_stage(s: Setup) -> StagePlan:
    """Fine-tune fW on all training images resized to its largest whole read, as fG is at the
    patch size (beyond the paper: fW is initialised as appendix A.3 initialises fG, with the
    glance fine-tune's epochs and rate); its checkpoint also starts each whole step's fC layer
    from fW's head (:meth:`GFNet.init_whole_steps`)."""
    c = s.config
    return fine_tune(s, "whole", ReadClassifier(s.model, "whole"), epochs=c.glance_epochs, lr=c.glance_lr, saved=s.model,
                     patience=c.glance_patience)


# ------------------------------------------------------------------------- stages I and III
def _classifier_stage(
    s: Setup, name: str, *, patches: str, locations: str, epochs: int, lr_classifier: float, train_policy: bool = False,
    explore: float = 0.0,
) -> StagePlan:
    """fG, fL, fC (and π with ``train_policy``) with the deep-supervision loss, plus
    ``distill_weight`` times the distillation loss from ``s.teacher``, on patches at
    ``locations`` (a :meth:`GFNet.step` mode); a fraction ``explore`` of each batch reads
    uniformly random regions instead.  fG stays fixed where the family says so (MobileNet-V3,
    EfficientNet).  ``patches`` names what the held-out evaluation reads."""
    model, c, teacher = s.model, s.config, s.teacher if s.config.distill_weight else None
    if c.distill_weight and s.teacher is None:
        raise ValueError("distill_weight > 0 needs a teacher model (fit(..., teacher=...))")
    model.policy.requires_grad_(train_policy)
    model.policy.critic.requires_grad_(False)  # only PPO's advantage reads the critic
    initialised = _initialised_encoders(model)  # fG, and fW: fine-tuned first, frozen where the family freezes fG
    for encoder in initialised:
        encoder.requires_grad_(not c.freeze_glance)
    model.local_encoder.requires_grad_(True)
    model.classifier.requires_grad_(True)
    net = wrap(model, s.world)
    trainable = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    optimizer = s.sgd([
        {"params": trainable(model.classifier), "lr": lr_classifier},
        {"params": trainable(model.local_encoder) + [p for e in initialised for p in trainable(e)], "lr": c.lr_encoder},
        {"params": trainable(model.policy), "lr": c.lr_policy},
    ])
    loader = s.loader(s.splits.train, train=True)

    def step(images, targets):
        rows = torch.rand(images.shape[0], device=images.device) < explore if explore else None
        out = net(images, locations=locations, need_aux=True, explore=rows)
        loss = deep_supervision_loss(out, targets, c.aux_weight)
        if teacher is not None:
            with torch.no_grad():
                soft = teacher(images)
            loss = loss + c.distill_weight * distillation_loss(out.logits, soft, c.distill_temperature)
        return loss, {"accuracy": (out.logits.argmax(2) == targets).float().mean(1) * 100}

    def train_mode():
        model.train()
        for encoder in initialised:  # a frozen fG (fW) keeps its BatchNorm statistics
            encoder.train(not c.freeze_glance)

    return StagePlan(name, model, optimizer, loader, epochs, s.meta, step, lambda: s.heldout_accuracy(patches),
                     scheduler=s.cosine(optimizer, loader, epochs), train_mode=train_mode)


def _initialised_encoders(model: GFNet) -> list[nn.Module]:
    return [model.global_encoder] + ([model.whole_encoder] if model.config.whole_size else [])


def stage1(s: Setup) -> StagePlan:
    """Stage I: uniformly random patches; π is not trained."""
    return _classifier_stage(s, "stage1", patches="random", locations="random", epochs=s.config.stage1_epochs,
                             lr_classifier=s.config.lr_classifier)


def stage3(s: Setup) -> StagePlan:
    """Stage III: π's patches (sampled around its mean as the release, or its mean,
    ``stage3_locations``); π is not trained."""
    return _classifier_stage(s, "stage3", patches="learned", locations=s.config.stage3_locations, epochs=s.config.stage3_epochs,
                             lr_classifier=s.config.lr_classifier_stage3)


# ---------------------------------------------------------------- end to end (beyond the paper)
def end2end(s: Setup) -> StagePlan:
    """The differentiable alternative to Stages II–III (AdaFocusV2, CVPR 2022; Uni-AdaFocus,
    T-PAMI 2024): fL, fC and π (fG too unless frozen) learn together with the
    deep-supervision loss on π's mean regions, whose location and scale get gradients through
    the resampling crop.  A fraction ``end2end_random`` of each batch reads uniformly random
    regions (their diversity augmentation).  π reads detached feature maps, as in the paper
    (their stop-gradient).

    It starts from Stage I, not from the glance fine-tune as AdaFocusV2's one stage does: from
    the glance, π ran into a corner (or zoomed out to the whole image) on Imagenette and on the
    built-in data, and fL and fC learned to do without its regions; after Stage I on random
    regions it did not (RESULTS.md, "Views that zoom")."""
    if s.model.config.crop != "resample":
        raise ValueError("differentiable policy training needs the differentiable crop: build the model with "
                         "crop='resample' (--crop resample) or a learned patch scale")
    c = s.config
    return _classifier_stage(s, "end2end", patches="learned", locations="mean", epochs=c.end2end_epochs,
                             lr_classifier=c.lr_classifier, train_policy=True, explore=c.end2end_random)


# -------------------------------------------------------------------------------- stage II
def stage2(s: Setup) -> StagePlan:
    """π with PPO (appendix A.2): one clipped update per batch; the epoch with the best
    final-step accuracy on the held-out images is kept (with whole-image reads after the
    patches: the last patch step's, the last that π's places change).  ``stage2_images="plain"`` rolls out
    on the training images as evaluation crops them, not on augmented ones (beyond the paper)."""
    model, ppo = s.model, s.config.ppo
    dataset = s.splits.train_plain if s.config.stage2_images == "plain" else s.splits.train
    model.requires_grad_(False)
    model.policy.requires_grad_(True)
    net = wrap(PolicyReplay(model.policy), s.world)
    optimizer = torch.optim.Adam(model.policy.parameters(), lr=ppo.lr, betas=tuple(ppo.betas))

    def step(images, targets):
        batch = rollout(model, images, targets, ppo)
        objective = update_loss(net, batch, ppo)
        return objective.loss, {"reward": batch.rewards.sum(0).mean(), "value_loss": objective.value, "accuracy": batch.accuracy}

    return StagePlan("stage2", model, optimizer, s.loader(dataset, train=True), s.config.stage2_epochs, s.meta,
                     step, lambda: s.heldout_accuracy("learned"), select="last_patch_accuracy",
                     train_mode=model.eval)  # encoders and fC are frozen, BatchNorm included


# ------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Stage:
    name: str
    starts_from: str | None  # the stage whose final checkpoint it starts from
    build: Callable[[Setup], StagePlan]


STAGES: dict[str, Stage] = {
    "glance": Stage("glance", None, glance_stage),
    "whole": Stage("whole", "glance", whole_stage),
    "stage1": Stage("stage1", "whole", stage1),  # or "glance", for a plan with no whole-image read
    "stage2": Stage("stage2", "stage1", stage2),
    "stage3": Stage("stage3", "stage2", stage3),
    "end2end": Stage("end2end", "stage1", end2end),
}

#: The whole pipeline of each way of training π (``TrainConfig.policy_training``).
#: ``whole`` runs only for plans with whole-image reads.
PIPELINES: dict[str, list[str]] = {"ppo": ["glance", "whole", "stage1", "stage2", "stage3"],
                                   "differentiable": ["glance", "whole", "stage1", "end2end"]}
