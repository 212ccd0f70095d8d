"""What a caller needs of the scheduler (``engine.py``) without its workings: its settings,
the errors it raises, and the :class:`Steps` a model must offer to be served."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

POLICIES = ("deepest", "oldest", "fullest")


@dataclass(frozen=True)
class EngineConfig:
    """How the engine batches: the largest batch of one step, how long a queue may wait to
    fill, the most images in flight, and which ready step runs next."""

    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_queued: int = 1024
    policy: str = "deepest"

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queued < 1 or self.max_wait_ms < 0:
            raise ValueError(f"max_batch and max_queued must be >= 1 and max_wait_ms >= 0: {self}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {self.policy!r}")


class QueueFull(RuntimeError):
    """The engine holds ``max_queued`` images already (or is stopping): retry later."""


class EngineFailed(RuntimeError):
    """The engine's worker has stopped for good (or shut down before answering)."""


class Steps(Protocol):
    """A model as the engine runs it, one step at a time on any array type."""

    T: int
    num_classes: int
    action_dims: int  # numbers per focus region: (row, col[, scale fraction])
    patch_steps: int  # steps 2..K+1 read a region (the paper's T − 1); whole-image reads may follow

    def put(self, images: np.ndarray) -> Any:
        """Normalised float32 images (B, 3, H, W) → the step function's own array type."""

    def step(self, t: int, images: Any, state: list[Any]) -> tuple[np.ndarray, np.ndarray | None, list[Any]]:
        """Step ``t`` (0 = glance): (probabilities (B, C), focus region (B, action_dims) or None, next state)."""

    def take(self, x: Any, index: np.ndarray) -> Any:
        """The rows ``index`` of ``x`` (an image batch or a state tensor)."""

    def cat(self, xs: list[Any]) -> Any:
        """Concatenate along the batch axis."""
