"""RESULTS.md's tables from the reproduction's ``results.json`` (the ``table`` subcommand)."""

from __future__ import annotations

from .variants import against_static, curve_at, is_cascade, standard_error


def _m(value: float) -> str:
    return f"{value / 1e6:.1f}"


def _models(report: dict) -> list[str]:
    lines = ["| model | MMAdds / image | top-1 (%) |", "|---|---:|---:|"]
    for s in report["static"]:
        lines.append(f"| static EfficientNet-Lite0, {s['size']} px ({s['epochs']} epochs) | {_m(s['madds'])} | {s['accuracy']:.2f} |")
    g = report["glance_encoder_alone"]
    lines.append(f"| glance encoder alone, low-res fine-tuned ({report['patch_size']} px, appendix B.1) | {_m(g['madds'])} | {g['accuracy']:.2f} |")
    for t, (madds, acc) in enumerate(zip(report["madds"], report["anytime_accuracy"]), 1):
        lines.append(f"| GFNet, exit after step {t} (anytime) | {_m(madds)} | {acc:.2f} |")
    o = report["oracle"]
    lines.append(f"| GFNet, oracle exit (first correct step) | {_m(o['madds'])} | {o['accuracy']:.2f} |")
    return lines


def _policies(report: dict) -> list[str]:
    T = report["T"]
    lines = ["| policy | " + " | ".join(f"step {t}" for t in range(1, T + 1)) + " |", "|---|" + "---:|" * T]
    for name, accs in report.get("anytime_accuracy_by_policy", {}).items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.2f}" for a in accs) + " |")
    for stage, row in report.get("stage3_ablation", {}).items():
        for name, accs in row["anytime_accuracy_by_policy"].items():
            if len(accs) == T:  # the recipe's model, when it is the headline
                lines.append(f"| {name}, {stage} | " + " | ".join(f"{a:.2f}" for a in accs) + " |")
    return lines


def _curve(report: dict) -> list[str]:
    curve = report.get("learning_curve")
    if not curve:
        return []
    T = report["T"]
    lines = ["| Stage I epoch | " + " | ".join(f"step {t} (random patches)" for t in range(1, T + 1)) + " | oracle exit |",
             "|---:|" + "---:|" * (T + 1)]
    for point in curve:
        accs = " | ".join(f"{a:.2f}" for a in point["anytime_accuracy"])
        lines.append(f"| {point['epoch']} | {accs} | {point['oracle']['accuracy']:.2f} |")
    return [""] + lines


def _components(report: dict) -> list[str]:
    """Each part alone: the encoders' own heads on one input, and the oracle exit by step."""
    heads = report.get("encoder_heads")
    if not heads:
        return []
    T = report["T"]
    lines = ["| per step | " + " | ".join(f"step {t}" for t in range(1, T + 1)) + " |", "|---|" + "---:|" * T]
    for patches, accs in heads.items():
        lines.append(f"| encoder head alone (fG on the glance, fL on one {patches} patch, fW on the whole image) | "
                     + " | ".join(f"{a:.2f}" for a in accs) + " |")
    lines.append("| GFNet, learned patches (anytime) | " + " | ".join(f"{a:.2f}" for a in report["anytime_accuracy"]) + " |")
    if "by_step" in report["oracle"]:
        lines.append("| oracle exit within t steps | " + " | ".join(f"{a:.2f}" for a in report["oracle"]["by_step"]) + " |")
    return [""] + lines


def _recipe(report: dict) -> dict:
    """The recipe's own model (the paper's plan), whichever model is the headline."""
    return report.get("variants", {}).get("recipe", report)


def _after(report: dict, stage: str) -> dict:
    """The evaluation of the model "after stage2" or "after stage3" (the headline's is the report's)."""
    return report.get("stage3_ablation", {}).get(stage, report)


