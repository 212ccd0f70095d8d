"""``glancefocus demo`` end to end on tiny data, and the model config it builds for the
built-in set (which must keep the canvas's own size unless told otherwise)."""

from __future__ import annotations

import json
from pathlib import Path

from glancefocus.data import BUILTIN, builtin_image_size
from glancefocus.demo import DemoConfig, run_demo
from glancefocus.distributed import init_world
from glancefocus.pipeline import default_model_config


def test_builtin_config_keeps_the_canvas_size_when_none_is_given() -> None:
    # None means "the data's default": for the built-in set that is the canvas, uncropped,
    # not GFNetConfig's 224 px (which would upscale every canvas twofold).
    config = default_model_config(BUILTIN, patch_size=48, image_size=None, T=None)
    assert (config.image_size, config.crop_pct, config.patch_size, config.T) == (builtin_image_size(), 1.0, 48, 5)
    assert default_model_config(BUILTIN, patch_size=48, image_size=96).image_size == 96
    assert default_model_config("some/folder", image_size=None).image_size == 224


def test_demo_on_a_folder_writes_its_report(tiny_data: Path, tmp_path: Path, capsys) -> None:
    demo = DemoConfig(
        backbone="resnet18", pretrained=False, patch_size=32, T=2, image_size=64, batch_size=8,
        glance_epochs=1, stage1_epochs=1, stage2_epochs=1, stage3_epochs=1,
    )
    report = run_demo(str(tiny_data), tmp_path / "demo", world=init_world("cpu"), demo=demo, quiet=True)

    assert "demo done" in capsys.readouterr().out
    for name in ("report.json", "results.json", "budgeted.png", "anytime.png", "patches.png", "stage3.safetensors"):
        assert (tmp_path / "demo" / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert {k: saved[k] for k in ("madds", "anytime_accuracy", "oracle")} == {k: report[k] for k in ("madds", "anytime_accuracy", "oracle")}
    assert report["config"]["image_size"] == 64 and report["config"]["T"] == 2
    anytime = report["anytime_accuracy"]
    assert set(anytime) == {"learned", "random", "fixed"} and all(len(a) == 2 for a in anytime.values())
    # step 1 is the glance alone, whatever picks the patches
    assert anytime["learned"][0] == anytime["random"][0] == anytime["fixed"][0]
    assert report["oracle"]["accuracy"] >= max(anytime["learned"]) - 1e-9
    assert len(report["budgeted"]) == 39
    (spread,) = report["policy_locations"]  # T - 1 = 1 focus step
    assert all(0 <= m <= 1 for m in spread["mean"]) and all(0 <= s <= 0.5 for s in spread["std"])
