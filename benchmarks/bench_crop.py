"""Focus-patch cropping: ``crop_patches``'s two ways, one vectorised gather vs a per-sample
slice and a stack; it uses the slices on a CPU and the gather elsewhere.

    python -m benchmarks.bench_crop [--quick] [--device cpu|cuda]

Both take the same float32 images (B, 3, 224, 224) and locations (B, 2) and include the
corner computation (``patch_corners``); the outputs are checked to be equal before timing.
"""

from __future__ import annotations

import torch

from glancefocus.models.patches import crop_patches

from ._common import compare, fmt_ms, parser, setup, write


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--patch-sizes", type=int, nargs="+", default=None)
    args = p.parse_args()
    device = setup(args)
    batch = args.batch or (16 if args.quick else 256)
    size = args.image_size or (64 if args.quick else 224)
    patches = args.patch_sizes or ([24, 32] if args.quick else [96, 128])
    repeats = args.repeats or (3 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)

    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    locations = torch.rand(batch, 2, generator=g).to(device)
    locations[:4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])[: min(4, batch)].to(device)  # edges

    figures = []
    with torch.inference_mode():
        for P in patches:
            crop = {m: (lambda m=m: crop_patches(images, locations, P, method=m)) for m in ("gather", "slices")}
            if not torch.equal(crop["gather"](), crop["slices"]()):
                raise SystemExit(f"the gather differs from the slices at P={P}")
            timed = compare(crop, device, repeats=repeats, warmup=warmup)
            ours, loop = timed["gather"], timed["slices"]
            speedup = loop["median_s"] / ours["median_s"]
            line = (
                f"crop {size}->{P} batch {batch} ({device.type}): gather {fmt_ms(ours['median_s'])}, "
                f"per-sample slices {fmt_ms(loop['median_s'])}, gather speed-up {speedup:.1f}x (outputs equal)"
            )
            print(line, flush=True)
            figures.append(
                {
                    "line": line,
                    "image_size": size,
                    "patch_size": P,
                    "batch": batch,
                    "dtype": "float32",
                    "outputs_equal": True,
                    "gather": ours,
                    "slices": loop,
                    "speedup": speedup,
                    "repeats": repeats,
                    "warmup": warmup,
                }
            )
    write("bench_crop", args, device, figures)


if __name__ == "__main__":
    main()
