"""The training algorithm, in the order of the paper (appendix A.2–A.3):

0. low-resolution fine-tune of the global encoder fG (appendix B.1);
1. Stage I: fG, fL and fC with uniformly random patches, deep supervision;
2. Stage II: π alone with PPO, everything else frozen;
3. Stage III: fL and fC (and fG unless frozen) again, with π's locations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .config import TrainConfig
from .data import BUILTIN, ResumableSampler, SeededAugmentation, evaluation_view, holdout_split, load_split, subset
from .engine import Context, Stage, cosine_schedule, run_stage
from .evaluate import anytime_accuracy, collect_probs, gather_in_order
from .model import GFNet
from .patches import glance_resize
from .ppo import PolicyReplay, discounted_returns, ppo_loss, step_rewards
from .distributed import wrap


@dataclass
class Data:
    train: SeededAugmentation  # training images minus the held-out ones, augmented
    heldout: Dataset  # held-out training images, evaluation transform
    val: Dataset
    classes: list[str]
    holdout_fraction: float
    seed: int


def load_data(data: str, model: GFNet, tc: TrainConfig) -> Data:
    """Train / held-out / val splits of ``data`` (a folder or "builtin")."""
    cfg = model.config
    transform = {"image_size": cfg.image_size, "crop_pct": cfg.crop_pct, "mean": tuple(cfg.mean), "std": tuple(cfg.std)}
    kw = {**transform, "min_size": cfg.patch_size, "skip_bad": tc.skip_bad_images}
    train_full = load_split(data, "train", train=True, **kw)
    train_plain = evaluation_view(train_full, **transform)
    val = load_split(data, "val", train=False, **kw)
    classes = list(train_full.classes)
    if len(classes) != cfg.num_classes:
        raise ValueError(f"{data} has {len(classes)} classes but the model was built for {cfg.num_classes}")
    train_idx, held_idx = holdout_split(len(train_full), tc.holdout, tc.seed)
    heldout = subset(train_plain, held_idx) if held_idx else subset(train_plain, train_idx)
    return Data(SeededAugmentation(subset(train_full, train_idx), tc.seed), heldout, val, classes, tc.holdout, tc.seed)


def loader(dataset: Dataset, ctx: Context, tc: TrainConfig, *, train: bool) -> DataLoader:
    """A loader whose order is fixed by (seed, epoch) and resumable; shards across processes."""
    world = ctx.world
    if len(dataset) == 0:
        raise ValueError("a data split is empty: add images or lower --holdout")
    batch = max(tc.batch_size // world.size, 1)
    sampler = ResumableSampler(len(dataset), shuffle=train, seed=tc.seed, rank=world.rank, world=world.size)
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=tc.workers,
        drop_last=train and len(sampler) >= batch,
        pin_memory=world.device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator(),  # keeps the global RNG untouched, so resumes replay exactly
    )


def _sgd(groups: list[dict[str, Any]], tc: TrainConfig) -> torch.optim.SGD:
    groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(groups, momentum=tc.momentum, nesterov=True, weight_decay=tc.weight_decay)


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def _holdout_eval(ctx: Context, model: GFNet, data: Data, tc: TrainConfig, policy: str) -> dict[str, Any]:
    probs, targets = collect_probs(model, loader(data.heldout, ctx, tc, train=False), ctx.world, policy=policy, amp=ctx.amp)
    accuracy = anytime_accuracy(probs, targets)
    return {"heldout_accuracy": accuracy, "final_accuracy": accuracy[-1]}


# --------------------------------------------------------------------------------- stage 0
class _GlanceClassifier(nn.Module):
    """fG and its head on the glance input x̃1: the low-resolution fine-tune's model."""

    def __init__(self, model: GFNet) -> None:
        super().__init__()
        self.encoder, self.size, self.interpolation = model.global_encoder, model.config.patch_size, model.config.interpolation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.head(self.encoder(glance_resize(images, self.size, interpolation=self.interpolation))[1])


def train_glance(ctx: Context, model: GFNet, data: Data, tc: TrainConfig, meta: dict) -> dict[str, Any]:
    """Fine-tune fG on all training images resized to H'×W' (appendix A.3 "Initialization")."""
    glance = _GlanceClassifier(model)
    net = wrap(glance, ctx.world)
    optimizer = _sgd([{"params": list(glance.parameters()), "lr": tc.glance_lr}], tc)
    train_loader = loader(data.train, ctx, tc, train=True)
    stage = Stage("glance", model, optimizer, train_loader, tc.glance_epochs, meta, seed=tc.seed)
    stage.scheduler = cosine_schedule(optimizer, _total_steps(ctx, train_loader, tc.glance_epochs))

    def step(images, targets):
        logits = net(images)
        loss = F.cross_entropy(logits, targets)
        return loss, {"accuracy": (logits.argmax(1) == targets).float().mean() * 100}

    @torch.inference_mode()
    def evaluate():
        glance.eval()
        heldout, hits = loader(data.heldout, ctx, tc, train=False), []
        for images, targets in heldout:
            images, targets = images.to(ctx.world.device), targets.to(ctx.world.device)
            with ctx.autocast():
                hits.append((glance(images).argmax(1) == targets).float())
        if not hits:  # no held-out images (--holdout 0), on every process alike
            return {"heldout_accuracy": 0.0}
        return {"heldout_accuracy": 100.0 * float(gather_in_order(torch.cat(hits), heldout, ctx.world).mean())}

    return run_stage(ctx, stage, step, evaluate)


