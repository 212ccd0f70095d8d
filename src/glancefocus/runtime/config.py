"""The configuration of ``glancefocus serve`` (kept apart from the server so the CLI can
build it without importing FastAPI)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .engine_config import EngineConfig
from .uploads import UploadLimits


@dataclass(frozen=True)
class ServeConfig:
    """What ``glancefocus serve`` runs: the export, its default budget, the engine's batching
    and the limits on what one request may carry."""

    model: str  # a directory written by `glancefocus export`
    budget: float | None = None  # default budget (None: the most accurate point)
    threads: int | None = None  # ONNX Runtime intra-op threads
    engine: EngineConfig = field(default_factory=EngineConfig)
    limits: UploadLimits = field(default_factory=UploadLimits)
    retry_after_s: int = 1  # told to clients refused by a full queue

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServeConfig:
        return cls(**{**d, "engine": EngineConfig(**d["engine"]), "limits": UploadLimits(**d["limits"])})
