"""Where the images come from and how the training images are split."""

from __future__ import annotations

from dataclasses import dataclass, field

@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how the training images are split."""

    root: str = field(default="builtin", metadata={"help": "ImageFolder root with train/ and val/, or 'builtin'"})
    holdout: float = field(default=0.1, metadata={"help": "fraction of training images held out (selection, thresholds)"})
    skip_bad_images: bool = field(default=False, metadata={"help": "drop unreadable or too small images (counted)"})
    workers: int | None = field(default=None, metadata={"help": "loader processes per training process (default: the source's)"})

    def __post_init__(self) -> None:
        # No held-out images would mean thresholds and the kept epoch chosen on the very images
        # trained on: results that look valid and are not.  An error, not a warning, because
        # the fix costs nothing and a warning in a log is missed when the curve is read later.
        if not 0 < self.holdout < 1:
            raise ValueError(
                f"--holdout {self.holdout} must be a fraction between 0 and 1, exclusive: the held-out training "
                "images choose the kept epoch and set the early-exit thresholds, and with none they would be set "
                "on the images trained on. Use --holdout 0.1 (the default, appendix B.2)"
            )
