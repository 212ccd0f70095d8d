"""The engine's settings and the errors its callers meet: what a caller needs of the
scheduler (``engine.py``) without its workings."""

from __future__ import annotations

from dataclasses import dataclass

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
