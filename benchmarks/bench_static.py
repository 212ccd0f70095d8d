"""GFNet vs its static backbone at full resolution: images per second at equal batch size.

    python -m benchmarks.bench_static [--quick] [--device cpu|cuda] [--backbone NAME] [--budget Q]

Three ways to classify the same batch of full-resolution images: the plain timm backbone on
the whole image, GFNet running all T steps (``model(images)``), and GFNet with early exit
(``predict``) at a mid budget (q = 1.0: equal exit fractions), with thresholds set on this
batch as in bench_early_exit.py.  All in eval mode under inference_mode; random weights.
"""

from __future__ import annotations

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from glancefocus.models.budget import exit_fractions, find_thresholds

from ._common import compare, parser, setup, write
from .bench_early_exit import build, model_args


def static_madds(model: torch.nn.Module, size: int, device: torch.device) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size, device=device))
    return counter.get_total_flops() / 2


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    model_args(p)
    p.add_argument("--budget", type=float, default=1.0, help="q of the early-exit run (default 1.0)")
    args = p.parse_args()
    device = setup(args)
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)

    model, images, desc = build(args, device)
    cfg = model.config
    B, size = images.shape[0], cfg.image_size
    torch.manual_seed(0)
    static = timm.create_model(cfg.backbone, num_classes=cfg.num_classes).to(device).eval()
    madds = model.madds()
    static_cost = static_madds(static, size, device)

    with torch.inference_mode():
        probs = model(images).logits.float().softmax(dim=-1)
        thresholds = find_thresholds(probs, exit_fractions(args.budget, cfg.T))
        pred = model.predict(images, thresholds)
        timed = compare(
            {"static": lambda: static(images), "all": lambda: model(images),
             "exit": lambda: model.predict(images, thresholds)},
            device, repeats=repeats, warmup=warmup,
        )
    t_static, t_all, t_exit = timed["static"], timed["all"], timed["exit"]
    exit_cost = float(torch.tensor(madds, dtype=torch.float64)[pred.exit_step.cpu() - 1].mean())

    ips = {name: B / t["median_s"] for name, t in (("static", t_static), ("all", t_all), ("exit", t_exit))}
    line = (
        f"static vs GFNet, {desc} ({device.type}): {cfg.backbone} at {size} {ips['static']:.1f} img/s "
        f"({static_cost / 1e6:.0f} MMAdds), GFNet all {cfg.T} steps {ips['all']:.1f} img/s ({madds[-1] / 1e6:.0f} MMAdds), "
        f"GFNet early exit q={args.budget:g} {ips['exit']:.1f} img/s ({exit_cost / 1e6:.0f} MMAdds mean); "
        f"early exit vs static {ips['exit'] / ips['static']:.2f}x"
    )
    print(line, flush=True)
    figures = [
        {
            "line": line,
            "model": desc,
            "batch": B,
            "images_per_s": ips,
            "madds": {"static": static_cost, "all": madds[-1], "exit_mean": exit_cost},
            "static": t_static,
            "all_steps": t_all,
            "early_exit": t_exit,
            "budget_q": args.budget,
            "exit_counts": torch.bincount(pred.exit_step.cpu() - 1, minlength=cfg.T).tolist(),
            "repeats": repeats,
            "warmup": warmup,
        }
    ]
    write("bench_static", args, device, figures, madds_per_step=madds, config=cfg.to_dict())


if __name__ == "__main__":
    main()
