"""Brute-force oracles the fast, vectorised code is checked against: plain-Python,
one-sample-at-a-time transcriptions of what the paper and the authors' release do."""

from __future__ import annotations

import math

import torch


def reference_crop(images: torch.Tensor, locations: torch.Tensor, P: int) -> torch.Tensor:
    """Per-sample slicing: top-left corner floor(l · (H − P)) as (row, col)."""
    _, _, H, W = images.shape
    out = []
    for b in range(images.shape[0]):
        row = math.floor(float(locations[b, 0]) * (H - P))
        col = math.floor(float(locations[b, 1]) * (W - P))
        assert 0 <= row <= H - P and 0 <= col <= W - P
        out.append(images[b, :, row : row + P, col : col + P])
    return torch.stack(out)


def reference_thresholds(probs: torch.Tensor, fractions) -> list[float]:
    """MSDNet's dynamic evaluation, sample by sample, in plain Python.

    At step t < T the not-yet-exited samples are visited in order of decreasing confidence;
    the floor(N·f_t)-th one sets η_t, and every remaining sample at least that confident
    exits.  If that count is 0 or not reachable, η_t = +inf.  η_T = −inf.
    """
    T, N, _ = probs.shape
    conf = probs.max(dim=2).values.tolist()  # T lists of N floats
    exited = [False] * N
    thresholds = []
    for t in range(T - 1):
        want = math.floor(N * float(fractions[t]))
        order = sorted(range(N), key=lambda n: -conf[t][n])
        eta = math.inf
        count = 0
        for n in order:
            if exited[n]:
                continue
            count += 1
            if count == want:
                eta = conf[t][n]
                break
        for n in range(N):
            if not exited[n] and conf[t][n] >= eta:
                exited[n] = True
        thresholds.append(eta)
    thresholds.append(-math.inf)
    return thresholds


def reference_budgeted(probs: torch.Tensor, targets: torch.Tensor, madds, thresholds) -> tuple[float, float]:
    T, N, _ = probs.shape
    correct, cost = 0, 0.0
    for n in range(N):
        for t in range(T):
            p = probs[t, n]
            if t == T - 1 or float(p.max()) >= float(thresholds[t]):
                correct += int(int(p.argmax()) == int(targets[n]))
                cost += float(madds[t])
                break
    return 100.0 * correct / N, cost / N
