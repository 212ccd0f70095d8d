"""``python -m scripts.imagenette {reproduce,gather,table}``: the reproduction's one entry point."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import escalate, reproduce
from .report import markdown_table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.imagenette", description=reproduce.__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="subcommand", required=True)
    run = reproduce.options()
    sub.add_parser("reproduce", parents=[run], help="train and measure (resumable, splittable), then write results.json",
                   description=reproduce.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_parser("gather", parents=[run], help="reassemble --out/results.json from --out/parts and the runs under "
                   "--out/variants (no data read; the run's options as given to reproduce)")
    escalate.options(sub.add_parser("escalate", help="a GFNet whose steps escalate to whole-image reads, from the recipe's "
                                    "weights and a static model (see escalate.py)"), cascade=False)
    escalate.options(sub.add_parser("cascade", help="the plain cascade: the glance, then a static model at R px"), cascade=True)
    table = sub.add_parser("table", help="print RESULTS.md's tables from --out/results.json")
    table.add_argument("--out", type=Path, default=Path("results/imagenette"))
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.subcommand in ("escalate", "cascade"):
        getattr(escalate, args.subcommand)(args)
        return
    if args.subcommand == "table":
        print(markdown_table(json.loads((args.out / "results.json").read_text())))
        return
    if args.policy_bound < 0:
        p.error(f"--policy-bound {args.policy_bound}: give a number of training images, or 0 to skip it")
    (reproduce.reproduce if args.subcommand == "reproduce" else reproduce.gather)(args)


if __name__ == "__main__":
    main()
