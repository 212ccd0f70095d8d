"""The epoch loop every stage shares: progress, logs, crash-safe checkpoints, resume,
mixed precision, a stop on a non-finite loss, and best-epoch selection.

A stage supplies ``step(images, targets) -> (loss, metrics)`` and ``evaluate() -> metrics``;
this module owns everything else, so the stages read as the algorithm of the paper.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from .checkpoint import atomic_write_text, load_checkpoint, load_train_state, save_checkpoint
from .distributed import World, all_gather_objects, all_mean, all_sum

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is untouched."""


class RunLog:
    """Scalars to TensorBoard (``out/tensorboard``) and to ``out/log.jsonl``, rank 0 only."""

    def __init__(self, out_dir: Path, world: World) -> None:
        self.enabled = world.is_main
        self.path = out_dir / "log.jsonl"
        self.writer = SummaryWriter(str(out_dir / "tensorboard")) if self.enabled else None

    def write(self, stage: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"stage": stage, "step": step, "time": time.time(), **values}) + "\n")
        for key, value in values.items():
            for i, v in enumerate(value) if isinstance(value, list) else [(None, value)]:
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(f"{stage}/{key}" + ("" if i is None else f"/t{i + 1}"), v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class Context:
    """What every stage shares: where to write, which processes, how to compute."""

    out_dir: Path
    world: World
    amp: str = "none"  # "none" | "bf16" | "fp16"
    resume: bool = False
    checkpoint_every: int = 0
    max_steps_per_epoch: int = 0
    log: RunLog | None = None
    quiet: bool = False

    def autocast(self):
        if self.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.world.device.type, dtype=dtype)


@dataclass
class Stage:
    """One training stage: what to train, on what, for how long."""

    name: str
    model: nn.Module  # saved whole (its state_dict) in the stage's checkpoints
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    epochs: int
    meta: dict[str, Any]
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    select: str | None = None  # keep the epoch with the highest value of this metric
    seed: int = 0  # with the stage name and the rank, seeds the stage's random draws
    train_mode: Callable[[], Any] | None = None  # puts the model in training mode (default: .train())
    history: list[dict[str, Any]] = field(default_factory=list)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _seed_stage(seed: int, stage: str, rank: int) -> None:
    """Start a stage's random draws (patch locations, PPO noise, dropout) from (seed, stage,
    rank): a resume replays them even when it starts a stage anew, and processes differ."""
    value = zlib.crc32(f"{seed}:{stage}:{rank}".encode())
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def final_path(ctx: Context, name: str) -> Path:
    return ctx.out_dir / f"{name}.safetensors"


