"""Stage chaining, checkpoint loading and whole-checkpoint evaluation, as the CLI uses them."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write_text, check_compatible, load_checkpoint, read_meta, update_meta
from .config import GFNetConfig, TrainConfig
from .data import BUILTIN, builtin_image_size, load_split
from .distributed import World, barrier
from .engine import Context, final_path
from .evaluate import collect_probs, evaluate_results, plot_results
from .model import GFNet
from .stages import Data, load_data, loader, train_classifier, train_glance, train_policy

STAGES = ("glance", "1", "2", "3")
STAGE_FILE = {"glance": "glance", "1": "stage1", "2": "stage2", "3": "stage3"}


def dataset_classes(data: str) -> list[str]:
    """Class names of ``data`` (a folder with train/, or "builtin")."""
    return load_split(data, "train", image_size=32, crop_pct=1.0, train=False).classes


def default_model_config(data: str, **fields: Any) -> GFNetConfig:
    """A config for ``data``: the built-in set uses its whole canvas (112 px), uncropped.
    Fields given as None take the data's default, or else GFNetConfig's."""
    given = {k: v for k, v in fields.items() if v is not None}
    if data == BUILTIN:
        given = {"image_size": builtin_image_size(), "crop_pct": 1.0, **given}
    return GFNetConfig(**given)


def load_model(
    path: str | Path, device: torch.device | str = "cpu", *, channels_last: bool = True
) -> tuple[GFNet, dict[str, Any]]:
    """A GFNet and its metadata from a checkpoint written by any stage, in channels_last
    memory format unless told otherwise (same outputs, faster convolutions)."""
    weights, meta = load_checkpoint(path, device="cpu")
    model = GFNet(GFNetConfig(**meta["config"]))
    model.load_state_dict(weights)
    model.to(device)
    return (model.to(memory_format=torch.channels_last) if channels_last else model), meta


def _meta(model: GFNet, classes: list[str], tc: TrainConfig, data: str) -> dict[str, Any]:
    return {
        "config": model.config.to_dict(),
        "classes": classes,
        "train_config": tc.to_dict(),
        "data": data,
        "madds": model.madds(),
        "backbone": model.config.backbone,
        "patch_size": model.config.patch_size,
        "T": model.config.T,
        "image_size": model.config.image_size,
    }


def _initialise(model: GFNet, init: Path, world: World) -> None:
    """Load ``init`` into ``model``: only fG from a glance checkpoint, everything otherwise."""
    weights, meta = load_checkpoint(init, device="cpu")
    check_compatible(meta, model.config, path=init)
    if meta.get("stage") == "glance":
        prefix = "global_encoder."
        model.global_encoder.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    else:
        model.load_state_dict(weights)
    if world.is_main:
        print(f"initialised from {init} ({meta.get('stage')})")


def train(
    stages: list[str],
    *,
    config: GFNetConfig,
    tc: TrainConfig,
    data: str,
    ctx: Context,
    init: Path | None = None,
    pretrained: bool | str = False,
) -> tuple[Path, GFNet]:
    """Run ``stages`` in order, each reading the checkpoint the previous one wrote; returns
    the last checkpoint and the trained model.  With ``ctx.resume`` finished stages are skipped and an interrupted
    one continues from its last checkpoint."""
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tc.seed)  # the same initial weights in every process and every run
    model = GFNet(config, pretrained=pretrained)
    tc = tc.for_model(model.config)
    previous = {"1": "glance", "2": "1", "3": "2"}
    first = stages[0]
    if init is None and first in previous:
        candidate = final_path(ctx, STAGE_FILE[previous[first]])
        if candidate.exists():
            init = candidate
        elif first != "1":
            raise FileNotFoundError(
                f"stage {first} starts from the stage {previous[first]} checkpoint: none at {candidate}. "
                f"Run --stage {previous[first]} first or pass --init CHECKPOINT"
            )
    if init is not None:
        _initialise(model, Path(init), ctx.world)
    elif first == "1" and ctx.world.is_main:
        print("note: no glance checkpoint; Stage I starts fG from the backbone's initial weights")
    model.to(ctx.world.device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    if tc.compile:
        for encoder in (model.global_encoder, model.local_encoder):
            encoder.model.compile()  # in place: parameter names, and so checkpoints, are unchanged
    dataset = load_data(data, model, tc)
    meta = _meta(model, dataset.classes, tc, data)
    last = None
    for name in stages:
        out = final_path(ctx, STAGE_FILE[name])
        if name == "3" and not tc.run_stage3 and len(stages) > 1:
            print("skipping Stage III: appendix A.3 does not run it for this family (pass --stage 3 to force)")
            continue
        if ctx.resume and out.exists():
            model.load_state_dict(load_checkpoint(out, device=ctx.world.device)[0])
            print(f"[{STAGE_FILE[name]}] already finished: {out}")
        else:
            started = time.time()
            _run(name, ctx, model, dataset, tc, meta)
            if ctx.world.is_main:
                print(f"[{STAGE_FILE[name]}] done in {time.time() - started:.0f} s -> {out}")
        barrier(ctx.world)
        last = out
    return last, model


def _run(name: str, ctx: Context, model: GFNet, data: Data, tc: TrainConfig, meta: dict) -> None:
    if name == "glance":
        train_glance(ctx, model, data, tc, meta)
    elif name in ("1", "3"):
        train_classifier(ctx, model, data, tc, meta, stage_number=int(name))
    else:
        train_policy(ctx, model, data, tc, meta)


def evaluate_checkpoint(
    checkpoint: Path,
    *,
    ctx: Context,
    data: str | None = None,
    json_out: Path | None = None,
    plot: Path | None = None,
    batch_size: int = 256,
    workers: int = 0,
    policy: str = "learned",
    save: bool = True,
    channels_last: bool = True,
    skip_bad_images: bool = False,
) -> dict[str, Any]:
    """Anytime accuracy, MAdds, thresholds (held-out training images) and the 39-point
    budgeted curve (val images); stored into the checkpoint's metadata and ``json_out``.
    Unreadable images are skipped if asked here or if training skipped them: the held-out
    split must be drawn from the same images as in training."""
    model, meta = load_model(checkpoint, ctx.world.device, channels_last=channels_last)
    data = data or meta.get("data") or BUILTIN
    saved_tc = meta.get("train_config", {})
    tc = replace(
        TrainConfig(), batch_size=batch_size, workers=workers, holdout=saved_tc.get("holdout", 0.1), seed=saved_tc.get("seed", 0),
        skip_bad_images=skip_bad_images or saved_tc.get("skip_bad_images", False),
    )
    dataset = load_data(data, model, tc)
    heldout, _ = collect_probs(model, loader(dataset.heldout, ctx, tc, train=False), ctx.world, policy=policy, amp=ctx.amp)
    probs, targets = collect_probs(model, loader(dataset.val, ctx, tc, train=False), ctx.world, policy=policy, amp=ctx.amp)
    results = {"policy": policy, "num_val": int(targets.numel()), "num_heldout": int(heldout.shape[1]), **evaluate_results(heldout, probs, targets, model.madds())}
    if ctx.world.is_main:
        if save and policy == "learned":
            update_meta(checkpoint, results=results, madds=results["madds"])
        if json_out is not None:
            atomic_write_text(json_out, json.dumps(results, indent=2))
        if plot is not None:
            plot_results(results, plot, title=f"GFNet {model.config.backbone} P={model.config.patch_size} T={model.T}")
    return results


__all__ = ["STAGES", "dataset_classes", "default_model_config", "evaluate_checkpoint", "load_model", "read_meta", "train"]
