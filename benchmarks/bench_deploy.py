"""Batch-1 latency of an exported GFNet under ONNX Runtime and in PyTorch eager, per step, with
early exit at several budgets, against the static backbone on the full 224 px image.

    python -m benchmarks.bench_deploy [--quick] [--thread-counts 1 2] [--images N] [--budgets Q ...]

The paper's latency claim (MobileNet-V3-Large GFNet 12.7 ms vs 16.3 ms static on a phone) is
about one image at a time, so every figure here is batch 1.  Models: MobileNet-V3-Large
(``mobilenetv3_large_100-96-t3``, random weights: none ship offline) and EfficientNet-Lite0
(96 px patches, T = 4 as the Imagenette reproduction, ImageNet weights from the ``lite0``
package), 1000 classes.  Images: the first Imagenette val images if the shared data is
there, else seeded noise.  For each budget q the thresholds are set on these very images
(``find_thresholds`` with ``exit_fractions(q, T)``), so the exits follow the paper's exit
distribution; the realised latency saving is set against the MAdds saving both relative to
running all T steps and relative to the static model.  Every image runs every variant in
turn (round-robin), so a change of machine load hits all alike; medians, 90th percentiles
and means are over the images.  ``--quick``: a tiny network at 64 px on 12 images.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from glancefocus import GFNet, GFNetConfig
from glancefocus.models.budget import exit_fractions, find_thresholds
from glancefocus.runtime.deploy import OnnxGFNet
from glancefocus.export.bundle import export_gfnet
from glancefocus.runtime.preprocess import Transform, image_files, read_images
from glancefocus.config.weights import Weights, create_backbone

from ._common import parser, setup, write
from ._deploy_parts import crop_costs, export_static
from .bench_static import static_madds

IMAGENETTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette" / "val"
REPRODUCTION = Path(__file__).resolve().parents[1] / "results" / "imagenette" / "results.json"
MODELS = {  # name: (GFNet config, pretrained weights)
    "mobilenetv3_large_100": (GFNetConfig(backbone="mobilenetv3_large_100", patch_size=96, T=3), False),
    "tf_efficientnet_lite0": (Weights.LITE0.configure(GFNetConfig(backbone="tf_efficientnet_lite0", patch_size=96, T=4)), Weights.LITE0),
}
QUICK = {"mobilenetv3_small_050": (GFNetConfig(backbone="mobilenetv3_small_050", num_classes=10, patch_size=32, T=3, image_size=64), False)}


def load_images(model: GFNet, n: int, *, size: int | None = None) -> tuple[np.ndarray, str]:
    cfg, size = model.config, size or model.config.image_size
    if IMAGENETTE.is_dir():
        files = image_files([IMAGENETTE])
        files = files[:: max(1, len(files) // n)][:n]  # spread over the classes
        images, _, _ = read_images(files, Transform(size, cfg.crop_pct, tuple(cfg.mean), tuple(cfg.std)))
        return np.stack(images), f"{n} Imagenette val images"
    g = np.random.default_rng(0)
    return g.standard_normal((n, 3, size, size), dtype=np.float32), f"{n} noise images"


def stats(times: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(times) * 1e3, "p90_ms": float(np.percentile(times, 90)) * 1e3,
            "mean_ms": statistics.fmean(times) * 1e3, "n": len(times)}


def step_runners(model: GFNet, deployed: OnnxGFNet, static, sessions: dict, inputs: dict[str, np.ndarray]) -> dict:
    """Per runtime, functions of the image index i: each static model (``inputs``' other keys),
    steps(i) → T per-step seconds, predict(i, thresholds) → exit step."""
    never = np.array([np.inf] * (model.T - 1) + [-np.inf], dtype=np.float32)
    one = lambda name, i: inputs[name][i : i + 1]  # noqa: E731

    def torch_steps(i):
        state, times, images = None, [], torch.from_numpy(one("gfnet", i))
        for t in range(model.T):
            start = time.perf_counter()
            _, state = model.step(images, t, state)
            times.append(time.perf_counter() - start)
        return times

    def ort_steps(i):
        state, times = [], []
        for t in range(model.T):
            start = time.perf_counter()
            _, *state = deployed.step(t, one("gfnet", i), state)
            times.append(time.perf_counter() - start)
            state = state[1:] if t else state  # the focus step also returns its location
        return times

    statics = [k for k in inputs if k != "gfnet"]
    return {
        "onnxruntime": {"steps": ort_steps, "never": never,
                        "predict": lambda i, th: int(deployed.predict(one("gfnet", i), th).exit_step[0]) - 1,  # 0-based index
                        **{k: (lambda i, k=k: sessions[k].run(None, {"images": one(k, i)})) for k in statics}},
        "pytorch": {"steps": torch_steps, "never": never,
                    "predict": lambda i, th: int(model.predict(torch.from_numpy(one("gfnet", i)), torch.from_numpy(th)).exit_step[0]) - 1,
                    **{k: (lambda i, k=k: static(torch.from_numpy(one(k, i)))) for k in statics}},
    }


def _once(run: dict, i: int, thresholds: dict[float, np.ndarray], rng: np.random.Generator) -> tuple[dict, dict]:
    """Image i through one runtime's variants, in a random order (so that none always
    follows the other runtime, with cold caches): {variant: seconds} and {q: exit step}."""
    seconds, exits = {}, {}
    variants = {"all": lambda: run["predict"](i, run["never"]), "steps": lambda: run["steps"](i),
                **{k: (lambda f=f: f(i)) for k, f in run.items() if k.startswith("static")},
                **{q: (lambda th=th: run["predict"](i, th)) for q, th in thresholds.items()}}
    names = list(variants)
    for name in (names[j] for j in rng.permutation(len(names))):
        start = time.perf_counter()
        out = variants[name]()
        seconds[name] = out if name == "steps" else time.perf_counter() - start
        if name in thresholds:
            exits[name] = out
    return seconds, exits


def measure(runners: dict, images: int, thresholds: dict[float, np.ndarray], *, warmup: int, repeats: int) -> dict:
    """Each of ``images`` images through every variant of both runtimes in turn, ``repeats`` times; an
    image's latency is the median of its repeats (robust to a moment of load), so the mean
    over images stays comparable with the mean MAdds over images."""
    times: dict = {rt: {} for rt in runners}
    exits: dict = {rt: {q: [] for q in thresholds} for rt in runners}
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for i in range(warmup):
            for run in runners.values():
                _once(run, i % images, thresholds, rng)
        for i in range(images):
            rounds = [{rt: _once(run, i, thresholds, rng) for rt, run in runners.items()} for _ in range(repeats)]
            for rt in runners:
                for name in rounds[0][rt][0]:
                    value = np.median([r[rt][0][name] for r in rounds], axis=0)
                    times[rt].setdefault(name, []).append(value.tolist() if name == "steps" else float(value))
                for q in thresholds:
                    exits[rt][q].append(rounds[0][rt][1][q])
    return {"times": times, "exits": exits}


def summarise(rt: str, threads: int, measured: dict, madds: list[float], static_cost: float, qs: list[float]) -> dict:
    times, exits = measured["times"][rt], measured["exits"][rt]
    steps = np.array(times["steps"])  # (N, T)
    base = {"runtime": rt, "threads": threads, "static": stats(times["static"]), "all_steps": stats(times["all"]),
            "steps": [stats(steps[:, t].tolist()) for t in range(steps.shape[1])]}
    budgets = []
    for q in qs:
        cost = float(np.mean(np.asarray(madds)[exits[q]]))
        latency = stats(times[q])
        budgets.append({
            "q": q, "exit_counts": np.bincount(exits[q], minlength=len(madds)).tolist(), "madds_mean": cost, "latency": latency,
            "madds_saving_vs_all": 1 - cost / madds[-1],
            "latency_saving_vs_all": 1 - latency["mean_ms"] / base["all_steps"]["mean_ms"],
            "madds_saving_vs_static": 1 - cost / static_cost,
            "latency_saving_vs_static": 1 - latency["mean_ms"] / base["static"]["mean_ms"],
        })
        b = budgets[-1]
        b["realised_fraction_vs_all"] = b["latency_saving_vs_all"] / b["madds_saving_vs_all"] if b["madds_saving_vs_all"] else None
    base["budgets"] = budgets
    base["predictor_overhead_ms"] = base["all_steps"]["mean_ms"] - float(steps.sum(axis=1).mean()) * 1e3
    return base


def line(name: str, f: dict, madds: list[float], static_cost: float) -> str:
    steps = ", ".join(f"{s['median_ms']:.2f}" for s in f["steps"])
    budgets = "; ".join(
        f"q={b['q']:g} {b['latency']['median_ms']:.2f}/{b['latency']['p90_ms']:.2f} ms ({b['madds_mean'] / 1e6:.0f} MMAdds, "
        f"vs all steps saves {b['latency_saving_vs_all']:.0%} of mean time for {b['madds_saving_vs_all']:.0%} of MAdds, "
        f"vs static {b['latency_saving_vs_static']:.0%} of time for {b['madds_saving_vs_static']:.0%} of MAdds)"
        for b in f["budgets"])
    return (f"{name} {f['runtime']} {f['threads']} thread(s), batch 1, median/p90: static {f['image_size']} px "
            f"{f['static']['median_ms']:.2f}/{f['static']['p90_ms']:.2f} ms ({static_cost / 1e6:.0f} MMAdds); steps [{steps}] ms; "
            f"all {len(madds)} steps {f['all_steps']['median_ms']:.2f}/{f['all_steps']['p90_ms']:.2f} ms "
            f"({madds[-1] / 1e6:.0f} MMAdds); {budgets}")


def equal_accuracy_pair(config: GFNetConfig) -> dict | None:
    """From the committed Imagenette reproduction (EfficientNet-Lite0, 96 px, T = 4): the static
    size whose val accuracy is closest to GFNet's best, and the cheapest budget point within one
    standard error (0.38 points, RESULTS.md) of that static model's accuracy.  Latency depends
    on the architecture and the exit fractions, not on the weights, so it is measured here."""
    if not REPRODUCTION.is_file() or (config.backbone, config.patch_size, config.T) != ("tf_efficientnet_lite0", 96, 4):
        return None
    r = json.loads(REPRODUCTION.read_text())
    r = {**r.get("variants", {}).get("recipe", r), "static": r["static"]}  # the recipe's model: the paper's plan, T = 4
    best = max(p["accuracy"] for p in r["budgeted"])
    static = min(r["static"], key=lambda s: abs(s["accuracy"] - best))
    reach = [p for p in r["budgeted"] if p["accuracy"] >= static["accuracy"] - 0.38]
    if not reach:
        return None
    point = min(reach, key=lambda p: p["madds"])
    return {"q": point["q"], "gfnet_accuracy": point["accuracy"], "gfnet_madds_reproduction": point["madds"],
            "static_size": static["size"], "static_accuracy": static["accuracy"], "static_madds": static["madds"]}


def model_inputs(model: GFNet, args, folder: Path, static, pair: dict | None) -> tuple[dict, dict, str]:
    """Images for GFNet and each static model ("static": full size; "static_equal": the size
    of equal accuracy), and the static models exported to ONNX."""
    cfg = model.config
    images, source = load_images(model, args.images)
    inputs, paths = {"gfnet": images, "static": images}, {"static": export_static(static, cfg.image_size, folder / "static.onnx")}
    if pair:
        inputs["static_equal"] = load_images(model, args.images, size=pair["static_size"])[0]
        paths["static_equal"] = export_static(static, pair["static_size"], folder / "static_equal.onnx")
    return inputs, paths, source


def bench_model(name: str, config: GFNetConfig, pretrained, args, folder: Path) -> list[dict]:
    torch.manual_seed(0)
    model = GFNet(config, pretrained=pretrained).eval()
    static = create_backbone(model.config.backbone, pretrained=pretrained, num_classes=model.config.num_classes).eval()
    madds, static_cost = model.madds(), static_madds(static, model.config.image_size, torch.device("cpu"))
    pair = equal_accuracy_pair(model.config)
    inputs, paths, source = model_inputs(model, args, folder, static, pair)
    with torch.inference_mode():
        probs = torch.cat([model(torch.from_numpy(x)).logits.softmax(dim=2) for x in np.array_split(inputs["gfnet"], 8)], dim=1)
    qs = sorted({*args.budgets, *([pair["q"]] if pair else [])})
    thresholds = {q: find_thresholds(probs, exit_fractions(q, model.T)).numpy().astype(np.float32) for q in qs}
    export_gfnet(model, folder / name, classes=[str(c) for c in range(model.config.num_classes)],
                 budget_points=[{"q": q, "madds": 0.0, "accuracy": 0.0, "thresholds": th.tolist()} for q, th in thresholds.items()])
    figures = []
    for threads in args.thread_counts:
        torch.set_num_threads(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if args.no_spin:  # idle threads sleep instead of spinning: on a shared machine spinning starves the others
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
        runners = step_runners(model, OnnxGFNet(folder / name, threads=threads, options=options), static, sessions, inputs)
        measured = measure(runners, args.images, thresholds, warmup=args.warmup if args.warmup is not None else 5,
                           repeats=args.repeats or (1 if args.quick else 3))
        for rt in runners:
            f = summarise(rt, threads, measured, madds, static_cost, args.budgets)
            f.update(model=name, images=source, image_size=model.config.image_size, patch_size=model.config.patch_size,
                     madds=madds, static_madds=static_cost, crop=crop_costs(model.config, threads) if rt == "onnxruntime" else None,
                     exit_mismatches={q: int(np.sum(np.array(measured["exits"]["onnxruntime"][q]) != measured["exits"]["pytorch"][q]))
                                      for q in qs},
                     equal_accuracy=equal_accuracy(pair, measured["times"][rt], measured["exits"][rt], madds) if pair else None)
            f["line"] = line(name, f, madds, static_cost)
            print(f["line"], flush=True)
            figures.append(f)
    return figures


def equal_accuracy(pair: dict, times: dict, exits: dict, madds: list[float]) -> dict:
    gfnet, static = stats(times[pair["q"]]), stats(times["static_equal"])
    cost = float(np.mean(np.asarray(madds)[exits[pair["q"]]]))
    return {**pair, "gfnet_latency": gfnet, "static_latency": static, "gfnet_madds": cost,
            "madds_saving": 1 - cost / pair["static_madds"], "latency_saving": 1 - gfnet["mean_ms"] / static["mean_ms"]}


def tables(figures: list[dict]) -> str:
    """The two markdown tables of benchmarks/README.md "Latency at batch 1": latencies, then savings against MAdds savings."""
    qs = [b["q"] for b in figures[0]["budgets"]]
    ms = lambda s: f"{s['median_ms']:.1f} / {s['p90_ms']:.1f}"  # noqa: E731
    head = ["model", "runtime", "threads", "static, full image", "glance", "focus steps", "all steps", *(f"q={q:g}" for q in qs)]
    rows = [head, ["---"] * len(head)]
    for f in figures:
        focus = " / ".join(f"{s['median_ms']:.1f}" for s in f["steps"][1:])  # each focus step's median
        rows.append([f["model"], f["runtime"], str(f["threads"]), ms(f["static"]), ms(f["steps"][0]), focus,
                     ms(f["all_steps"]), *(ms(b["latency"]) for b in f["budgets"])])
    saving = ["model", "runtime", "threads", *(f"q={q:g}: MAdds / time saved vs all steps (vs static)" for q in qs)]
    rows2 = [saving, ["---"] * len(saving)]
    for f in figures:
        rows2.append([f["model"], f["runtime"], str(f["threads"]), *(
            f"{b['madds_saving_vs_all']:.0%} / {b['latency_saving_vs_all']:.0%} ({b['madds_saving_vs_static']:.0%} / "
            f"{b['latency_saving_vs_static']:.0%})" for b in f["budgets"])])
    equal = [["model", "runtime", "threads", "static (size, val top-1, MMAdds)", "latency, median / p90 / mean ms",
              "GFNet (q, val top-1, MMAdds)", "latency, median / p90 / mean ms", "MAdds / time saved"]]
    equal.append(["---"] * len(equal[0]))
    for f in (f for f in figures if f["equal_accuracy"]):
        e = f["equal_accuracy"]
        lat = lambda s: f"{s['median_ms']:.1f} / {s['p90_ms']:.1f} / {s['mean_ms']:.1f}"  # noqa: E731
        equal.append([f["model"], f["runtime"], str(f["threads"]),
                      f"{e['static_size']} px, {e['static_accuracy']:.2f} %, {e['static_madds'] / 1e6:.0f}", lat(e["static_latency"]),
                      f"q={e['q']:g}, {e['gfnet_accuracy']:.2f} %, {e['gfnet_madds'] / 1e6:.0f}", lat(e["gfnet_latency"]),
                      f"{e['madds_saving']:.0%} / {e['latency_saving']:.0%}"])
    tables = [rows, rows2] + ([equal] if len(equal) > 2 else [])
    return "\n\n".join("\n".join("| " + " | ".join(r) + " |" for r in table) for table in tables)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--thread-counts", type=int, nargs="+", default=None, help="threads of both runtimes (default 1 2)")
    p.add_argument("--images", type=int, default=None, help="images timed per variant (default 200; 12 with --quick)")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="q values (paper: k/20, k = 1..39)")
    p.add_argument("--no-spin", action="store_true",
                   help="ONNX Runtime threads sleep when idle (run with OMP_WAIT_POLICY=PASSIVE for PyTorch's)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="GFNets to measure (default both)")
    args = p.parse_args()
    device = setup(args)
    args.thread_counts = args.thread_counts or ([1] if args.quick else [1, 2])
    args.images = args.images or (12 if args.quick else 200)
    figures = []
    with tempfile.TemporaryDirectory() as folder:
        models = QUICK if args.quick else {k: MODELS[k] for k in args.models}
        for name, (config, pretrained) in models.items():
            figures += bench_model(name, config, pretrained, args, Path(folder))
    table = tables(figures)
    print(table)
    write("bench_deploy", args, device, figures, onnxruntime=ort.__version__, tables=table)


if __name__ == "__main__":
    main()