def _last_path(ctx: Context, name: str) -> Path:
    return ctx.out_dir / f"{name}.last.safetensors"


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine annealing from each group's initial LR to 0 over ``total_steps`` optimiser steps."""
    total = max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def run_stage(ctx: Context, stage: Stage, step: StepFn, evaluate: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Train ``stage`` for its epochs; returns the metrics of the kept epoch.

    Checkpoints: ``<name>.last.safetensors`` (+ ``.state.pt``) every ``checkpoint_every``
    steps and at each epoch's end, for ``--resume``; ``<name>.safetensors`` when done.
    """
    world, model = ctx.world, stage.model
    scaler = torch.amp.GradScaler(world.device.type, enabled=ctx.amp == "fp16")
    sampler = stage.loader.sampler
    dataset = stage.loader.dataset
    steps_per_epoch = len(sampler) // stage.loader.batch_size if stage.loader.drop_last else math.ceil(len(sampler) / stage.loader.batch_size)
    if ctx.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, ctx.max_steps_per_epoch)
    epoch, batch, global_step, best, best_weights = 0, 0, 0, -math.inf, None

    last = _last_path(ctx, stage.name)
    _seed_stage(stage.seed, stage.name, world.rank)
    saved = load_train_state(last) if ctx.resume and last.exists() else None
    if saved is not None:
        weights, _ = load_checkpoint(last, device=world.device)
        model.load_state_dict(weights)
        stage.optimizer.load_state_dict(saved["optimizer"])
        if stage.scheduler is not None:
            stage.scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        states = saved["rng"]  # one per process; with another process count, the fresh seeds stay
        states = [states] if isinstance(states, dict) else states  # written before per-rank states
        if len(states) == world.size:
            _set_rng_state(states[world.rank])
        epoch, batch, global_step = saved["epoch"], saved["batch"], saved["global_step"]
        best, best_weights, stage.history = saved["best"], saved["best_weights"], saved["history"]
        if world.is_main and not ctx.quiet:
            print(f"[{stage.name}] resuming at epoch {epoch + 1}, batch {batch}")

    def checkpoint(next_epoch: int, next_batch: int) -> None:
        rng = all_gather_objects(_rng_state(), world)
        if world.is_main:
            save_checkpoint(
                last,
                model.state_dict(),
                {**stage.meta, "stage": stage.name, "epoch": next_epoch},
                {
                    "optimizer": stage.optimizer.state_dict(),
                    "scheduler": stage.scheduler.state_dict() if stage.scheduler is not None else None,
                    "scaler": scaler.state_dict(),
                    "rng": rng,
                    "epoch": next_epoch,
                    "batch": next_batch,
                    "global_step": global_step,
                    "best": best,
                    "best_weights": best_weights,
                    "history": stage.history,
                },
            )

    while epoch < stage.epochs:
        sampler.set_epoch(epoch, skip_samples=batch * stage.loader.batch_size)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch, stage.name)
        (stage.train_mode or model.train)()
        totals: dict[str, torch.Tensor] = {}
        count = 0
        bar = tqdm(
            total=steps_per_epoch, initial=batch, desc=f"{stage.name} {epoch + 1}/{stage.epochs}",
            disable=ctx.quiet or not world.is_main, leave=False, dynamic_ncols=True,
        )
        for images, targets in stage.loader:
            if batch >= steps_per_epoch:
                break
            images = images.to(world.device, non_blocking=True)
            targets = targets.to(world.device, non_blocking=True)
            with ctx.autocast():
                loss, metrics = step(images, targets)
            # Every process must agree before anyone steps, or DDP would hang.
            if not bool(all_sum(torch.isfinite(loss.detach()).float(), world) == world.size):
                raise NonFiniteLoss(
                    f"[{stage.name}] non-finite loss ({float(loss.detach())}) at epoch {epoch + 1}, batch {batch + 1} "
                    f"(global step {global_step + 1}); stopped without saving. The last good checkpoint is "
                    f"{last if last.exists() else 'none (no checkpoint was written yet)'}. "
                    "Try a lower learning rate, or --amp none / bf16 instead of fp16."
                )
            stage.optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                scaler.scale(loss).backward()
                scaler.step(stage.optimizer)
                scaler.update()
            if stage.scheduler is not None:
                stage.scheduler.step()
            batch += 1
            global_step += 1
            count += 1
            for k, v in {"loss": loss.detach(), **metrics}.items():
                totals[k] = totals.get(k, 0) + v.detach().float()
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if ctx.checkpoint_every and global_step % ctx.checkpoint_every == 0:
                checkpoint(epoch, batch)
        bar.close()
        train_metrics = {k: _to_py(all_mean(v / max(count, 1), world)) for k, v in totals.items()}
        metrics = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train_metrics.items()}, **evaluate()}
        stage.history.append(metrics)
        if stage.select is not None and metrics[stage.select] > best:
            best = metrics[stage.select]
            best_weights = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
        if ctx.log is not None:
            ctx.log.write(stage.name, global_step, **metrics)
        if world.is_main:
            print(f"[{stage.name}] " + "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()), flush=True)
        epoch, batch = epoch + 1, 0
        checkpoint(epoch, batch)

    if best_weights is not None:
        model.load_state_dict(best_weights)
    kept = max(stage.history, key=lambda m: m[stage.select]) if stage.select and stage.history else (stage.history[-1] if stage.history else {})
    if world.is_main:
        save_checkpoint(final_path(ctx, stage.name), model.state_dict(), {**stage.meta, "stage": stage.name, "history": stage.history})
        atomic_write_text(ctx.out_dir / f"{stage.name}.metrics.json", json.dumps(kept, indent=2))
    return kept


def _to_py(value: torch.Tensor) -> float | list[float]:
    return value.tolist() if value.dim() else float(value)


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return "[" + " ".join(f"{v:.3g}" for v in value) + "]"
    return f"{value:.4g}" if isinstance(value, float) else str(value)



