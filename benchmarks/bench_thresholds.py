"""Budgeted batch classification: thresholds and test accuracy/MAdds for the paper's 39 budgets.

    python -m benchmarks.bench_thresholds [--quick] [--device cpu|cuda]

Ours is ``budgeted_curve`` (vectorised over samples and budgets).  The baseline is a
straightforward per-sample Python transcription of the MSDNet / GFNet dynamic evaluation
(``dynamic_evaluate`` of the authors' releases): per budget and step, visit the held-out
samples in order of decreasing confidence, count the ones not yet exited, and take the
floor(N·f_t)-th one's confidence as η_t; then loop over test samples and steps to find each
exit.  Like the releases, the baseline uses torch for the max over classes and the sort.
Both start from the same (T, N, C) softmax outputs: two independent random sets (held-out
and test) whose confidence and accuracy grow with the step, as a trained GFNet's do.
"""

from __future__ import annotations

import math
import time

import torch

from glancefocus.models.budget import PAPER_QS, StepScores, budgeted_accuracy, budgeted_curve, exit_fractions, find_thresholds

from ._common import compare, fmt_ms, parser, setup, write


def make_probs(N: int, T: int, C: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random softmax outputs (T, N, C) and targets (N,).

    Logits are unit Gaussian noise (partly shared across steps, like the features of one
    image) plus a boost of the true class that grows with the step and with a per-sample
    "ease" in [0, 1].  With C = 1000: top-1 about 55, 63, 69, 72, 76 % and median
    confidence about 0.03, 0.05, 0.09, 0.18, 0.31 at steps 1..5.
    """
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(C, (N,), generator=g)
    ease = torch.rand(N, generator=g)
    shared = torch.randn(N, C, generator=g)
    probs = torch.empty(T, N, C)
    rows = torch.arange(N)
    for t in range(T):
        logits = torch.randn(N, C, generator=g).mul_(0.6).add_(shared, alpha=0.8)
        logits[rows, targets] += ease * (7.0 + 1.5 * t)
        torch.softmax(logits, dim=1, out=probs[t])
    return probs.to(device), targets.to(device)


def loop_curve(heldout: torch.Tensor, test: torch.Tensor, targets: torch.Tensor, madds: list[float], qs) -> tuple[list, list]:
    """The per-sample Python loop (MSDNet's dynamic evaluation); returns thresholds and curve."""
    T, N, _ = heldout.shape
    conf_h, _ = heldout.max(dim=2)
    order = torch.argsort(conf_h, dim=1, descending=True).tolist()
    conf_h = conf_h.tolist()
    conf_t, pred_t = test.max(dim=2)
    conf_t, pred_t, labels = conf_t.tolist(), pred_t.tolist(), targets.tolist()
    n_test = len(labels)
    all_thresholds, curve = [], []
    for q in qs:
        powers = [q**t for t in range(1, T + 1)]
        total = sum(powers)
        fractions = [p / total for p in powers]
        exited = [False] * N
        thresholds = [math.inf] * T
        for t in range(T - 1):
            want = math.floor(N * fractions[t])
            conf, count = conf_h[t], 0
            for n in order[t]:
                if not exited[n]:
                    count += 1
                    if count == want:
                        thresholds[t] = conf[n]
                        break
            eta = thresholds[t]
            for n in range(N):
                if conf[n] >= eta:
                    exited[n] = True
        thresholds[T - 1] = -math.inf
        correct, cost = 0, 0.0
        for n in range(n_test):
            for t in range(T):
                if conf_t[t][n] >= thresholds[t]:  # the last threshold is -inf: everybody exits
                    correct += pred_t[t][n] == labels[n]
                    cost += madds[t]
                    break
        all_thresholds.append(thresholds)
        curve.append({"q": q, "madds": cost / n_test, "accuracy": 100.0 * correct / n_test})
    return all_thresholds, curve


def per_budget(heldout, test, targets: torch.Tensor, madds: list[float], qs) -> list[tuple[float, float]]:
    """The public API called once per budget, as a user would: find_thresholds then
    budgeted_accuracy.  Pass raw (T, N, C) probabilities or their StepScores computed once."""
    T = StepScores.of(heldout).confidence.shape[0]
    return [budgeted_accuracy(test, targets, madds, find_thresholds(heldout, exit_fractions(q, T))) for q in qs]


def check_equal(heldout, test, targets, madds, qs) -> tuple[list, float, float]:
    """budgeted_curve against the loop on every budget; returns our curve, the loop's
    first-run time and the largest accuracy difference (0: identical)."""
    ours_thr, ours_curve = budgeted_curve(heldout, test, targets, madds, qs)
    start = time.perf_counter()
    loop_thr, loop_curve_ = loop_curve(heldout, test, targets, madds, qs)
    first_loop_s = time.perf_counter() - start
    ours_thr_list = ours_thr.double().cpu().tolist()
    max_acc_diff = max(abs(a["accuracy"] - b["accuracy"]) for a, b in zip(ours_curve, loop_curve_))
    max_madds_rel = max(abs(a["madds"] - b["madds"]) / b["madds"] for a, b in zip(ours_curve, loop_curve_))
    if ours_thr_list != loop_thr or max_acc_diff > 1e-9 or max_madds_rel > 1e-12:
        bad = [k for k, (a, b) in enumerate(zip(ours_thr_list, loop_thr)) if a != b]
        raise SystemExit(
            f"budgeted_curve differs from the per-sample loop: thresholds differ at budgets {bad[:5]}, "
            f"max |accuracy diff| {max_acc_diff}, max relative MAdds diff {max_madds_rel}"
        )
    scores = per_budget(StepScores.of(heldout), StepScores.of(test), targets, madds, qs)
    assert scores == [(p["accuracy"], p["madds"]) for p in ours_curve], "the per-budget API differs from budgeted_curve"
    return ours_curve, first_loop_s, max_acc_diff


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="samples per set (default 50,000)")
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--T", type=int, default=5)
    p.add_argument("--loop-budgets", type=int, default=None,
                   help="time the loop on the first K budgets only and extrapolate linearly to all 39")
    args = p.parse_args()
    device = setup(args)
    N = args.n or (2000 if args.quick else 50_000)
    C = args.classes or (100 if args.quick else 1000)
    T, qs = args.T, PAPER_QS
    repeats = args.repeats or (2 if args.quick else 5)
    madds = [0.3e9 * (t + 1) for t in range(T)]  # any increasing cumulative costs

    start = time.perf_counter()
    heldout, _ = make_probs(N, T, C, seed=1, device=device)
    test, targets = make_probs(N, T, C, seed=2, device=device)
    setup_s = time.perf_counter() - start
    loop_qs = qs[: args.loop_budgets] if args.loop_budgets else qs
    with torch.inference_mode():
        ours_curve, first_loop_s, max_acc_diff = check_equal(heldout, test, targets, madds, qs)
        # Round-robin; the correctness run above was the loop's warm-up.
        timed = compare(
            {
                "ours": lambda: budgeted_curve(heldout, test, targets, madds, qs),
                "loop": lambda: loop_curve(heldout, test, targets, madds, loop_qs),
                "max_over_classes": lambda: (heldout.max(dim=2), test.max(dim=2)),
                "per_budget_scores": lambda: per_budget(StepScores.of(heldout), StepScores.of(test), targets, madds, qs),
                "per_budget_probs": lambda: per_budget(heldout, test, targets, madds, loop_qs),
            },
            device, repeats=repeats, warmup=args.warmup or 0,
        )
    figure = summarise(timed, scale=len(qs) / len(loop_qs), N=N, T=T, C=C, device=device, budgets=len(qs))
    figure.update(max_abs_accuracy_diff=max_acc_diff, loop_first_run_all_budgets_s=first_loop_s, repeats=repeats,
                  warmup=f"the correctness run of each, then {args.warmup or 0} untimed round(s)")
    anytime = (test.max(dim=2).indices == targets).double().mean(dim=1).mul(100).tolist()
    write("bench_thresholds", args, device, [figure], data_setup_s=setup_s, data_anytime_accuracy=anytime, curve=ours_curve)


def summarise(timed: dict, *, scale: float, N: int, T: int, C: int, device: torch.device, budgets: int) -> dict:
    """The printed line and the JSON figure: every time against the loop's on all budgets."""
    ours, loop, reduce = timed["ours"], timed["loop"], timed["max_over_classes"]
    loop_all_s = loop["median_s"] * scale
    scores_s, probs_s = timed["per_budget_scores"]["median_s"], timed["per_budget_probs"]["median_s"] * scale
    speedup = loop_all_s / ours["median_s"]
    speedup_excl = (loop_all_s - reduce["median_s"]) / (ours["median_s"] - reduce["median_s"])
    extrapolated = f" (loop timed on {round(budgets / scale)} budgets, x{scale:.3g} extrapolated)" if scale != 1 else ""
    line = (
        f"thresholds+evaluation {budgets} budgets N={N:,} T={T} C={C} ({device.type}): "
        f"ours {fmt_ms(ours['median_s'])}, per-sample loop {fmt_ms(loop_all_s)}{extrapolated}, "
        f"speed-up {speedup:.1f}x; {speedup_excl:.0f}x without the max over classes both need "
        f"({fmt_ms(reduce['median_s'])}) (identical thresholds and accuracies); per-budget API calls: "
        f"{fmt_ms(scores_s)} with StepScores computed once ({loop_all_s / scores_s:.2g}x the loop), "
        f"{fmt_ms(probs_s)} passing probabilities ({loop_all_s / probs_s:.2g}x the loop)"
    )
    print(line, flush=True)
    return {
        "line": line, "N_heldout": N, "N_test": N, "T": T, "C": C, "budgets": budgets, "identical_thresholds": True,
        "ours": ours, "loop": loop, "loop_budgets_timed": round(budgets / scale), "loop_all_budgets_s": loop_all_s,
        "max_over_classes_s": reduce, "speedup": speedup, "speedup_excluding_max_over_classes": speedup_excl,
        "per_budget_api_with_step_scores_s": scores_s, "per_budget_api_with_probs_s": probs_s,
        "per_budget_api_with_step_scores_speedup": loop_all_s / scores_s,
        "per_budget_api_with_probs_speedup": loop_all_s / probs_s,
    }


if __name__ == "__main__":
    main()
