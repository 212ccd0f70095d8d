"""End-to-end training through the CLI on tiny generated ImageFolder data (SPEC "Training",
"Evaluation"): every stage, the checkpoints and what they carry, evaluation, errors, a
learnable task whose loss falls, and Stage II's best-epoch selection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from glancefocus.models.checkpoint import read_meta
from glancefocus.cli import main

from conftest import MODEL_ARGS, RUN_ARGS, write_folder

STAGE_FILES = ["glance", "stage1", "stage2", "stage3"]




def _floats(row) -> list[float]:
    return [float(v) for v in row]  # JSON stores ±inf as strings


def check_results(results: dict, T: int = 3) -> None:
    madds = results["madds"]
    assert len(madds) == T and madds[0] > 0 and all(b > a for a, b in zip(madds, madds[1:]))
    assert len(results["anytime_accuracy"]) == T
    assert all(0 <= a <= 100 for a in results["anytime_accuracy"])
    # The oracle exits at the first correct step: at least as accurate as any one step, never
    # dearer than running them all.
    assert results["oracle"]["accuracy"] >= max(results["anytime_accuracy"]) - 1e-9
    assert results["madds"][0] <= results["oracle"]["madds"] <= results["madds"][-1]
    thresholds = [_floats(row) for row in results["thresholds"]]
    assert len(thresholds) == 39 and all(len(row) == T for row in thresholds)
    assert all(row[-1] == -math.inf for row in thresholds)
    curve = results["budgeted"]
    assert len(curve) == 39
    for k, point in enumerate(curve, start=1):
        assert set(point) >= {"q", "madds", "accuracy"}
        assert point["q"] == pytest.approx(k / 20)
        assert madds[0] - 1e-6 <= point["madds"] <= madds[-1] + 1e-6
        assert 0 <= point["accuracy"] <= 100


# ------------------------------------------------------------------------ whole pipeline
def test_full_pipeline_writes_checkpoints_and_results(trained_run, colour_data):
    out = trained_run
    for name in STAGE_FILES:
        assert (out / f"{name}.safetensors").is_file(), name
        assert read_meta(out / f"{name}.safetensors")["stage"] == name
    meta = read_meta(out / "stage3.safetensors")
    cfg = meta["config"]
    assert (cfg["backbone"], cfg["patch_size"], cfg["T"], cfg["image_size"]) == ("resnet18", 32, 3, 64)
    assert meta["classes"] == ["blue", "green", "red"]
    assert cfg["num_classes"] == 3
    check_results(meta["results"])
    assert meta["madds"] == meta["results"]["madds"]
    # the history of the stage (1 epoch)
    assert len(meta["history"]) == 1 and "train_loss" in meta["history"][0]

    # the results file and its plot
    results = json.loads((out / "stage3.results.json").read_text())
    check_results(results)
    assert results["anytime_accuracy"] == meta["results"]["anytime_accuracy"]
    assert results["num_val"] == 12
    png = out / "stage3.results.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # one log record at least per stage, each a JSON object
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} >= set(STAGE_FILES)
    for r in records:
        assert isinstance(r["step"], int)
        if r["stage"] != "glance":
            assert len(r["heldout_accuracy"]) == 3


def test_full_pipeline_stages_train_the_right_parts(trained_run):
    """Stage II changes π alone (BatchNorm statistics included: the frozen parts run in
    eval mode); Stage III leaves π as Stage II left it and trains fL and fC."""
    w1, w2, w3 = (load_file(str(trained_run / f"stage{i}.safetensors")) for i in (1, 2, 3))
    assert w1.keys() == w2.keys() == w3.keys()
    policy = [k for k in w1 if k.startswith("policy.")]
    others = [k for k in w1 if not k.startswith("policy.")]
    assert policy and others
    for k in others:
        assert torch.equal(w1[k], w2[k]), f"Stage II changed {k}"
    assert any(not torch.equal(w1[k], w2[k]) for k in policy), "Stage II did not train π"
    for k in policy:
        assert torch.equal(w2[k], w3[k]), f"Stage III changed {k}"
    changed = {k.split(".")[0] for k in others if not torch.equal(w2[k], w3[k])}
    assert {"local_encoder", "classifier", "global_encoder"} <= changed  # ResNet: fG is not frozen


def test_evaluate_command(trained_run, tmp_path, capsys):
    out_json = tmp_path / "out.json"
    loud = [a for a in RUN_ARGS if a != "--quiet"]
    rc = main(["evaluate", "--checkpoint", str(trained_run / "stage3.safetensors"), "--json", str(out_json), *loud])
    assert rc == 0
    results = json.loads(out_json.read_text())
    check_results(results)
    assert results["patches"] == "learned"
    # deterministic: the same numbers as the evaluation at the end of training
    saved = json.loads((trained_run / "stage3.results.json").read_text())
    assert results["anytime_accuracy"] == saved["anytime_accuracy"]
    assert results["madds"] == saved["madds"]
    assert [_floats(r) for r in results["thresholds"]] == [_floats(r) for r in saved["thresholds"]]
    assert (tmp_path / "out.png").is_file()  # the plot goes next to --json by default
    assert "anytime" in capsys.readouterr().out
    # other patch policies evaluate too, and leave the checkpoint's learned results alone
    rc = main(["evaluate", "--checkpoint", str(trained_run / "stage3.safetensors"), "--patches", "fixed",
               "--json", str(tmp_path / "fixed.json"), *RUN_ARGS])
    assert rc == 0 and capsys.readouterr().out == ""  # --quiet: results written, nothing printed
    assert json.loads((tmp_path / "fixed.json").read_text())["patches"] == "fixed"
    assert read_meta(trained_run / "stage3.safetensors")["results"]["patches"] == "learned"


def test_evaluate_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "nope.safetensors"), *RUN_ARGS])
    assert rc == 2
    assert "nope.safetensors" in capsys.readouterr().err


# ------------------------------------------------------------------------ stage by stage
def test_stages_one_command_each(colour_data, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data", str(colour_data), *MODEL_ARGS, "--epochs", "1", *RUN_ARGS, "--out", str(out)]
    for stage, name in zip(["glance", "1", "2", "3"], STAGE_FILES):
        assert main(["train", "--stage", stage, *common]) == 0, stage
        assert (out / f"{name}.safetensors").is_file()
        assert read_meta(out / f"{name}.safetensors")["stage"] == name
    printed = capsys.readouterr().out
    # each stage started from the previous stage's checkpoint
    for previous in ("glance", "stage1", "stage2"):
        assert f"initialised from {out / (previous + '.safetensors')}" in printed
    w1, w2 = (load_file(str(out / f"stage{i}.safetensors")) for i in (1, 2))
    assert all(torch.equal(w1[k], w2[k]) for k in w1 if not k.startswith("policy."))


def test_stage2_without_stage1_checkpoint_fails_clearly(colour_data, tmp_path, capsys):
    out = tmp_path / "empty"
    rc = main(["train", "--stage", "2", "--data", str(colour_data), *MODEL_ARGS, "--epochs", "1", *RUN_ARGS, "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "stage1.safetensors" in err and "--stage 1" in err
    assert not (out / "stage2.safetensors").exists()


def test_stage3_without_stage2_checkpoint_fails_clearly(colour_data, tmp_path, capsys):
    out = tmp_path / "empty3"
    rc = main(["train", "--stage", "3", "--data", str(colour_data), *MODEL_ARGS, "--epochs", "1", *RUN_ARGS, "--out", str(out)])
    assert rc == 2
    assert "--stage 2" in capsys.readouterr().err


# ------------------------------------------------------------------------ learning
def test_stage1_learns_bright_vs_dark(tmp_path):
    data = write_folder(tmp_path / "bw", {"bright": (220, 220, 220), "dark": (35, 35, 35)}, n_train=20, n_val=6)
    out = tmp_path / "run"
    rc = main(["train", "--stage", "1", "--data", str(data), *MODEL_ARGS, "--stage1-epochs", "5", "--holdout", "0.2",
               *RUN_ARGS, "--out", str(out)])
    assert rc == 0
    history = read_meta(out / "stage1.safetensors")["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < 0.7 * losses[0], losses
    # last epoch: the training batches were mostly right at the final step
    assert history[-1]["train_accuracy"][-1] >= 75, history[-1]
    # the same log went to log.jsonl
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in records if r["stage"] == "stage1"] == losses


# ------------------------------------------------------------------------ model selection
def test_stage2_keeps_best_epoch_via_cli(colour_data, tmp_path):
    out = tmp_path / "sel"
    common = ["--data", str(colour_data), *MODEL_ARGS, *RUN_ARGS, "--out", str(out), "--holdout", "0.25"]
    assert main(["train", "--stage", "1", "--stage1-epochs", "1", *common]) == 0
    assert main(["train", "--stage", "2", "--stage2-epochs", "3", *common]) == 0
    history = read_meta(out / "stage2.safetensors")["history"]
    assert len(history) == 3
    kept = json.loads((out / "stage2.metrics.json").read_text())
    best = max(history, key=lambda h: h["final_accuracy"])
    assert kept == best
    assert kept["final_accuracy"] == max(h["final_accuracy"] for h in history)

    # the saved π is the kept epoch's: its held-out accuracy is the kept one
    from glancefocus import DataConfig, GFNet
    from glancefocus.data.sources import load_data
    from glancefocus.distributed import World
    from glancefocus.evaluation.evaluate import anytime_accuracy, collect_probs

    model, _ = GFNet.from_checkpoint(out / "stage2.safetensors")
    data = load_data(DataConfig(str(colour_data), holdout=0.25), model.config, seed=0)
    probs, targets = collect_probs(model, DataLoader(data.heldout, batch_size=8), World())
    assert anytime_accuracy(probs, targets) == pytest.approx(kept["heldout_accuracy"])




def test_fine_tune_classifier_trains_any_classifier_as_the_glance_is(tiny_data: Path, tmp_path: Path) -> None:
    """A static baseline through the stages' fine-tune: its checkpoint, held-out selection and
    early stop, and the classifier left with the kept epoch's weights."""
    from glancefocus.config import DataConfig, GFNetConfig, TrainConfig
    from glancefocus.data.sources import load_data
    from glancefocus.distributed import World
    from glancefocus.models.checkpoint import load_checkpoint, read_meta
    from glancefocus.training import Run, fine_tune_classifier

    model_config = GFNetConfig(backbone="resnet18", num_classes=2, patch_size=32, T=2, image_size=64).resolved()
    splits = load_data(DataConfig(root=str(tiny_data), holdout=0.25), model_config, seed=0)
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    config = TrainConfig(batch_size=4).for_model(model_config)
    path = fine_tune_classifier(classifier, splits, "static64", config=config, run=Run(tmp_path, World(), quiet=True), epochs=3,
                                patience=1, meta={"data": str(tiny_data)})
    meta = read_meta(path)
    assert path == tmp_path / "static64.safetensors" and meta["data"] == str(tiny_data) and meta["stage"] == "static64"
    assert 1 <= len(meta["history"]) <= 3 and all("heldout_accuracy" in m for m in meta["history"])
    weights = load_checkpoint(path)[0]
    assert all(torch.equal(weights[k], v) for k, v in classifier.state_dict().items())
