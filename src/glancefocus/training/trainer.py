"""The epoch loop every stage shares: progress, logs, crash-safe checkpoints, resume, mixed
precision, a stop on a non-finite loss, and best-epoch selection.

A stage is a :class:`StagePlan`: what to train, on what, its ``step(images, targets) ->
(loss, metrics)`` and ``evaluate() -> metrics``.  :class:`Trainer` owns everything else, so
the stages (:mod:`glancefocus.training.stages`) read as the algorithm of the paper.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..models.checkpoint import load_checkpoint, load_train_state, save_checkpoint, state_path
from ..runtime.files import atomic_write_text
from ..config import TrainConfig
from ..distributed import World, all_gather_objects, all_mean, all_sum, autocast
from .runlog import RunLog

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is untouched."""


@dataclass
class Run:
    """What every stage of one training run shares: where it writes, on which processes."""

    out_dir: Path
    world: World
    resume: bool = False
    log: RunLog | None = None
    quiet: bool = False

    def checkpoint(self, stage: str) -> Path:
        """The final checkpoint of ``stage``."""
        return self.out_dir / f"{stage}.safetensors"

    def snapshot(self, stage: str, epoch: int) -> Path:
        """The weights of ``stage`` after ``epoch`` (``TrainConfig.keep_epochs``)."""
        return self.out_dir / f"{stage}.epoch{epoch}.safetensors"

    def resume_point(self, stage: str) -> Path:
        """The checkpoint an interrupted ``stage`` resumes from (with its ``.state.pt``)."""
        return self.out_dir / f"{stage}.last.safetensors"


@dataclass
class StagePlan:
    """One training stage: what to train, on what, for how long, and how."""

    name: str
    model: nn.Module  # saved whole (its state_dict) in the stage's checkpoints
    optimizer: torch.optim.Optimizer
    loader: DataLoader  # its dataset is a SeededAugmentation: augmentations follow (seed, stage, epoch)
    epochs: int
    meta: dict[str, Any]
    step: StepFn
    evaluate: Callable[[], dict[str, Any]]
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    select: str | None = None  # keep the epoch with the highest value of this metric
    patience: int = 0  # with select: stop after this many epochs without a higher value (0: never)
    train_mode: Callable[[], Any] | None = None  # puts the model in training mode (default: .train())


