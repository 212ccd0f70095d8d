"""Reproducible data order and augmentation: what makes a resumed run replay exactly.

The held-out split, each epoch's order of samples and each sample's random augmentation
depend only on seeds, never on the global RNG, the worker count or when a run was resumed.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
from torch.utils.data import Dataset, Sampler


class SeededAugmentation(Dataset):
    """Wraps a dataset so the random augmentation of sample i in epoch e of a stage depends
    only on (seed, stage, e, i): it survives a resume, whatever the workers, and each stage
    sees fresh augmentations rather than replaying the previous stage's.

    ``redraw(epoch, stage)``, if given, is called at each epoch's start: data drawn afresh
    every epoch (the built-in set) redraws itself there.
    """

    def __init__(self, dataset: Dataset, seed: int, *, redraw: Callable[[int, str], None] | None = None) -> None:
        self.dataset, self.seed, self.redraw, self.epoch, self.stage = dataset, seed, redraw, 0, ""

    def set_epoch(self, epoch: int, stage: str = "") -> None:
        self.epoch, self.stage = epoch, stage
        if self.redraw is not None:
            self.redraw(epoch, stage)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):  # transforms draw from the CPU generator; CUDA's is left alone
            torch.default_generator.manual_seed(zlib.crc32(f"{self.seed}:{self.stage}:{self.epoch}:{index}".encode()))
            return self.dataset[index]


def holdout_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, held-out) index lists: held-out images select the Stage II
    model and set the early-exit thresholds, and are never trained on (appendix B.2)."""
    if n == 0:
        raise ValueError("the training set is empty")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = math.floor(n * fraction) if fraction > 0 else 0
    if fraction > 0 and held == 0:
        held = 1
    if held >= n:
        raise ValueError(f"holdout fraction {fraction} leaves no training images out of {n}")
    return sorted(order[held:]), sorted(order[:held])


class ResumableSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one process of ``world``, reproducible from
    (seed, epoch), that can skip the batches already consumed before a resume."""

    def __init__(self, size: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        self.size, self.shuffle, self.seed, self.rank, self.world = size, shuffle, seed, rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_samples: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_samples

    def _indices(self, rank: int | None = None) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        per_rank = math.ceil(self.size / self.world)
        order += order[: per_rank * self.world - self.size]  # pad so every rank gets as many
        return order[(self.rank if rank is None else rank) :: self.world]

    def gathered_indices(self) -> torch.Tensor:
        """Dataset index of each row of an all-gather of every rank's outputs, in rank order."""
        return torch.tensor([i for r in range(self.world) for i in self._indices(r)])

    def __iter__(self):
        return iter(self._indices()[self.skip :])

    def __len__(self) -> int:
        return math.ceil(self.size / self.world) - self.skip
