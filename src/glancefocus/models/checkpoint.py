"""Checkpoints: weights as safetensors with JSON metadata in the header, and the training
state (optimiser, scheduler, RNG, progress) in a ``.state.pt`` file beside them.

Every write goes to a temporary file in the same folder, is fsynced, then renamed over
the target, so a crash leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..config import GFNetConfig
from ..runtime.files import atomic_write

META_KEY = "glancefocus"
FORMAT_VERSION = 1


def state_path(path: str | os.PathLike) -> Path:
    """Where the resumable training state of checkpoint ``path`` lives."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".safetensors") + ".state.pt")


def save_checkpoint(
    path: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> None:
    """Write weights + metadata atomically (and the training state, if given, first)."""
    if train_state is not None:
        atomic_write(state_path(path), lambda tmp: torch.save(train_state, tmp))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    header = {META_KEY: json.dumps({"format": FORMAT_VERSION, **meta})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading its weights."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable glancefocus checkpoint (safetensors): {e}") from e
    if META_KEY not in header:
        raise ValueError(f"{path} is a safetensors file but not a glancefocus checkpoint (no '{META_KEY}' metadata)")
    return json.loads(header[META_KEY])


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of a checkpoint."""
    meta = read_meta(path)
    return load_file(str(path), device=str(device)), meta


def update_meta(path: str | os.PathLike, **changes: Any) -> None:
    """Rewrite a checkpoint's metadata (e.g. evaluation results), atomically."""
    state_dict, meta = load_checkpoint(path)
    meta.update(changes)
    meta.pop("format", None)
    save_checkpoint(path, state_dict, meta)


def load_train_state(path: str | os.PathLike) -> dict[str, Any] | None:
    p = state_path(path)
    return torch.load(p, map_location="cpu", weights_only=False) if p.exists() else None


def check_compatible(meta: dict[str, Any], config: GFNetConfig, *, path: str | os.PathLike, glance_only: bool = False) -> None:
    """Raise a ValueError naming every architecture field where ``meta`` and ``config`` differ
    (with ``glance_only``, those fG's weights depend on: T or the heads may differ)."""
    saved = GFNetConfig.from_dict(meta["config"]).to_dict() if "config" in meta else {}
    wanted = config.resolved().to_dict()
    keys = ("backbone", "num_classes", "patch_size")
    if not glance_only:
        keys += ("T", "classifier", "classifier_hidden", "policy_trunk", "policy_hidden")
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, expected {wanted[k]!r}" for k in keys if saved.get(k) != wanted[k]]
    if not glance_only and saved and (had := _plan(saved)) != (want := _plan(wanted)):
        diffs.append(f"reads: checkpoint has {had}, expected {want}")
    if diffs:
        raise ValueError(
            f"checkpoint {path} does not match this model ({'; '.join(diffs)}). "
            "Pass the options the checkpoint was trained with, or start from a matching checkpoint."
        )


def _plan(fields: dict[str, Any]) -> str:
    return ",".join(map(str, GFNetConfig.from_dict(fields).plan))


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path
