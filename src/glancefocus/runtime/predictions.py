"""What ``glancefocus predict`` shares between its PyTorch and ONNX Runtime paths: the
budget point, the result rows and their summary.  Needs numpy only (no torch), so the
deployed predictor can use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write_text
from .preprocess import read_images


def choose_budget_point(points: Sequence[dict[str, Any]], budget: float | None = None) -> int:
    """Index of the stored budget point to use: the most accurate one whose mean MAdds is
    within ``budget``, or the most accurate overall without a budget (SPEC "Evaluation").

    A budget is a ceiling: one above the dearest point takes the most accurate point.  One
    below the cheapest point is an error naming the cheapest (no point fits).
    """
    if not points:
        raise ValueError("this model has no budgeted curve: run `glancefocus evaluate --checkpoint CK` first")
    within = [i for i, p in enumerate(points) if budget is None or p["madds"] <= budget]
    if not within:
        low, high = min(p["madds"] for p in points), max(p["madds"] for p in points)
        raise ValueError(
            f"--budget {budget:g} is below this model's cheapest budget point, {low:.4g} mean multiply-adds per "
            f"image ({low / 1e6:.1f} M; its curve spans {low:.4g} to {high:.4g}): choose a budget of at least {low:.4g}"
        )
    return max(within, key=lambda i: points[i]["accuracy"])


def prediction_rows(
    files: Sequence[Path],
    probs: np.ndarray,
    exit_step: np.ndarray,
    locations: np.ndarray,
    madds: Sequence[float],
    classes: Sequence[str],
    descriptions: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per file: label, class (and its description), probability, exit step
    (``exit_step`` is 1..T), cumulative MAdds spent and the focus locations read before the
    exit (``locations`` is step-first, (T-1, B, 2))."""
    labels = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    rows = []
    for i, f in enumerate(files):
        label, step = int(labels[i]), int(exit_step[i])
        rows.append({
            "file": str(f),
            "label": label,
            "class": classes[label] if classes else str(label),
            "description": descriptions[label] if descriptions else None,
            "probability": float(confidence[i]),
            "exit_step": step,
            "madds": float(madds[step - 1]),
            "locations": locations[: step - 1, i].tolist(),
        })
    return rows


def predict_in_batches(
    files: Sequence[Path],
    transform: Callable[[Any], np.ndarray],
    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    madds: Sequence[float],
    classes: Sequence[str],
    descriptions: Sequence[str] | None,
    batch_size: int = 64,
    skip_bad: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Read ``files`` in batches, ``run`` early exit on each ((probs, exit steps, locations)
    of a (B, 3, H, W) batch) and return (rows, skipped files)."""
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for start in range(0, len(files), batch_size):
        images, kept, bad = read_images(files[start : start + batch_size], transform, skip_bad=skip_bad)
        skipped += bad
        if kept:
            probs, exit_step, locations = run(np.stack(images))
            rows += prediction_rows(kept, probs, exit_step, locations, madds, classes, descriptions)
    if not rows:
        raise ValueError(f"none of the {len(files)} image(s) could be read ({skipped[0]['file']}: {skipped[0]['error']} ...)")
    return rows, skipped


def print_predictions(rows: list[dict[str, Any]], point: dict[str, Any], skipped: list[dict[str, str]], json_out: Path | None) -> None:
    """Print one line per image and a summary; write ``{budget_point, predictions, skipped}``."""
    for r in rows:
        name = f"{r['class']} ({r['description']})" if r["description"] else r["class"]
        print(f"{r['file']}\t{name}\tp={r['probability']:.3f}\texit step {r['exit_step']}\t{r['madds'] / 1e6:.1f} MMAdds")
    for s in skipped:
        print(f"skipped {s['file']}: {s['error']}")
    mean = sum(r["madds"] for r in rows) / len(rows)
    print(f"{len(rows)} images, {len(skipped)} skipped, mean {mean / 1e6:.1f} MMAdds "
          f"(budget point q={point['q']}: {point['madds'] / 1e6:.1f} M, {point['accuracy']:.1f}% on val)")
    if json_out:
        atomic_write_text(json_out, json.dumps({"budget_point": point, "predictions": rows, "skipped": skipped}, indent=2))
