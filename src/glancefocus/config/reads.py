"""What a step reads: the plan of a GFNet's steps (``GFNetConfig.reads``).

The paper's steps are a glance (the whole image resized to P) and T − 1 focus patches (a
P×P region chosen by π).  Beyond the paper, a step may read the *whole image at R px*
(RANet, CVPR 2020; DRNet, NeurIPS 2021): the few images the glance and patches leave unsure
escalate to more pixels.  Whole reads come last: π reads the previous step's P-sized
feature map, so a patch step cannot follow a whole read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ReadKind = Literal["glance", "patch", "whole"]
_ORDER = {"glance": 0, "patch": 1, "whole": 2}


@dataclass(frozen=True)
class Read:
    """One step's input: ``kind`` and the side in pixels its encoder reads."""

    kind: ReadKind
    size: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.size}"


def parse_reads(reads: tuple[str, ...] | list[str], *, patch_size: int, image_size: int) -> tuple[Read, ...]:
    """``("glance", "patch", "whole:224")`` as :class:`Read` s, checked: the glance first, then
    patches, then whole reads; glance and patches read P px (``:P`` may be written), whole
    reads more than P and at most the image size."""
    plan = tuple(_parse_one(text, patch_size=patch_size, image_size=image_size) for text in reads)
    if not plan or plan[0].kind != "glance" or any(r.kind == "glance" for r in plan[1:]):
        raise ValueError(f"reads {','.join(reads)}: the first read, and only the first, must be the glance")
    if any(_ORDER[a.kind] > _ORDER[b.kind] for a, b in zip(plan, plan[1:])):
        raise ValueError(f"reads {','.join(reads)}: whole-image reads must come after every patch "
                         "(π reads the previous step's P-sized map)")
    return plan


def _parse_one(text: str, *, patch_size: int, image_size: int) -> Read:
    kind, _, size_text = text.strip().partition(":")
    if kind not in _ORDER:
        raise ValueError(f"unknown read {text!r}: use glance, patch or whole:R")
    if kind == "whole" and not size_text:
        raise ValueError(f"read {text!r} needs its size: whole:R, e.g. whole:{image_size}")
    try:
        size = int(size_text) if size_text else patch_size
    except ValueError:
        raise ValueError(f"read {text!r}: the size after ':' must be a whole number of pixels") from None
    if kind != "whole" and size != patch_size:
        raise ValueError(f"read {text!r}: the glance and patches read the patch size ({patch_size} px); "
                         f"write {kind} or {kind}:{patch_size}, or change --patch-size")
    if kind == "whole" and not patch_size < size <= image_size:
        raise ValueError(f"read {text!r}: a whole-image read must be larger than the patch size ({patch_size}) "
                         f"and at most the image size ({image_size})")
    return Read(kind, size)