def _grid(report: dict) -> list[str]:
    """Step 2 over a grid of places: what any policy could reach there, beside π and random."""
    grids = report.get("location_grid")
    if not grids:
        return []
    lines = ["| step 2 | glance (step 1) | learned π | random | mean over the places | best single place (chosen on held-out) "
             "| most confident place | each image's best place (oracle) | oracle exit within 2 steps |", "|---|" + "---:|" * 8]
    for stage, g in grids.items():
        policies = _after(report, stage)["anytime_accuracy_by_policy"]
        best = g["best_place"]
        lines.append(f"| {stage}, {g['grid']}×{g['grid']} places | {policies['learned'][0]:.2f} | {policies['learned'][1]:.2f} "
                     f"| {policies['random'][1]:.2f} | {g['mean_place']:.2f} | {best['accuracy']:.2f} at ({best['location'][0]:.2f}, "
                     f"{best['location'][1]:.2f}) | {g['most_confident_place']:.2f} | {g['best_place_per_image']:.2f} | {g['oracle_exit_within_2']:.2f} |")
    return [""] + lines


def _bound(report: dict) -> list[str]:
    """π refitted to the exact step-2 reward (and to step 2's correctness) over the grid, beside π and random on the same val images."""
    bounds = report.get("policy_bound")
    if not bounds:
        return []
    lines = ["| π refitted at step 2 | fitted to | held-out J: mean place / π / refitted, each seed / each image's best place "
             "| val step 2 (%): refitted, each seed | refitted − random, points (paired SE) | val steps 2..T, first fit as the model's π "
             "| its mean place (row, col) (std) |", "|---|---|---|---|---|---|---|"]
    for stage, b in bounds.items():
        learned, random = b["learned"], b["random"]
        lines.append(f"| {stage}, {b['train_images']} images | (π itself; random) | | {learned['step2_accuracy']:.2f}; "
                     f"{random['step2_accuracy']:.2f} | {learned['over_random']['gain']:+.2f} ({learned['over_random']['paired_se']:.2f}) "
                     "| | |")
        for objective, f in b["fits"].items():
            h, seeds, where = f["heldout"], f["seeds"], f["seeds"][0]["places"]
            fitted_j = " ".join(format(s["heldout"], ".3f") for s in seeds)
            step2 = " / ".join(format(s["step2_accuracy"], ".2f") for s in seeds)
            gains = " / ".join(f"{s['over_random']['gain']:+.2f} ({s['over_random']['paired_se']:.2f})" for s in seeds)
            lines.append(f"| {stage}, {b['train_images']} images | {objective} | {h['mean_place']:.3f} / {h['learned']:.3f} / "
                         f"{fitted_j} / {h['best_place_per_image']:.3f} | {step2} | {gains} "
                         f"| {' / '.join(format(a, '.2f') for a in f['anytime_accuracy'][1:])} "
                         f"| ({where['mean'][0]:.2f}, {where['mean'][1]:.2f}) ({where['std'][0]:.2f}, {where['std'][1]:.2f}) |")
    return [""] + lines


def _levers(report: dict) -> list[str]:
    """One row per lever run that trained a Stage I of its own (the same epochs, random patches)."""
    runs = {name: run for name, run in report.get("levers", {}).items() if "stage1" in run["seconds"]}
    if not runs:
        return []
    lines = ["| lever run | patch (px) | T | distill W | fG trainable | Stage I epochs | anytime, steps 1..T (random patches) "
             "| MMAdds, steps 1..T | oracle exit | oracle MMAdds | Stage I (min) |", "|---|---:|---:|---:|---|---:|---|---|---:|---:|---:|"]
    for name, run in runs.items():
        r, point = run["recipe"], run["stage1"]
        minutes = f"{run['seconds']['stage1'] / 60:.0f}"
        lines.append(f"| {name} | {r['patch_size']} | {r['T']} | {r['distill_weight']:g} | {'yes' if r['glance_trainable_in_stage1'] else 'no'} "
                     f"| {r['stage1_epochs']} | {' / '.join(f'{a:.2f}' for a in point['anytime_accuracy'])} "
                     f"| {' / '.join(f'{m / 1e6:.0f}' for m in run['madds'])} "
                     f"| {point['oracle']['accuracy']:.2f} | {_m(point['oracle']['madds'])} | {minutes} |")
    return [""] + lines


