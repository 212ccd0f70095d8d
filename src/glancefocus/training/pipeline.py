"""Training a GFNet through a list of stages (:mod:`glancefocus.training.stages`): :func:`train` makes
the model and the splits, :func:`fit` initialises the model, runs each stage's plan with the
:class:`~glancefocus.training.trainer.Trainer` and returns the last checkpoint."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.checkpoint import check_compatible, load_checkpoint
from ..config import DataConfig, GFNetConfig, TrainConfig
from ..config.recipes import Resolved
from ..data.sources import Splits, load_data, loader_workers
from ..distributed import barrier
from ..models.gfnet import GFNet
from .stages import STAGES, Setup, fine_tune
from .trainer import Run, Trainer


def new_model(config, *, pretrained=False, seed: int = 0) -> GFNet:
    """A GFNet whose random initial weights depend on ``seed`` alone (the same in every process)."""
    torch.manual_seed(seed)
    return GFNet(config, pretrained=pretrained)


def train(run_config: Resolved, stages: list[str], *, data: DataConfig, run: Run, init: Path | None = None) -> tuple[Path, GFNet]:
    """A new model of ``run_config`` (:func:`~glancefocus.config.recipes.resolve`) trained on
    ``data`` through ``stages`` (see :func:`fit`); returns the last checkpoint and the model."""
    tc = run_config.train
    model = new_model(run_config.model, pretrained=run_config.pretrained, seed=tc.seed)
    splits = load_data(data, model.config, seed=tc.seed)
    return fit(model, splits, stages, config=tc, run=run, data=data, init=init), model


def fit(
    model: GFNet,
    splits: Splits,
    stages: list[str],
    *,
    config: TrainConfig,
    run: Run,
    data: DataConfig = DataConfig(),
    init: Path | None = None,
    meta: dict[str, Any] | None = None,
    teacher: nn.Module | None = None,
) -> Path:
    """Train ``model`` through ``stages`` in order; returns the last stage's checkpoint.
    ``teacher`` (images -> logits, kept in eval mode) gives the soft targets of
    ``config.distill_weight``.

    The first stage starts from ``init``, else from the checkpoint of the stage it follows in
    ``run.out_dir``.  With ``run.resume`` finished stages are loaded, not rerun, and an
    interrupted one continues from its last checkpoint.
    """
    run.out_dir.mkdir(parents=True, exist_ok=True)
    config = config.for_model(model.config)
    stages = [name for name in stages if name != "whole" or model.config.whole_size]  # no whole read, nothing to fine-tune
    if not model.config.patch_steps and "stage2" in stages and len(stages) > 1:
        stages.remove("stage2")  # no patch step: π has nothing to choose
        print("skipping Stage II: this plan reads no patch for π to place")
    if not stages:
        raise ValueError("the whole stage fine-tunes fW for whole-image reads, and this model's plan has none: "
                         "give --reads with a whole:R read (e.g. glance,patch,whole:224)")
    start = init or _start_checkpoint(run, stages[0], model)
    _initialise(model, start)
    if start is not None and run.world.is_main:
        print(f"initialised from {start}")
    model.to(run.world.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.compile:
        for encoder in (model.global_encoder, model.local_encoder):
            encoder.model.compile()  # in place: parameter names, and so checkpoints, are unchanged
    meta = {**_meta(model, splits.classes, config, data), **(meta or {})}
    workers = loader_workers(data, run.world.device)
    setup = Setup(model, splits, config, Trainer(run, config), meta, workers, teacher.eval() if teacher is not None else None)
    last = run.checkpoint(stages[-1])
    for name in stages:
        if name == "stage3" and not config.run_stage3 and len(stages) > 1:
            print("skipping Stage III: appendix A.3 does not run it for this family (pass --stage 3 to force)")
            continue
        last = run.checkpoint(name)
        if run.resume and last.exists():
            _initialise(model, last)
            if run.world.is_main:
                print(f"[{name}] already finished: loaded {last}")
        else:
            started = time.time()
            setup.trainer.fit(STAGES[name].build(setup))
            if name == "whole":  # as loading its checkpoint does: the whole steps' fC layers start as fW's head
                model.init_whole_steps()
            if run.world.is_main:
                print(f"[{name}] done in {time.time() - started:.0f} s -> {last}")
        barrier(run.world)
    return last


def fine_tune_classifier(classifier: nn.Module, splits: Splits, name: str, *, config: TrainConfig, run: Run, epochs: int,
                         patience: int = 0, meta: dict[str, Any] | None = None) -> Path:
    """Fine-tune any classifier (images -> logits) on ``splits`` as the glance fine-tune is
    trained: cross-entropy, Nesterov SGD at ``config.glance_lr`` scaled with the batch, a cosine
    schedule, the seeded augmentation, checkpoints in ``run`` as ``name``; with ``patience`` it
    stops after that many epochs without a better held-out accuracy and keeps the best epoch.
    A static baseline trained this way differs from GFNet's stages only in its model.
    ``config`` is resolved for a family (:meth:`TrainConfig.for_model`, or a recipe's);
    ``classifier`` is on ``run``'s device.  Returns the checkpoint."""
    trainer = Trainer(run, config)
    setup = Setup(None, splits, config, trainer, meta or {})  # no GFNet: fine_tune reads only the data and config
    trainer.fit(fine_tune(setup, name, classifier, epochs=epochs, lr=config.glance_lr, saved=classifier, patience=patience))
    return run.checkpoint(name)


def _start_checkpoint(run: Run, first: str, model: GFNet) -> Path | None:
    previous = STAGES[first].starts_from
    if previous == "whole" and not model.config.whole_size:
        previous = "glance"
    if previous == "whole" and not run.checkpoint("whole").exists():
        raise FileNotFoundError(f"{first} of a plan with whole-image reads starts from the whole checkpoint: none at "
                                f"{run.checkpoint('whole')}. Run --stage whole first (after --stage glance) or pass --init CHECKPOINT")
    if previous is None:
        return None
    candidate = run.checkpoint(previous)
    if candidate.exists():
        return candidate
    if first != "stage1":
        raise FileNotFoundError(
            f"{first} starts from the {previous} checkpoint: none at {candidate}. "
            f"Run --stage {previous.removeprefix('stage')} first or pass --init CHECKPOINT"
        )
    if run.world.is_main:
        print(f"note: no glance checkpoint; {first} starts fG from the backbone's initial weights")
    return None


def _initialise(model: GFNet, init: Path | None) -> None:
    """Load ``init`` into ``model``: only the fine-tuned encoders from a glance checkpoint (fG)
    or a whole one (fG and fW, whose head then starts the whole steps' fC layers), so one
    fine-tune serves any T, classifier or policy; everything otherwise."""
    if init is None:
        return
    weights, meta = load_checkpoint(init, device="cpu")
    encoders = {"glance": ("global_encoder",), "whole": ("global_encoder", "whole_encoder")}.get(meta.get("stage"))
    check_compatible(meta, model.config, path=init, glance_only=encoders is not None)
    if meta.get("stage") == "whole" and (saved := GFNetConfig.from_dict(meta["config"]).whole_size) != model.config.whole_size:
        raise ValueError(f"{init} holds fW fine-tuned at {saved} px, and this model reads the whole image at "
                         f"{model.config.whole_size or 'no'} px: give the same --reads, or start from a glance checkpoint")
    if encoders is None:
        model.load_state_dict(weights)
        return
    for name in encoders:
        prefix = name + "."
        getattr(model, name).load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    if meta.get("stage") == "whole":
        model.init_whole_steps()


def _meta(model: GFNet, classes: list[str], config: TrainConfig, data: DataConfig) -> dict[str, Any]:
    cfg = model.config
    return {
        "config": cfg.to_dict(), "classes": classes, "train_config": config.to_dict(), "data_config": dataclasses.asdict(data),
        "data": data.root, "madds": model.madds(), "backbone": cfg.backbone, "patch_size": cfg.patch_size,
        "T": cfg.T, "image_size": cfg.image_size,
    }