@dataclass
class _Progress:
    """Where a stage is; all of it goes into the resumable training state."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    best: float = -math.inf
    best_weights: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def steps_per_epoch(loader: DataLoader, cap: int = 0) -> int:
    """Optimiser steps in one epoch of ``loader``, at most ``cap`` (0: no cap)."""
    return min(len(loader), cap) if cap else len(loader)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine annealing from each group's initial LR to 0 over ``total_steps`` optimiser steps."""
    total = max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def seed_stage(seed: int, stage: str, rank: int) -> None:
    """Start a stage's random draws (patch locations, PPO noise, dropout) from (seed, stage,
    rank): a resume replays them even when it starts a stage anew, and processes differ."""
    value = zlib.crc32(f"{seed}:{stage}:{rank}".encode())
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Runs :class:`StagePlan` s for one :class:`Run` under one :class:`TrainConfig`."""

    def __init__(self, run: Run, config: TrainConfig) -> None:
        self.run, self.config, self.world = run, config, run.world

    def fit(self, plan: StagePlan) -> dict[str, Any]:
        """Train ``plan`` for its epochs; returns the metrics of the kept epoch.

        Checkpoints: ``<name>.last.safetensors`` (+ ``.state.pt``) every ``checkpoint_every``
        steps and at each epoch's end, for ``--resume``; ``<name>.safetensors`` when done,
        after which the resume files are deleted (the final checkpoint is all a resume needs).
        """
        seed_stage(self.config.seed, plan.name, self.world.rank)
        scaler = torch.amp.GradScaler(self.world.device.type, enabled=self.config.amp == "fp16")
        total = steps_per_epoch(plan.loader, self.config.max_steps_per_epoch)  # before a resume shortens the sampler
        progress = self._resume(plan, scaler)
        while progress.epoch < plan.epochs and not self._plateaued(plan, progress):
            totals, count = self._train_epoch(plan, progress, scaler, total)
            train = {f"train_{k}": _to_py(all_mean(v / max(count, 1), self.world)) for k, v in totals.items()}
            self._end_epoch(plan, progress, {"epoch": progress.epoch + 1, **train, **plan.evaluate()})
            progress.epoch, progress.batch = progress.epoch + 1, 0
            self._checkpoint(plan, progress, scaler)
            if progress.epoch in self.config.keep_epochs and self.world.is_main:  # a learning curve's points
                save_checkpoint(self.run.snapshot(plan.name, progress.epoch), plan.model.state_dict(),
                                {**plan.meta, "stage": plan.name, "epoch": progress.epoch})
        return self._finish(plan, progress)

    def _plateaued(self, plan: StagePlan, progress: _Progress) -> bool:
        """Whether ``plan.patience`` epochs have passed since the best ``plan.select`` value
        (read from the history, so a resumed stage stops where it would have)."""
        if not (plan.patience and plan.select and progress.history):
            return False
        values = [m[plan.select] for m in progress.history]
        stale = len(values) - 1 - values.index(max(values))
        if stale >= plan.patience and self.world.is_main and not self.run.quiet:
            print(f"[{plan.name}] no better {plan.select} for {stale} epochs: stopped at epoch {len(values)}, keeping epoch "
                  f"{values.index(max(values)) + 1}")
        return stale >= plan.patience

    def _resume(self, plan: StagePlan, scaler: torch.amp.GradScaler) -> _Progress:
        last = self.run.resume_point(plan.name)
        saved = load_train_state(last) if self.run.resume and last.exists() else None
        if saved is None:
            return _Progress()
        plan.model.load_state_dict(load_checkpoint(last, device=self.world.device)[0])
        plan.optimizer.load_state_dict(saved["optimizer"])
        if plan.scheduler is not None:
            plan.scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        states = saved["rng"]  # one per process; with another process count, the fresh seeds stay
        states = [states] if isinstance(states, dict) else states  # written before per-rank states
        if len(states) == self.world.size:
            _set_rng_state(states[self.world.rank])
        if self.world.is_main and not self.run.quiet:
            print(f"[{plan.name}] resuming at epoch {saved['epoch'] + 1}, batch {saved['batch']}")
        return _Progress(saved["epoch"], saved["batch"], saved["global_step"], saved["best"], saved["best_weights"], saved["history"])

    def _train_epoch(self, plan: StagePlan, progress: _Progress, scaler, total: int) -> tuple[dict[str, torch.Tensor], int]:
        """One epoch from ``progress.batch`` to ``total``; returns summed metrics and the batch count."""
        loader, world = plan.loader, self.world
        loader.sampler.set_epoch(progress.epoch, skip_samples=progress.batch * loader.batch_size)
        loader.dataset.set_epoch(progress.epoch, plan.name)
        (plan.train_mode or plan.model.train)()
        totals: dict[str, torch.Tensor] = {}
        count = 0
        bar = tqdm(total=total, initial=progress.batch, desc=f"{plan.name} {progress.epoch + 1}/{plan.epochs}",
                   disable=self.run.quiet or not world.is_main, leave=False, dynamic_ncols=True)
        for images, targets in loader:
            if progress.batch >= total:
                break
            with autocast(self.config.amp, world.device):
                loss, metrics = plan.step(images.to(world.device, non_blocking=True), targets.to(world.device, non_blocking=True))
            self._check_finite(plan, progress, loss)
            plan.optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                scaler.scale(loss).backward()
                scaler.step(plan.optimizer)
                scaler.update()
            if plan.scheduler is not None:
                plan.scheduler.step()
            progress.batch, progress.global_step, count = progress.batch + 1, progress.global_step + 1, count + 1
            for k, v in {"loss": loss.detach(), **metrics}.items():
                totals[k] = totals.get(k, 0) + v.detach().float()
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if self.config.checkpoint_every and progress.global_step % self.config.checkpoint_every == 0:
                self._checkpoint(plan, progress, scaler)
        bar.close()
        return totals, count

    def _check_finite(self, plan: StagePlan, progress: _Progress, loss: torch.Tensor) -> None:
        # Every process must agree before anyone steps, or DDP would hang.
        if bool(all_sum(torch.isfinite(loss.detach()).float(), self.world) == self.world.size):
            return
        last = self.run.resume_point(plan.name)
        raise NonFiniteLoss(
            f"[{plan.name}] non-finite loss ({float(loss.detach())}) at epoch {progress.epoch + 1}, batch {progress.batch + 1} "
            f"(global step {progress.global_step + 1}); stopped without saving. The last good checkpoint is "
            f"{last if last.exists() else 'none (no checkpoint was written yet)'}. "
            "Try a lower learning rate, or --amp none / bf16 instead of fp16."
        )

    def _end_epoch(self, plan: StagePlan, progress: _Progress, metrics: dict[str, Any]) -> None:
        """Record the epoch's metrics and remember its weights if they are the best so far."""
        progress.history.append(metrics)
        if plan.select is not None and metrics[plan.select] > progress.best:
            progress.best = metrics[plan.select]
            progress.best_weights = {k: v.detach().to("cpu").clone() for k, v in plan.model.state_dict().items()}
        if self.run.log is not None:
            self.run.log.write(plan.name, progress.global_step, **metrics)
        if self.world.is_main:
            print(f"[{plan.name}] " + "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()), flush=True)

    def _checkpoint(self, plan: StagePlan, progress: _Progress, scaler: torch.amp.GradScaler) -> None:
        rng = all_gather_objects(_rng_state(), self.world)
        if not self.world.is_main:
            return
        state = {
            "optimizer": plan.optimizer.state_dict(),
            "scheduler": plan.scheduler.state_dict() if plan.scheduler is not None else None,
            "scaler": scaler.state_dict(),
            "rng": rng,
            **{k: getattr(progress, k) for k in ("epoch", "batch", "global_step", "best", "best_weights", "history")},
        }
        meta = {**plan.meta, "stage": plan.name, "epoch": progress.epoch}
        save_checkpoint(self.run.resume_point(plan.name), plan.model.state_dict(), meta, state)

    def _finish(self, plan: StagePlan, progress: _Progress) -> dict[str, Any]:
        """Keep the selected epoch's weights, write the final checkpoint, drop the resume files."""
        if progress.best_weights is not None:
            plan.model.load_state_dict(progress.best_weights)
        history = progress.history
        kept = max(history, key=lambda m: m[plan.select]) if plan.select and history else (history[-1] if history else {})
        if self.world.is_main:
            save_checkpoint(self.run.checkpoint(plan.name), plan.model.state_dict(), {**plan.meta, "stage": plan.name, "history": history})
            atomic_write_text(self.run.out_dir / f"{plan.name}.metrics.json", json.dumps(kept, indent=2))
            last = self.run.resume_point(plan.name)
            state_path(last).unlink(missing_ok=True)
            last.unlink(missing_ok=True)
        return kept


def _to_py(value: torch.Tensor) -> float | list[float]:
    return value.tolist() if value.dim() else float(value)


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return "[" + " ".join(f"{v:.3g}" for v in value) + "]"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