def _stage2_runs(report: dict) -> list[str]:
    """π after the recipe's Stage II and after each lever run's own (patches at steps 2..T),
    and after Stage III where the run went on to it."""
    runs = {f"recipe, π kept of {_recipe(report)['epochs']['stage2']} epochs": _after(report, "after stage2")}
    if "stage3_ablation" in report:
        runs["recipe, after Stage III"] = _after(report, "after stage3")
    for name, run in report.get("levers", {}).items():
        if "stage2" in run:
            runs[f"{name}, π kept of {run['recipe']['stage2_epochs']} epochs"] = run["stage2"]
        runs |= {f"{name}, π after epoch {point['epoch']}": point for point in run.get("stage2_curve", [])}
        if "stage3" in run:
            runs[f"{name}, after Stage III"] = run["stage3"]
    if len(runs) < 2:
        return []
    lines = ["| Stage II run | learned, steps 2..T | random | fixed | learned − random at step 2 | mean location at step 2 "
             "(row, col) | std across images at step 2 (row, col) |", "|---|---|---|---|---:|---|---|"]
    for name, r in runs.items():
        by, where = r["anytime_accuracy_by_policy"], r["policy_locations"][0]
        steps = {k: " / ".join(f"{a:.2f}" for a in v[1:]) for k, v in by.items()}
        lines.append(f"| {name} | {steps['learned']} | {steps['random']} | {steps['fixed']} | {by['learned'][1] - by['random'][1]:+.2f} "
                     f"| ({where['mean'][0]:.2f}, {where['mean'][1]:.2f}) | ({where['std'][0]:.3f}, {where['std'][1]:.3f}) |")
    return [""] + lines


def _variants(report: dict) -> list[str]:
    """Each way of training π and sizing its regions, on the same data, epochs chosen on the
    held-out images: anytime per step, oracle, learned − random at step 2, the budgeted
    curve against the static backbone, training minutes."""
    variants = report.get("variants")
    if not variants:
        return []
    T = _recipe(report)["T"]
    lines = ["| variant | policy training | region side (px) | " + " | ".join(f"step {t}" for t in range(1, T + 1))
             + " | oracle exit | step 2: learned − random | curve − static at 128 / 160 / 224 px MAdds | reaches 224 px (±1 SE) at | training after the glance (min) |",
             "|---|---|---|" + "---:|" * (T + 5)]
    for name, v in variants.items():
        if "reads" in v or len(v["anytime_accuracy"]) != T:  # plans with whole-image reads, cascades: _escalation's table
            continue
        r = v.get("recipe", {})
        side = f"{r['scale_range'][0]}–{r['scale_range'][1]}" if r.get("patch_scale") == "learned" else str(v["patch_size"])
        by = v["anytime_accuracy_by_policy"]
        target = against_static(v, report["static"])
        gaps = " / ".join("–" if (g := target["gap_by_size"].get(size)) is None else f"{g:+.2f}" for size in (128, 160, 224))
        reach = target["reaches_largest_at_fraction"]
        minutes = sum(v.get("seconds", {}).get(k, 0) for k in ("stage1", "stage2", "stage3", "end2end")) / 60
        lines.append(f"| {name} | {r.get('policy_training', 'ppo')} | {side} | " + " | ".join(f"{a:.2f}" for a in v["anytime_accuracy"])
                     + f" | {v['oracle']['accuracy']:.2f} | {by['learned'][1] - by['random'][1]:+.2f} | {gaps} | "
                     + ("not reached" if reach is None else f"{reach:.2f}× its MAdds") + f" | {minutes:.0f} |")
    return [""] + lines


