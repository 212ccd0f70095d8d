"""The documented Imagenette reproduction command, end to end on 40 images and split in two
invocations as a long run is (skipped without ``../shared``): every table of RESULTS.md
comes out of its results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IMAGENETTE

from glancefocus.models.checkpoint import read_meta
from scripts.imagenette.variants import best_gfnet

ROOT = Path(__file__).resolve().parents[1]


def _run(subcommand: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.imagenette", subcommand, *args], check=True, capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_reproduction_script_smoke_run_split_in_invocations(tmp_path: Path) -> None:
    """Glance fine-tune and Stage I with its learning curve, exported; then, each on a "fresh
    machine" (another work folder): Stages II and III from the exported weights alone; the
    static baselines alone; the report from the parts and the weights."""
    if not (IMAGENETTE / "val").is_dir():
        pytest.skip(f"Imagenette not found at {IMAGENETTE}")
    out, weights = tmp_path / "out", tmp_path / "out" / "gfnet.safetensors"
    common = ["--data", str(IMAGENETTE), "--out", str(out), "--limit", "40", "--T", "2", "--batch-size", "8",
              "--glance-epochs", "2", "--glance-patience", "1", "--stage1-epochs", "2", "--curve-epochs", "1",
              "--stage2-epochs", "1", "--stage3", "--stage3-epochs", "1", "--sizes", "96", "128",
              "--static-epochs", "1"]
    _run("reproduce", *common, "--work", str(tmp_path / "work1"), "--stop-after", "stage1", "--export", str(weights))
    assert read_meta(weights)["stage"] == "stage1" and not (out / "results.json").exists()
    curve = json.loads((out / "parts" / "learning_curve.json").read_text())
    assert [p["epoch"] for p in curve] == [1, 2] and all(len(p["anytime_accuracy"]) == 2 for p in curve)
    # a lever run of its own (to Stage III), under --out/levers/, as the report's levers tables read them
    _run("reproduce", *common, "--work", str(tmp_path / "work5"), "--out", str(out / "levers" / "t3"), "--T", "3", "--stop-after", "stage3",
         "--skip-static", "--stage2-curve-epochs", "1", "--stage2-images", "plain", "--ppo-lr", "1e-3", "--ppo-baseline", "greedy",
         "--no-grid")
    assert not (out / "levers" / "t3" / "parts" / "location_grid_stage2.json").exists()
    _run("reproduce", *common, "--work", str(tmp_path / "work2"), "--from-weights", str(weights), "--skip-static", "--export", str(weights),
         "--policy-bound", "12")
    assert not (tmp_path / "work2" / "glance.safetensors").exists()  # nothing before the import was redone
    assert read_meta(weights)["stage"] == "stage3"
    _run("reproduce", *common, "--work", str(tmp_path / "work3"), "--static-only")
    assert not (tmp_path / "work3" / "glance.safetensors").exists() and (out / "parts" / "static_128.json").exists()
    # a variant of its own under --out/variants/: regions that zoom, π trained end to end
    _run("reproduce", *common, "--work", str(tmp_path / "work6"), "--out", str(out / "variants" / "zoom"), "--skip-static",
         "--policy-training", "differentiable", "--patch-scale", "learned", "--end2end-epochs", "1")
    assert all((tmp_path / "work6" / f"{s}.safetensors").exists() for s in ("stage1", "end2end"))  # Stage I, then end to end
    _run("reproduce", *common, "--work", str(tmp_path / "work4"), "--from-weights", str(weights))  # trains nothing: reports

    results = json.loads((out / "results.json").read_text())
    for name in ("budgeted.png", "anytime.png", "patches.png"):
        assert (out / name).stat().st_size > 0, name
    assert len(results["madds"]) == len(results["anytime_accuracy"]) == 2
    assert set(results["anytime_accuracy_by_policy"]) == {"learned", "random", "fixed"}
    assert set(results["stage3_ablation"]) == {"after stage2", "after stage3"} and results["headline"] in ("stage2", "stage3")
    assert results["learning_curve"] == curve and results["recipe"]["stage3"] is True
    assert set(results["seconds"]) >= {"glance", "stage1", "stage2", "stage3", "static128"}
    assert results["seconds"]["static"] == results["seconds"]["static128"]  # the one size trained here (96 px is the glance)
    # step 2 over a grid of places bounds every policy there, each model's own
    assert set(results["location_grid"]) == {"after stage2", "after stage3"}
    for stage, grid in results["location_grid"].items():
        first = results["stage3_ablation"][stage]["anytime_accuracy"][0]
        assert grid["grid"] == 7 and len(grid["accuracy_by_place"]) == 7
        assert grid["mean_place"] <= grid["best_place_per_image"] <= grid["oracle_exit_within_2"] and first <= grid["oracle_exit_within_2"]
    # π refitted to the exact step-2 reward, each model's own; the model's π at step 2 is
    # exactly the patch ablation's (one step, two code paths)
    assert set(results["policy_bound"]) == {"after stage2", "after stage3"}
    for stage, bound in results["policy_bound"].items():
        assert bound["train_images"] == 12 and set(bound["fits"]) == {"reward", "accuracy"}
        for fit in bound["fits"].values():
            assert [s["seed"] for s in fit["seeds"]] == [0, 1, 2] and len(fit["anytime_accuracy"]) == 2
            assert all(len(s["heldout_history"]) == bound["epochs"] + 1 for s in fit["seeds"])
            assert fit["heldout"]["mean_place"] <= fit["heldout"]["best_place_per_image"] >= fit["heldout"]["learned"]
            # the first fit adopted as the model's π answers step 2 as it did alone
            assert fit["anytime_accuracy"][1] == pytest.approx(fit["seeds"][0]["step2_accuracy"])
        learned = results["stage3_ablation"][stage]["anytime_accuracy_by_policy"]["learned"][1]
        assert bound["learned"]["step2_accuracy"] == pytest.approx(learned)
    assert results["figures_from"] in (results["headline"], "stage3")  # the headline's weights, if this machine has them
    # the 96 px static model is the glance fine-tune, and GFNet's first step is that encoder
    static = {row["size"]: row for row in results["static"]}
    assert set(static) == {96, 128} and static[128]["epochs"] == 1
    assert static[96]["accuracy"] == results["glance_encoder_alone"]["accuracy"] == results["anytime_accuracy"][0]
    assert static[96]["madds"] < static[128]["madds"]
    assert results["oracle"]["accuracy"] >= max(results["anytime_accuracy"])
    assert results["oracle"]["by_step"][-1] == results["oracle"]["accuracy"]
    # each encoder alone: step 1 is fG on the glance, which GFNet's first step answers with
    assert set(results["encoder_heads"]) == {"learned", "random"}
    assert results["encoder_heads"]["learned"][0] == results["encoder_heads"]["random"][0] == results["anytime_accuracy"][0]
    assert set(results["levers"]) == {"t3"} and results["levers"]["t3"]["recipe"]["T"] == 3
    t3_recipe = results["levers"]["t3"]["recipe"]
    assert (t3_recipe["stage2_images"], t3_recipe["ppo_lr"], t3_recipe["ppo_baseline"]) == ("plain", 1e-3, "greedy")
    assert (results["recipe"]["stage2_images"], results["recipe"]["ppo_lr"], results["recipe"]["ppo_baseline"]) == ("augmented", 3e-4, "critic")
    assert len(results["levers"]["t3"]["stage1"]["anytime_accuracy"]) == 3 and results["recipe"]["T"] == 2
    assert results["levers"]["t3"]["madds"][:2] == results["madds"]  # the same steps, one more of them
    assert len(results["budgeted"]) == 39
    table = _run("table", "--out", str(out)).stdout
    assert "| focus step |" in table and "| per step |" in table and "| Stage I epoch |" in table and "after stage3" in table
    assert set(results["levers"]["t3"]["stage2"]["anytime_accuracy_by_policy"]) == {"learned", "random", "fixed"}
    t3 = results["levers"]["t3"]  # its one Stage II epoch is the one kept: the curve's point is that model
    assert t3["stage2_curve"][0]["anytime_accuracy_by_policy"] == t3["stage2"]["anytime_accuracy_by_policy"]
    assert "| Stage II run |" in table and "| t3, π after epoch 1 |" in table and "| recipe, π kept of 1 epochs |" in table
    assert "| recipe, after Stage III |" in table and "| t3, after Stage III |" in table
    assert "| lever run |" in table and "| t3 | 96 | 3 |" in table and "| after stage3, 7×7 places |" in table
    assert "| π refitted at step 2 |" in table and "| after stage3, 12 images | accuracy |" in table
    # the variants beside the recipe's own model, with the same keys; the best is the headline
    variants = results["variants"]
    assert set(variants) == {"recipe", "zoom"} and variants["recipe"]["recipe"]["policy_training"] == "ppo"
    zoom = variants["zoom"]
    assert zoom["recipe"]["policy_training"] == "differentiable" and zoom["recipe"]["scale_range"] == [96, 224]
    assert len(zoom["policy_locations"][0]["mean"]) == 3 and len(zoom["budgeted"]) == 39
    grid = zoom["location_grid"]["after end2end"]
    assert grid["scales"] == 3 and len(grid["accuracy_by_place"][0][0]) == 3
    best = best_gfnet(variants)
    assert "cascade" not in best and results["budgeted"] == variants[best]["budgeted"]  # the best GFNet, never the cascade
    assert (results["headline"] == "variant zoom") == (best == "zoom")
    assert "| variant |" in table and "| zoom | differentiable | 96–224 |" in table
    # steps that escalate to the whole image (fW: the static 128 px model of work3), and the plain cascade
    more = ["--data", str(IMAGENETTE), "--out", str(out), "--limit", "40", "--work", str(tmp_path / "work3"), "--from-weights", str(weights)]
    _run("escalate", *more, "--reads", "glance,whole:128", "--name", "whole128", "--epochs", "1")
    _run("cascade", *more, "--sizes", "128")
    choice = json.loads((out / "parts" / "whole_encoder_choice.json").read_text())
    assert choice["size"] == 128 and len(choice["accuracy"]) == 3 and (out / "escalation.png").stat().st_size > 0
    _run("reproduce", *common, "--work", str(tmp_path / "work4"), "--from-weights", str(weights))  # the report again, with them
    results, table = json.loads((out / "results.json").read_text()), _run("table", "--out", str(out)).stdout
    variants = results["variants"]
    assert set(variants) == {"recipe", "zoom", "whole128", "cascade-96-128"}
    whole, cascade = variants["whole128"], variants["cascade-96-128"]
    assert whole["reads"] == "glance,whole:128" and whole["madds"][0] == cascade["madds"][0]
    assert whole["anytime_accuracy"][0] == cascade["anytime_accuracy"][0] == variants["recipe"]["anytime_accuracy"][0]  # one glance
    assert whole["madds"][1] - whole["madds"][0] == pytest.approx(cascade["madds"][1] - cascade["madds"][0], rel=0.01)  # fW at 128 px
    assert "| cascade-96-128 | glance:96, then static:128 |" in table and "| whole128 | glance,whole:128 |" in table
    assert "cascade" not in results["headline"] and results["budgeted"] == variants[best_gfnet(variants)]["budgeted"]
