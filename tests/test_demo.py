"""``glancefocus demo`` end to end on tiny data, and the model config the demo recipe builds
for the built-in set (which must keep the canvas's own size unless told otherwise)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from glancefocus.data.sources import data_source
from glancefocus.demo import run_demo
from glancefocus.distributed import init_world
from glancefocus.config.recipes import DEMO, resolve


def test_builtin_config_keeps_the_canvas_size_when_none_is_given() -> None:
    # None means "the data's default": for the built-in set that is the canvas, uncropped,
    # not GFNetConfig's 224 px (which would upscale every canvas twofold).
    builtin = data_source("builtin")
    config = resolve(source=builtin, model={"patch_size": 48, "image_size": None, "T": None}).model
    assert (config.image_size, config.crop_pct, config.patch_size, config.T) == (builtin.native_size, 1.0, 48, 5)
    assert resolve(source=builtin, model={"patch_size": 48, "image_size": 96}).model.image_size == 96
    assert resolve(source=data_source("some/folder"), model={"image_size": None}).model.image_size == 224
    # the demo's package weights fix its architecture and input scaling
    demo = resolve("demo", source=builtin, model={"num_classes": 10}).model
    assert (demo.backbone, demo.image_size, demo.mean) == ("tf_efficientnet_lite0", 112, (127 / 255,) * 3)


def test_demo_on_a_folder_writes_its_report(tiny_data: Path, tmp_path: Path, capsys) -> None:
    demo = replace(
        DEMO, pretrained=False, model=replace(DEMO.model, patch_size=32, T=2, image_size=64),
        train=replace(DEMO.train, batch_size=8, glance_epochs=1, stage1_epochs=1, stage2_epochs=1, stage3_epochs=1),
    )
    source = data_source(str(tiny_data))
    run_config = resolve(demo, source=source, model={"backbone": "resnet18", "num_classes": len(source.classes())})
    report = run_demo(run_config, str(tiny_data), tmp_path / "demo", world=init_world("cpu"), quiet=True)

    printed = capsys.readouterr().out
    assert "demo done" in printed
    # the conclusion, one table: a row per way of choosing regions with its accuracy at each step
    for key, label in (("learned", "learned (π)"), ("random", "random"), ("fixed", "centre-then-corners")):
        row = next(line for line in printed.splitlines() if line.startswith(label))
        assert [float(v) for v in row[len(label):].split()] == [round(a, 1) for a in report["anytime_accuracy"][key]]
    for name in ("report.json", "results.json", "budgeted.png", "anytime.png", "patches.png", "stage3.safetensors"):
        assert (tmp_path / "demo" / name).stat().st_size > 0, name
    assert not list((tmp_path / "demo").glob("*.last.*"))  # finished stages keep no resume files
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
