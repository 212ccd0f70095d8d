"""The objective of Stages I and III: cross-entropy of every step with deep supervision
(appendix A.3), and an optional distillation term from a teacher's soft targets (beyond the
paper: the reproduction's lever that lets a static 224 px model teach fL and fC)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.outputs import GFNetOutput


def deep_supervision_loss(out: GFNetOutput, targets: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """(Σ_t CE(p_t, y) + λ Σ_t CE(head(ē_t), y)) / T, averaged over the batch."""
    T, B, C = out.logits.shape
    flat = targets.repeat(T)
    return (
        F.cross_entropy(out.logits.reshape(T * B, C), flat, reduction="sum")
        + aux_weight * F.cross_entropy(out.aux_logits.reshape(T * B, C), flat, reduction="sum")
    ) / (T * B)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """τ² · KL(softmax(teacher / τ) ‖ softmax(p_t / τ)), averaged over the T steps of
    ``logits`` (T, B, C) and the batch (Hinton et al., 2015); ``teacher_logits`` is (B, C)."""
    T, B, C = logits.shape
    target = F.softmax(teacher_logits.float() / temperature, dim=-1).expand(T, B, C).reshape(T * B, C)
    student = F.log_softmax(logits.float() / temperature, dim=-1).reshape(T * B, C)
    return F.kl_div(student, target, reduction="batchmean") * temperature**2
