"""Command-line paths no other test takes: ``recipes``, ``evaluate --patches random --plot
--no-channels-last`` and ``train --init``, and the ``demo`` flags."""

from __future__ import annotations

import json
from pathlib import Path

from glancefocus.models.checkpoint import read_meta
from glancefocus.cli import main
from glancefocus.config.recipes import TABLE2

from conftest import MODEL_ARGS, RUN_ARGS


def test_recipes_lists_every_table2_recipe(capsys) -> None:
    assert main(["recipes"]) == 0
    printed = capsys.readouterr().out
    assert len(TABLE2) == 14 and all(name in printed for name in TABLE2)
    assert "resnet50-96-t5" in printed and "demo" in printed and "imagenette-lite0" in printed


def test_evaluate_random_patches_writes_a_plot_and_keeps_the_learned_results(trained_run: Path, tmp_path: Path) -> None:
    checkpoint = trained_run / "stage3.safetensors"
    stored = read_meta(checkpoint)["results"]
    out, plot = tmp_path / "random.json", tmp_path / "random.png"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--patches", "random", "--json", str(out),
                 "--plot", str(plot), "--no-channels-last", "--quiet"]) == 0
    assert json.loads(out.read_text())["patches"] == "random"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_meta(checkpoint)["results"] == stored  # only the learned policy's results are stored


def test_train_init_starts_from_the_given_checkpoint(trained_run: Path, colour_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "from_stage3"
    assert main(["train", "--stage", "3", "--init", str(trained_run / "stage3.safetensors"), "--data", str(colour_data),
                 *MODEL_ARGS, "--epochs", "1", *RUN_ARGS, "--out", str(out)]) == 0
    assert f"initialised from {trained_run / 'stage3.safetensors'}" in capsys.readouterr().out
    assert (out / "stage3.safetensors").exists() and not (out / "stage2.safetensors").exists()


def test_demo_flags_reach_the_resolved_recipe(monkeypatch, tmp_path: Path) -> None:
    """``demo --seed --policy-training --patch-scale --pretrained`` through ``main``: each lands
    in the configs the demo trains, the rest stay the ``demo`` recipe's."""
    import glancefocus.demo
    from glancefocus.config.recipes import DEMO

    got = {}
    monkeypatch.setattr(glancefocus.demo, "run_demo", lambda run_config, root, out, **kw: got.update(config=run_config, root=root))
    assert main(["demo", "--out", str(tmp_path), "--seed", "3", "--policy-training", "differentiable",
                 "--patch-scale", "learned", "--pretrained", "false", "--device", "cpu"]) == 0
    run_config = got["config"]
    assert (run_config.train.seed, run_config.train.policy_training, run_config.pretrained) == (3, "differentiable", False)
    assert (run_config.model.patch_scale, run_config.model.crop, run_config.model.image_size) == ("learned", "resample", 112)
    assert run_config.train.stage2_epochs == DEMO.train.stage2_epochs and got["root"] == "builtin"
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert (got["config"].train.seed, got["config"].train.policy_training, got["config"].pretrained) == (0, "ppo", DEMO.pretrained)
