"""What a GFNet step takes and gives: the state carried between steps, one step's output,
all steps' output, and an early-exit prediction (every tensor batch-first, steps first)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepState:
    """What step t+1 needs from steps 1..t; every tensor is batch-first."""

    feature_map: torch.Tensor  # last encoder map, detached: π's input (as the release)
    classifier: torch.Tensor
    policy: torch.Tensor | None = None

    def select(self, keep: torch.Tensor) -> StepState:
        """The state of the samples in ``keep`` (a boolean mask or index tensor)."""
        return StepState(
            self.feature_map[keep],
            self.classifier[keep],
            None if self.policy is None else self.policy[keep],
        )


@dataclass
class StepOutput:
    logits: torch.Tensor  # (B, C) logits of p_t
    aux_logits: torch.Tensor | None  # (B, C) the encoder's own head on ē_t (deep supervision)
    location: torch.Tensor | None = None  # (B, A) l_t (and σ_t), None for the glance
    log_prob: torch.Tensor | None = None  # (B,) of a sampled l_t
    value: torch.Tensor | None = None  # (B,) critic's V(s_t)
    policy_input: torch.Tensor | None = None  # the map π read, kept for PPO re-evaluation


@dataclass
class GFNetOutput:
    logits: torch.Tensor  # (T, B, C)
    aux_logits: torch.Tensor | None  # (T, B, C)
    locations: torch.Tensor  # (K, B, A) of the K = config.patch_steps patch steps, step-first; A = config.action_dims
    log_probs: torch.Tensor | None = None  # (K, B), with locations="sample"
    values: torch.Tensor | None = None  # (K, B)
    policy_inputs: list[torch.Tensor] | None = None


@dataclass
class Prediction:
    """Result of early-exit inference for a batch of B images.

    Steps are numbered as in the paper, 1 (the glance) to T, in every public output.
    """

    labels: torch.Tensor  # (B,) predicted class at the exit step
    probs: torch.Tensor  # (B, C) softmax at the exit step
    exit_step: torch.Tensor  # (B,) step 1..T at which each image exited
    locations: torch.Tensor  # (K, B, A) regions of the K patch steps, step-first as in GFNetOutput; NaN after the exit
