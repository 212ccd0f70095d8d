"""The configuration of ``glancefocus serve`` (kept apart from the server so the CLI can
build it without importing FastAPI)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .engine_api import EngineConfig
from .uploads import UploadLimits


@dataclass(frozen=True)
class ServeConfig:
    """What ``glancefocus serve`` runs: the export, its default budget, the engine's batching,
    the limits on what one request may carry, and how long anything may take.  Options that
    contradict each other are refused here, at start, with the fix."""

    model: str  # a directory written by `glancefocus export`
    budget: float | None = None  # default budget (None: the most accurate point)
    threads: int | None = None  # ONNX Runtime intra-op threads
    engine: EngineConfig = field(default_factory=EngineConfig)
    limits: UploadLimits = field(default_factory=UploadLimits)
    retry_after_s: int = 1  # told to clients refused by a full queue
    limit_concurrency: int = 64  # prediction requests in progress at once (read, decoded or queued)
    decode_threads: int = 2  # images decoded at once, whatever the number of requests
    request_timeout_s: float = 30.0  # from the request's first byte to its answer
    shutdown_timeout_s: float = 30.0  # SIGTERM: the longest the requests in flight are waited for

    def __post_init__(self) -> None:
        if self.limits.max_images > self.engine.max_queued:
            raise ValueError(f"--max-images ({self.limits.max_images}) is above --max-queued ({self.engine.max_queued}), "
                             "so a full request could never be admitted: raise --max-queued or lower --max-images")
        if min(self.limit_concurrency, self.decode_threads) < 1 or min(self.request_timeout_s, self.shutdown_timeout_s) <= 0:
            raise ValueError("--limit-concurrency and --decode-threads must be at least 1, and --request-timeout and "
                             f"--shutdown-timeout above 0 seconds: {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServeConfig:
        return cls(**{**d, "engine": EngineConfig(**d["engine"]), "limits": UploadLimits(**d["limits"])})
