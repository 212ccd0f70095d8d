"""Where a run executes: torch.distributed glue (one process per device, launched by
``torchrun``), and the autocast of an ``--amp`` value on that device.

NCCL on GPUs, gloo on CPUs.  Without torchrun's environment everything degrades to a
single process and these helpers are no-ops.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from torch.nn.parallel import DistributedDataParallel


AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for an ``--amp`` value ("none", "bf16", "fp16") on ``device``."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def init_world(device: str | None = None) -> World:
    """Join the process group described by torchrun's environment, if there is one."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return World(device=pick_device(device))
    if not dist.is_initialized():
        use_cuda = (device or "").startswith("cuda") or (device is None and torch.cuda.is_available())
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available() and (device is None or device.startswith("cuda")):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return World(rank, size, torch.device("cuda", local))
    return World(rank, size, pick_device(device))


def wrap(module: nn.Module, world: World) -> nn.Module:
    """``module`` in DistributedDataParallel when running on several processes."""
    if not world.distributed:
        return module
    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def all_mean(values: torch.Tensor, world: World) -> torch.Tensor:
    """Mean of ``values`` over processes (sums divided by the world size)."""
    if world.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= world.size
    return values


def all_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        values = values.clone()
        dist.all_reduce(values)
    return values


def all_gather_cat(tensor: torch.Tensor, world: World, dim: int = 0) -> torch.Tensor:
    """Concatenate equally-shaped tensors from every process along ``dim``."""
    if not world.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=dim)


def all_gather_objects(obj: Any, world: World) -> list[Any]:
    """``obj`` from every process, in rank order (picklable objects, e.g. RNG states)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def gather_in_order(values: torch.Tensor, loader: DataLoader, world: World, dim: int = 0) -> torch.Tensor:
    """This process's per-sample ``values`` (along ``dim``) for its shard of ``loader``,
    gathered from every process (on the CPU) and put back in dataset order, without the
    samples repeated to even out the shards."""
    values = all_gather_cat(values, world, dim=dim).cpu()
    if not world.distributed:
        return values
    index = loader.sampler.gathered_indices()
    rows = values.movedim(dim, 0)
    ordered = rows.new_empty(int(index.max()) + 1, *rows.shape[1:])
    ordered[index] = rows  # a repeated sample writes the same values twice
    return ordered.movedim(0, dim)
