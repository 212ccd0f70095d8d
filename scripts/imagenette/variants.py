"""The variants of the Imagenette reproduction beyond the paper's recipe (regions that zoom,
π trained end to end, PPO on a learned scale): each a run of its own under
``--out/variants/NAME`` whose ``results.json`` has the main report's keys.  The variant with
the best budgeted curve becomes the headline of the main report."""

from __future__ import annotations

import json
from pathlib import Path

#: What each variant and the recipe report, with the same keys and meanings as results.json.
KEYS = ("patch_size", "T", "reads", "epochs", "madds", "anytime_accuracy", "thresholds", "budgeted", "oracle",
        "anytime_accuracy_by_policy", "policy_locations", "encoder_heads", "location_grid", "seconds", "recipe", "command")


def mean_budgeted(results: dict) -> float:
    return sum(p["accuracy"] for p in results["budgeted"]) / len(results["budgeted"])


def variants_measured(folder: Path) -> dict[str, dict]:
    """Each finished variant run under ``folder``, by its folder name."""
    found = {}
    for path in sorted(folder.glob("*/results.json")):
        results = json.loads(path.read_text())
        found[path.parent.name] = {k: results[k] for k in KEYS if k in results}
    return found


def with_variants(report: dict, folder: Path) -> dict:
    """``report`` with a ``variants`` map (the recipe's own model as ``recipe``, beside every
    variant), the best of them by mean budgeted accuracy as its headline: its keys at the top."""
    variants = variants_measured(folder)
    if not variants:
        return report
    recipe = {k: report[k] for k in KEYS if k in report}
    everything = {"recipe": recipe, **variants}
    best = best_gfnet(everything)
    headline = {**report, "variants": everything}
    if best != "recipe":
        headline.update(variants[best])
        headline["headline"] = f"variant {best}"
        headline["figures_from"] = f"variants/{best}"
    return headline


def best_gfnet(runs: dict[str, dict]) -> str:
    """The GFNet (never a cascade of static models: that is the baseline) whose budgeted curve
    is the highest at equal cost: its mean accuracy over 16 costs spread across the MAdds
    range every curve covers.  (The mean over the 39 budgets would favour fewer steps: with
    T = 2 the same q spends more of its images on the dear last step.)"""
    gfnets = {name: r for name, r in runs.items() if not is_cascade(name)}
    lo = max(min(p["madds"] for p in r["budgeted"]) for r in gfnets.values())
    hi = min(max(p["madds"] for p in r["budgeted"]) for r in gfnets.values())
    if hi <= lo:
        return max(gfnets, key=lambda name: mean_budgeted(gfnets[name]))
    costs = [lo + (hi - lo) * k / 15 for k in range(16)]
    return max(gfnets, key=lambda name: sum(curve_at(gfnets[name]["budgeted"], c) for c in costs))


def is_cascade(name: str) -> bool:
    """The plain cascades of static models are the variants whose name says so."""
    return "cascade" in name


def standard_error(accuracy: float, n: int) -> float:
    """One binomial standard error of an accuracy (%) measured on ``n`` images, in points."""
    p = accuracy / 100
    return 100 * (p * (1 - p) / n) ** 0.5


def curve_at(budgeted: list[dict], madds: float) -> float | None:
    """The budgeted curve's accuracy at ``madds`` (linear between its points, best point at or
    below each cost first: the curve a user can reach), None outside its range."""
    points = sorted((p["madds"], p["accuracy"]) for p in budgeted)
    if not points[0][0] <= madds <= points[-1][0]:
        return None
    frontier, best = [], -1.0
    for cost, accuracy in points:
        best = max(best, accuracy)
        frontier.append((cost, best))
    for (c0, a0), (c1, a1) in zip(frontier, frontier[1:]):
        if c0 <= madds <= c1:
            return a0 if c1 == c0 else a0 + (a1 - a0) * (madds - c0) / (c1 - c0)
    return frontier[-1][1]


def against_static(results: dict, static: list[dict], *, se: float = 0.35) -> dict:
    """The targets against the static backbone: the budgeted curve minus the static model at
    each static size's MAdds, and the fewest MAdds at which the curve comes within one
    standard error of the largest static model (None: never), as a fraction of its MAdds."""
    gaps = {row["size"]: (None if (at := curve_at(results["budgeted"], row["madds"])) is None else at - row["accuracy"])
            for row in static}
    largest = max(static, key=lambda row: row["size"])
    reached = [p["madds"] for p in results["budgeted"] if p["accuracy"] >= largest["accuracy"] - se]
    fraction = min(reached) / largest["madds"] if reached else None
    return {"gap_by_size": gaps, "reaches_largest_at_fraction": fraction, "largest_size": largest["size"]}
