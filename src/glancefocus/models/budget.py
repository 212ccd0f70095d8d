"""Budgeted batch classification (SPEC "Evaluation"): exit fractions, thresholds, accuracy.

Everything here is vectorised over samples and over budgets: the 39-point curve of the
paper is one call of :func:`budgeted_curve`, and :func:`find_thresholds` /
:func:`budgeted_accuracy` take (K, T) budgets at once and the :class:`StepScores` of the
outputs computed once, so calling them per budget need not redo the max over classes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

#: The paper's 39 budgets: q = k / 20 for k = 1..39.
PAPER_QS: tuple[float, ...] = tuple(k / 20 for k in range(1, 40))


def exit_fractions(q: float, T: int) -> torch.Tensor:
    """Fractions of samples exiting at steps 1..T, proportional to q^t and summing to 1."""
    if T < 1:
        raise ValueError(f"T must be >= 1 (got {T})")
    if q <= 0:
        raise ValueError(f"q must be > 0 (got {q})")
    powers = torch.tensor([q**t for t in range(1, T + 1)], dtype=torch.float64)
    return powers / powers.sum()


def _exit_counts(fractions: torch.Tensor, n: int) -> torch.Tensor:
    """floor(N · fraction_t), as the authors' release (MSDNet's dynamic evaluation) computes it."""
    return torch.tensor([[math.floor(n * float(f)) for f in row] for row in fractions], dtype=torch.long)


def _thresholds_batched(confidence: torch.Tensor, order: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Thresholds for K budgets at once.

    Args:
        confidence: (T, N) max softmax probability of each held-out sample at each step.
        order: (T, N) the samples of each step by decreasing confidence.
        counts: (K, T) number of samples that should exit at each step.

    Returns:
        (K, T) thresholds; the last is −inf.  At step t the ``counts[k, t]``-th most confident
        sample not yet exited sets η_t, and every sample at least that confident exits.  If
        fewer samples remain than asked for, η_t = +inf and nobody exits at t.
    """
    T, N = confidence.shape
    K = counts.shape[0]
    thresholds = torch.full((K, T), math.inf, dtype=confidence.dtype, device=confidence.device)
    thresholds[:, -1] = -math.inf
    remaining = torch.ones(K, N, dtype=torch.bool, device=confidence.device)
    counts = counts.to(confidence.device)
    for t in range(T - 1):  # T is small; everything inside is over (K, N) at once
        sorted_conf = confidence[t, order[t]]
        ranked = remaining[:, order[t]]
        rank = ranked.long().cumsum(dim=1)  # rank among the not-yet-exited, per budget
        hit = (rank == counts[:, t : t + 1]) & ranked & (counts[:, t : t + 1] > 0)
        found = hit.any(dim=1)
        position = hit.float().argmax(dim=1)
        thresholds[found, t] = sorted_conf[position[found]]
        remaining &= ~(confidence[t].unsqueeze(0) >= thresholds[:, t : t + 1])
    return thresholds


class StepScores(NamedTuple):
    """What every budget computation reads of the (T, N, C) softmax outputs: the confidence
    max_c p_t and the prediction argmax_c p_t of each sample at each step, and the samples of
    each step by decreasing confidence, all (T, N).  Compute it once (:meth:`of`) and pass it
    to any number of budget calls: neither the max over classes nor the sort is redone.
    (Among equal confidences the sort's order is free: the threshold is a value, the same.)"""

    confidence: torch.Tensor
    prediction: torch.Tensor
    order: torch.Tensor

    @classmethod
    def of(cls, probs: torch.Tensor | StepScores) -> StepScores:
        if isinstance(probs, StepScores):
            return probs
        confidence, prediction = probs.max(dim=2)
        return cls(confidence, prediction, torch.argsort(confidence, dim=1, descending=True))


def find_thresholds(probs: torch.Tensor | StepScores, fractions: torch.Tensor) -> torch.Tensor:
    """Confidence thresholds η_1..η_T (η_T = −inf) from held-out softmax outputs.

    Args:
        probs: (T, N, C) softmax outputs of N held-out samples after each of T steps, or their
            :class:`StepScores` (computed once for many calls).
        fractions: (T,) fraction of samples to exit at each step (e.g. :func:`exit_fractions`),
            or (K, T) for K budgets at once.

    Returns (T,) or (K, T).  At each step the most confident not-yet-exited samples exit
    first, floor(N · fraction_t) of them (SPEC "Evaluation").
    """
    scores = StepScores.of(probs)
    T, N = scores.confidence.shape
    fractions = torch.as_tensor(fractions, dtype=torch.float64)
    batched = fractions.dim() == 2
    fractions = fractions.reshape(-1, fractions.shape[-1])
    if fractions.shape[1] != T:
        raise ValueError(f"fractions has {fractions.shape[1]} entries but probs has T={T} steps")
    thresholds = _thresholds_batched(scores.confidence, scores.order, _exit_counts(fractions, N))
    return thresholds if batched else thresholds[0]