ESCALATION_MADDS = (100e6, 125e6, 150e6, 175e6, 200e6)


def _escalation(report: dict) -> list[str]:
    """The plans that escalate to whole-image reads against the plain cascades of static
    models and the static model: per step (accuracy at cumulative MMAdds), oracle, the
    budgeted curve at fixed costs, the fewest MAdds that reach the static 224 px accuracy."""
    variants = {n: v for n, v in report.get("variants", {}).items() if "reads" in v or n == "recipe"}
    if len(variants) < 2:
        return []
    largest = max(report["static"], key=lambda s: s["size"])
    lines = ["| model | reads | steps: top-1 % at MMAdds | oracle exit | budgeted curve at "
             + " / ".join(f"{m / 1e6:.0f}" for m in ESCALATION_MADDS) + f" MMAdds | reaches {largest['size']} px (±1 SE) at "
             "| training (min) |",
             "|---|---|---|---:|---|---:|---:|"]
    static_row = " / ".join(_at_static(report["static"], m) for m in ESCALATION_MADDS)
    lines.append(f"| static Lite0 (interpolated between sizes) | one size | – | – | {static_row} | 1.00× its MAdds | |")
    for name, v in sorted(variants.items(), key=lambda item: (is_cascade(item[0]), item[0] != "recipe", item[0])):
        steps = " → ".join(f"{a:.2f} @ {m / 1e6:.0f}" for a, m in zip(v["anytime_accuracy"], v["madds"]))
        curve = " / ".join("–" if (a := curve_at(v["budgeted"], m)) is None else f"{a:.2f}" for m in ESCALATION_MADDS)
        reach = against_static(v, report["static"], se=standard_error(largest["accuracy"], report.get("num_val", 3925)))
        fraction = reach["reaches_largest_at_fraction"]
        minutes = sum(v.get("seconds", {}).get(k, 0) for k in ("stage1", "stage2", "stage3", "stage3_on_plan")) / 60
        lines.append(f"| {name} | {v.get('reads') or ','.join(['glance'] + ['patch'] * (v['T'] - 1))} | {steps} | {v['oracle']['accuracy']:.2f} "
                     f"@ {v['oracle']['madds'] / 1e6:.0f} | {curve} | " + ("not reached" if fraction is None else f"{fraction:.2f}×")
                     + f" | {minutes:.0f} |")
    return [""] + lines


def _at_static(static: list[dict], madds: float) -> str:
    """The static model's accuracy at ``madds``, linear between its sizes."""
    points = [{"madds": s["madds"], "accuracy": s["accuracy"]} for s in static]
    at = curve_at(points, madds)
    return "–" if at is None else f"{at:.2f}"


def markdown_table(report: dict) -> str:
    """The models, the patch policies (with and without Stage III when both ran), each part
    alone, step 2 over a grid of places (and π refitted to it), the Stage I learning curve, the lever runs (and their
    Stage II where they ran one), where π looks, and the budgeted curve."""
    lines = _models(report) + [""] + _policies(report) + _components(report) + _grid(report) + _bound(report) + _curve(report)
    lines += _levers(report) + _stage2_runs(report) + _variants(report) + _escalation(report)
    lines += ["", "| focus step | mean location (row, col[, scale fraction]) | std across images |", "|---:|---|---|"]
    for t, s in enumerate(report["policy_locations"], 2):
        lines.append(f"| {t} | ({', '.join(f'{m:.2f}' for m in s['mean'])}) | ({', '.join(f'{d:.3f}' for d in s['std'])}) |")
    lines += ["", "| q | MMAdds / image | top-1 (%) |", "|---:|---:|---:|"]
    for p in report["budgeted"][::4] + ([report["budgeted"][-1]] if len(report["budgeted"]) % 4 != 1 else []):
        lines.append(f"| {p['q']:.2f} | {_m(p['madds'])} | {p['accuracy']:.2f} |")
    return "\n".join(lines)
