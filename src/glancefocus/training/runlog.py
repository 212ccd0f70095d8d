"""Training logs: scalars to TensorBoard (``out/tensorboard``) and to ``out/log.jsonl``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from ..distributed import World


class RunLog:
    """One record per epoch and stage, written by rank 0 only."""

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