def _exit_index(confidence: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """0-based index of each sample's exit step, (K, N), for (K, T) thresholds."""
    T = confidence.shape[0]
    if thresholds.shape[-1] != T:
        raise ValueError(f"expected {T} thresholds (one per step), got {thresholds.shape[-1]}")
    thresholds = thresholds.reshape(-1, T, 1).to(confidence)  # (K, T, 1)
    steps = torch.full((thresholds.shape[0], confidence.shape[1]), T - 1, dtype=torch.long, device=confidence.device)
    # Walk back from the last step so the earliest qualifying step wins; T is small, and this
    # is ten times faster than an argmax over the middle dimension of (K, T, N).
    for t in range(T - 2, -1, -1):
        steps = torch.where(confidence[t] >= thresholds[:, t], t, steps)
    return steps


def exit_steps(confidence: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """The first step (numbered 1..T, as in the paper) whose confidence reaches its
    threshold, per sample.

    ``confidence`` is (T, N); ``thresholds`` is (T,) or (K, T); returns (N,) or (K, N).
    The last step always exits.
    """
    steps = _exit_index(confidence, thresholds) + 1
    return steps if thresholds.dim() == 2 else steps[0]


def budgeted_accuracy(
    probs: torch.Tensor | StepScores, targets: torch.Tensor, madds, thresholds: torch.Tensor
) -> tuple[float, float] | tuple[torch.Tensor, torch.Tensor]:
    """Top-1 accuracy (%) and mean multiply-adds when each sample exits at the first step
    whose max probability reaches that step's threshold.

    Args:
        probs: (T, N, C) softmax outputs, or their :class:`StepScores`; targets: (N,);
        madds: T cumulative costs; thresholds: (T,), or (K, T) for K budgets at once.

    Returns floats for (T,) thresholds, (K,) float64 tensors for (K, T).
    """
    # The sort StepScores carries is for thresholds only: not computed here for raw outputs.
    confidence, prediction = (probs.confidence, probs.prediction) if isinstance(probs, StepScores) else probs.max(dim=2)
    thresholds = torch.as_tensor(thresholds)
    steps = _exit_index(confidence, thresholds)  # (K, N)
    correct = (prediction == targets.to(prediction.device)).gather(0, steps)  # (K, N)
    cost = torch.as_tensor(madds, dtype=torch.float64, device=steps.device)[steps]
    accuracy, mean_cost = correct.double().mean(dim=1) * 100, cost.mean(dim=1)
    if thresholds.dim() == 2:
        return accuracy, mean_cost
    return float(accuracy[0]), float(mean_cost[0])


def budgeted_curve(
    heldout_probs: torch.Tensor | StepScores,
    test_probs: torch.Tensor | StepScores,
    test_targets: torch.Tensor,
    madds,
    qs: tuple[float, ...] = PAPER_QS,
) -> tuple[torch.Tensor, list[dict]]:
    """Thresholds from held-out outputs and the test accuracy/cost at every budget q.

    Returns the (K, T) thresholds and a list of {"q", "madds", "accuracy"}.
    """
    heldout = StepScores.of(heldout_probs)
    fractions = torch.stack([exit_fractions(q, heldout.confidence.shape[0]) for q in qs])
    thresholds = find_thresholds(heldout, fractions)
    accuracy, cost = budgeted_accuracy(test_probs, test_targets, madds, thresholds)
    curve = [
        {"q": q, "madds": float(c), "accuracy": float(a)} for q, a, c in zip(qs, accuracy.tolist(), cost.tolist())
    ]
    return thresholds, curve


def threshold_json(v: float | str) -> float | str:
    """A threshold as JSON holds it: ±inf as the strings "inf" / "-inf" (JSON has no
    infinities), which ``float`` reads back; every writer of thresholds uses this."""
    v = float(v)
    return v if abs(v) != math.inf else ("inf" if v > 0 else "-inf")
