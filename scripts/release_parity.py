"""Parity with the authors' GFNet release, and our MAdds, for the 14 Table 2 configurations.

For each configuration the release's own networks (imported from
``../shared/reference/gfnet-release``, random weights with randomised BatchNorm statistics)
are saved as a published ``.pth.tar``, imported with ``glancefocus.models.release.import_release``,
and both are run on the same random images in eval mode.  Prints two markdown tables:

1. configuration × max relative logit difference (over steps) × max location difference ×
   whether the release's threshold search and budgeted evaluation give what ours give;
2. our cumulative MAdds per step against the values the paper / SPEC state, and, with
   ``--release-checkpoints``, against the ``flops`` lists of the authors' published files.

Usage: ``python -m scripts.release_parity [--release-checkpoints F.pth.tar ...]`` (from the repository root)
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from glancefocus import GFNet, budgeted_accuracy, exit_fractions, find_thresholds
from glancefocus.config.recipes import TABLE2
from glancefocus.models.release import import_release, load_release

from .release_reference import BATCH, RELEASE_NAMES, build_gfnet, randomize_norms, release, run_gfnet, save_checkpoint

# MAdds that the paper / SPEC state: (what is counted, values); none for the other recipes.
PUBLISHED = {
    # SPEC "Evaluation": ResNet-50 at 96 px costs 0.753 G (4.09 G at 224).
    "resnet50-96-t5": ("encoder", [0.753e9]),
    # SPEC "Published results": DenseNet(-121) anytime prediction at about these cumulative MAdds.
    "densenet121-96-t5": ("steps", [0.53e9, 1.08e9, 1.64e9, 2.2e9, 2.75e9]),
}


def parity_row(name: str, workdir: Path) -> str:
    """One configuration: release vs imported model on the same images."""
    cfg = TABLE2[name].model
    model_name = RELEASE_NAMES[cfg.backbone]
    size = cfg.patch_size + 32
    torch.manual_seed(0)
    nets = build_gfnet(model_name, cfg.patch_size)
    randomize_norms(nets["model_prime"], nets["model"])
    images = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(2))
    ref_logits, ref_locations = run_gfnet(nets, model_name, images, cfg.patch_size, cfg.T)
    save_checkpoint(workdir / f"{name}.pth.tar", nets, model_name, cfg.patch_size, cfg.T)
    ours = import_release(workdir / f"{name}.pth.tar", workdir / f"{name}.safetensors")
    with torch.no_grad():
        out = ours(images, locations="mean")
    logit_diff = max(float((out.logits[t] - ref_logits[t]).abs().max() / ref_logits[t].abs().max()) for t in range(cfg.T))
    location_diff = float((out.locations - ref_locations).abs().max())
    budgets = "yes" if budgets_agree(ref_logits, out.logits) else "**no**"
    return f"| {name} | {model_name} | {logit_diff:.1e} | {location_diff:.1e} | {budgets} |"


def budgets_agree(ref_logits: torch.Tensor, logits: torch.Tensor) -> bool:
    """The release's dynamic_find_threshold / dynamic_evaluate vs ours, at all 39 budgets."""
    inference = release().inference
    T = logits.shape[0]
    ref_probs, probs = F.softmax(ref_logits, dim=2), F.softmax(logits, dim=2)
    targets = ref_probs[-1].argmax(dim=1).roll(1)
    flops = [1e8 * (t + 1) for t in range(T)]
    for k in range(1, 40):
        p = torch.exp(math.log(k / 20) * torch.arange(1, T + 1, dtype=torch.float32))
        ref_thresholds = inference.dynamic_find_threshold(ref_probs, targets, p / p.sum())
        thresholds = find_thresholds(probs, exit_fractions(k / 20, T))
        ref_thresholds = ref_thresholds.masked_fill(ref_thresholds >= 1e8, math.inf).masked_fill(ref_thresholds <= -1e8, -math.inf)
        if not torch.allclose(thresholds, ref_thresholds, rtol=1e-5, atol=1e-6):
            return False
        ref_accuracy, ref_flops = inference.dynamic_evaluate(ref_probs, targets, flops, ref_thresholds)
        accuracy, cost = budgeted_accuracy(probs, targets, flops, thresholds)
        if not (math.isclose(accuracy, ref_accuracy) and math.isclose(cost, ref_flops, rel_tol=1e-6)):
            return False
    return True


def release_flops(paths: list[Path]) -> dict[str, list[float]]:
    """{recipe name: the release's flops list} from the authors' published files."""
    found = {}
    for path in paths:
        ckpt = load_release(path)
        backbone = {v: k for k, v in RELEASE_NAMES.items()}[ckpt["model_name"]]
        found[f"{backbone}-{ckpt['patch_size']}-t{len(ckpt['flops'])}"] = [float(f) for f in ckpt["flops"]]
    return found


def encoder_madds(model: GFNet) -> float:
    """MAdds of the whole backbone, its 1000-way head included, on a P×P input (FLOPs / 2,
    as GFNet.madds counts): the convention of the 0.753 G that SPEC quotes."""
    size = model.config.patch_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.local_encoder.model.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 2


def _giga(values: list[float]) -> str:
    return " / ".join(f"{v / 1e9:.3f}" for v in values)


def _differences(ours: list[float], theirs: list[float]) -> str:
    return " / ".join(f"{(a - b) / b:+.1%}" for a, b in zip(ours, theirs))


def madds_rows(release: dict[str, list[float]]) -> list[str]:
    rows = []
    for name, recipe in TABLE2.items():
        cfg = recipe.model
        torch.manual_seed(0)
        model = GFNet(cfg)
        steps, encoder = model.madds(), encoder_madds(model)
        if name in release:
            reference, diff = f"{_giga(release[name])} (release file)", _differences(steps, release[name])
        elif name in PUBLISHED:
            kind, values = PUBLISHED[name]
            ours = [encoder] if kind == "encoder" else steps
            reference, diff = f"{_giga(values)} ({'backbone pass' if kind == 'encoder' else 'per step'})", _differences(ours, values)
        else:
            reference, diff = "—", ""
        rows.append(f"| {name} | {encoder / 1e9:.3f} | {_giga(steps)} | {reference} | {diff} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.release_parity", description=__doc__.splitlines()[0])
    parser.add_argument("--release-checkpoints", nargs="*", type=Path, default=[],
                        help="the authors' published .pth.tar files, to compare their flops lists with our MAdds")
    parser.add_argument("--skip-parity", action="store_true", help="only the MAdds table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not args.skip_parity:
        print("| configuration | release model_name | max rel. logit diff | max location diff | thresholds & budgeted results equal |")
        print("|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as workdir:
            for name in TABLE2:
                print(parity_row(name, Path(workdir)), flush=True)
        print()
    print("| configuration | our backbone pass (G) | our MAdds per step (G, cumulative) | paper / release (G) | difference |")
    print("|---|---|---|---|---|")
    print("\n".join(madds_rows(release_flops(args.release_checkpoints))))


if __name__ == "__main__":
    main()
