"""Early exit in wall-clock time: ``GFNet.predict`` vs all T steps on the whole batch.

    python -m benchmarks.bench_early_exit [--quick] [--device cpu|cuda] [--backbone NAME]

Random weights give uninformative confidences, so for each budget q the thresholds are set
on this very batch (``find_thresholds`` on the all-steps softmax outputs, with
``exit_fractions(q, T)``): the realised exits then follow the paper's exit distribution for
that budget.  For each budget we report the time of all steps (``model(images)``), the time
of ``predict``, the realised speed-up t_all / t_exit, the MAdds speed-up
madds[T-1] / mean(madds[exit step]) and their ratio (1.0 = early exit saves exactly the
time its MAdds promise).  Predictions and exit steps of ``predict`` are checked against
those computed from the all-steps run.
"""

from __future__ import annotations

import torch

from glancefocus import GFNet
from glancefocus.models.budget import exit_fractions, exit_steps, find_thresholds
from glancefocus.config import GFNetConfig

from ._common import compare, fmt_ms, parser, setup, write


def model_args(p) -> None:
    p.add_argument("--backbone", default=None, help="timm backbone (default regnety_006, the regnety_006-96-t5 recipe; test_resnet with --quick)")
    p.add_argument("--patch-size", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--T", type=int, default=None)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)


def build(args, device: torch.device) -> tuple[GFNet, torch.Tensor, str]:
    """The model (random weights, eval mode) and a batch of random images."""
    cfg = GFNetConfig(
        backbone=args.backbone or ("test_resnet" if args.quick else "regnety_006"),
        patch_size=args.patch_size or (32 if args.quick else 96),
        T=args.T or (3 if args.quick else 5),
        image_size=args.image_size or (64 if args.quick else 224),
        num_classes=args.classes or (10 if args.quick else 1000),
    )
    torch.manual_seed(0)
    model = GFNet(cfg).to(device).eval()
    batch = args.batch or (8 if args.quick else 64)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(1)).to(device)
    desc = f"{cfg.backbone} patch {cfg.patch_size} image {cfg.image_size} T={cfg.T} C={cfg.num_classes} batch {batch}"
    return model, images, desc


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    model_args(p)
    p.add_argument("--budgets", type=float, nargs="+", default=None, help="q values (default 0.5 1.0 1.5)")
    args = p.parse_args()
    device = setup(args)
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    qs = args.budgets or [0.5, 1.0, 1.5]

    model, images, desc = build(args, device)
    T = model.T
    madds = torch.tensor(model.madds(), dtype=torch.float64)

    with torch.inference_mode():
        probs = model(images).logits.float().softmax(dim=-1)  # (T, B, C)
    confidence, predictions = probs.max(dim=2)

    cases = []
    for q in qs:
        fractions = exit_fractions(q, T)
        thresholds = find_thresholds(probs, fractions)
        expected_steps = exit_steps(confidence, thresholds)
        expected_labels = predictions.gather(0, expected_steps.unsqueeze(0) - 1)[0]  # steps are 1..T
        pred = model.predict(images, thresholds)
        cases.append((q, fractions, thresholds, pred, int((pred.exit_step != expected_steps).sum()),
                      int((pred.labels != expected_labels).sum())))

    # Round-robin over all-steps and every budget, so load changes hit them alike.
    fns = {"all": lambda: model(images)}
    with torch.inference_mode():
        for q, _, thresholds, *_ in cases:
            fns[f"q={q:g}"] = lambda thresholds=thresholds: model.predict(images, thresholds)
        timed = compare(fns, device, repeats=repeats, warmup=warmup)
    all_steps = timed["all"]

    figures = []
    for q, fractions, thresholds, pred, step_mismatch, label_mismatch in cases:
        exit_t = timed[f"q={q:g}"]
        realised = all_steps["median_s"] / exit_t["median_s"]
        madds_speedup = float(madds[-1] / madds[pred.exit_step.cpu() - 1].mean())
        ratio = realised / madds_speedup
        counts = torch.bincount(pred.exit_step.cpu() - 1, minlength=T).tolist()
        check = (
            "exits and predictions match the all-steps run"
            if step_mismatch == 0 and label_mismatch == 0
            else f"MISMATCH: {step_mismatch} exit steps, {label_mismatch} predictions differ from the all-steps run"
        )
        line = (
            f"early exit q={q:g} {desc} ({device.type}): all steps {fmt_ms(all_steps['median_s'])}, "
            f"early exit {fmt_ms(exit_t['median_s'])}, realised speed-up {realised:.2f}x, "
            f"MAdds speed-up {madds_speedup:.2f}x, ratio {ratio:.2f} (exits per step {counts}; {check})"
        )
        print(line, flush=True)
        figures.append(
            {
                "line": line,
                "q": q,
                "model": desc,
                "exit_fractions": fractions.tolist(),
                "thresholds": thresholds.tolist(),
                "exit_counts": counts,
                "all_steps": all_steps,
                "early_exit": exit_t,
                "realised_speedup": realised,
                "madds_speedup": madds_speedup,
                "ratio": ratio,
                "exit_step_mismatches": step_mismatch,
                "prediction_mismatches": label_mismatch,
                "repeats": repeats,
                "warmup": warmup,
            }
        )
    write("bench_early_exit", args, device, figures, madds_per_step=madds.tolist(), config=model.config.to_dict())


if __name__ == "__main__":
    main()