# ------------------------------------------------------------------------- stages I and III
def train_classifier(ctx: Context, model: GFNet, data: Data, tc: TrainConfig, meta: dict, *, stage_number: int) -> dict[str, Any]:
    """Stage I (random patches) or Stage III (π's mean patches): fG, fL, fC with
    loss (Σ_t CE(p_t, y) + λ Σ_t CE(head(ē_t), y)) / T.  fG stays fixed where the family
    says so (MobileNet-V3, EfficientNet); π is never trained here."""
    locations = "random" if stage_number == 1 else "policy"
    epochs = tc.stage1_epochs if stage_number == 1 else tc.stage3_epochs
    lr_classifier = tc.lr_classifier if stage_number == 1 else tc.lr_classifier_stage3
    model.policy.requires_grad_(False)
    model.global_encoder.requires_grad_(not tc.freeze_glance)
    model.local_encoder.requires_grad_(True)
    model.classifier.requires_grad_(True)
    net = wrap(model, ctx.world)
    optimizer = _sgd(
        [
            {"params": _trainable(model.classifier), "lr": lr_classifier},
            {"params": _trainable(model.local_encoder) + _trainable(model.global_encoder), "lr": tc.lr_encoder},
        ],
        tc,
    )
    train_loader = loader(data.train, ctx, tc, train=True)
    stage = Stage(f"stage{stage_number}", model, optimizer, train_loader, epochs, meta, seed=tc.seed)
    stage.scheduler = cosine_schedule(optimizer, _total_steps(ctx, train_loader, epochs))
    stage.train_mode = lambda: _train_mode(model, freeze_glance=tc.freeze_glance)

    def step(images, targets):
        out = net(images, locations=locations, need_aux=True)
        T, B, C = out.logits.shape
        flat = targets.repeat(T)
        loss = (
            F.cross_entropy(out.logits.reshape(T * B, C), flat, reduction="sum")
            + tc.aux_weight * F.cross_entropy(out.aux_logits.reshape(T * B, C), flat, reduction="sum")
        ) / (T * B)
        accuracy = (out.logits.argmax(2) == targets).float().mean(1) * 100
        return loss, {"accuracy": accuracy}

    return run_stage(ctx, stage, step, lambda: _holdout_eval(ctx, model, data, tc, "random" if stage_number == 1 else "learned"))


def _train_mode(model: GFNet, *, freeze_glance: bool) -> None:
    model.train()
    model.global_encoder.train(not freeze_glance)  # a frozen fG keeps its BatchNorm statistics


# -------------------------------------------------------------------------------- stage II
def train_policy(ctx: Context, model: GFNet, data: Data, tc: TrainConfig, meta: dict) -> dict[str, Any]:
    """Stage II: π with PPO (appendix A.2).  Rewards r_t = p_t(y) − p_{t−1}(y), returns with
    γ, one clipped update per batch; the epoch with the best final-step accuracy on the
    held-out images is kept."""
    ppo = tc.ppo
    model.requires_grad_(False)
    model.policy.requires_grad_(True)
    replay = PolicyReplay(model.policy)
    net = wrap(replay, ctx.world)
    optimizer = torch.optim.Adam(model.policy.parameters(), lr=ppo.lr, betas=tuple(ppo.betas))
    train_loader = loader(data.train, ctx, tc, train=True)
    stage = Stage("stage2", model, optimizer, train_loader, ppo.epochs, meta, select="final_accuracy", seed=tc.seed)
    stage.train_mode = model.eval  # encoders and fC are frozen, BatchNorm included

    def step(images, targets):
        with torch.no_grad():  # the rollout: act with the old policy, observe rewards
            rollout = model(images, locations="sample", need_aux=False)
            probs = F.softmax(rollout.logits.float(), dim=2)
            rewards = step_rewards(probs, targets)
            returns = discounted_returns(rewards, ppo.gamma)
            if ppo.normalize_returns:
                returns = (returns - returns.mean()) / (returns.std() + 1e-5)
        log_probs, values, entropy = net(rollout.policy_inputs, rollout.locations)
        objective = ppo_loss(
            log_probs, rollout.log_probs, values.float(), returns, entropy,
            clip=ppo.clip, value_coef=ppo.value_coef, entropy_coef=ppo.entropy_coef,
        )
        accuracy = (probs.argmax(2) == targets).float().mean(1) * 100
        return objective.loss, {"reward": rewards.sum(0).mean(), "value_loss": objective.value, "accuracy": accuracy}

    return run_stage(ctx, stage, step, lambda: _holdout_eval(ctx, model, data, tc, "learned"))


def _total_steps(ctx: Context, train_loader: DataLoader, epochs: int) -> int:
    per_epoch = len(train_loader)
    if ctx.max_steps_per_epoch:
        per_epoch = min(per_epoch, ctx.max_steps_per_epoch)
    return per_epoch * epochs


def default_workers(data: str, device: torch.device) -> int:
    """Loader processes: none for the in-memory built-in data, nor on a CPU (they would take
    cores from the model's own threads); a few for JPEG decoding beside a GPU."""
    if data == BUILTIN or device.type == "cpu":
        return 0
    return min(8, os.cpu_count() or 1)
