"""Data-parallel training on two CPU processes (gloo), as torchrun would launch it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from glancefocus import DataConfig, GFNet, GFNetConfig, TrainConfig
from glancefocus.distributed import World
from glancefocus.evaluation.evaluate import evaluate_checkpoint
from glancefocus.training.trainer import Run
from glancefocus.config.recipes import Recipe, resolve
from glancefocus.training.pipeline import train

from conftest import make_image_folder

# convnext_atto has LayerNorm, not BatchNorm, so a batch split over processes computes the
# same function as the whole batch in one: the runs must agree, not just stay in sync.
CONFIG = dict(backbone="convnext_atto", num_classes=2, patch_size=32, T=3, image_size=64)


TRAIN = TrainConfig(batch_size=8, glance_epochs=2, stage1_epochs=1, stage2_epochs=1, glance_lr=0.05)


def _data(root: str) -> DataConfig:
    return DataConfig(root=root, holdout=0.25, workers=0)  # 24 training images: three whole batches of 8


def _worker(rank: int, world_size: int, init_file: str, data: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        world = World(rank, world_size, torch.device("cpu"))
        run = Run(Path(out), world, quiet=True)
        for stage in ("glance", "stage1", "stage2"):  # each stage starts from the checkpoint rank 0 wrote
            _, model = train(resolve(Recipe("tiny", GFNetConfig(**CONFIG), TRAIN)), [stage], data=_data(data), run=run)
            torch.save(model.state_dict(), Path(out) / f"{stage}.rank{rank}.pt")
        # Each process evaluates its shard of the held-out and val images; rank 0 writes.
        evaluate_checkpoint(Path(out) / "stage2.safetensors", world=world, root=data, json_out=Path(out) / "eval.json",
                            batch_size=6, save=False)
    finally:
        dist.destroy_process_group()


def test_two_processes_stay_identical_and_match_one_process(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=16, size=64)
    out = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(data), str(out)), nprocs=2, join=True)

    for stage in ("glance", "stage1", "stage2"):
        r0, r1 = (torch.load(out / f"{stage}.rank{r}.pt", weights_only=True) for r in range(2))
        for k in r0:
            assert torch.equal(r0[k], r1[k]), f"stage {stage}: {k} differs between the two processes"

    single = tmp_path / "single"
    train(resolve(Recipe("tiny", GFNetConfig(**CONFIG), TRAIN)), ["glance"], data=_data(str(data)), run=Run(single, World(), quiet=True))
    two, one = load_file(str(out / "glance.safetensors")), load_file(str(single / "glance.safetensors"))
    torch.manual_seed(0)
    initial = GFNet(GFNetConfig(**CONFIG)).state_dict()
    encoder = [k for k in one if k.startswith("global_encoder.")]
    assert any(not torch.allclose(one[k], initial[k]) for k in encoder), "the glance stage did not train"
    for k in encoder:  # two processes x 4 images per step == one process x 8 images
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    # Sharded evaluation equals evaluation in one process, padding samples removed.
    two_eval = json.loads((out / "eval.json").read_text())
    one_eval = evaluate_checkpoint(out / "stage2.safetensors", world=World(), root=str(data), batch_size=6, save=False)
    assert two_eval["num_val"] == one_eval["num_val"] == 32 and two_eval["num_heldout"] == one_eval["num_heldout"]
    assert two_eval["anytime_accuracy"] == pytest.approx(one_eval["anytime_accuracy"])
    # Stage II trained π in both processes alike, and only π.
    s1, s2 = (torch.load(out / f"stage{i}.rank0.pt", weights_only=True) for i in (1, 2))
    assert any(not torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("policy."))
    assert all(torch.equal(s1[k], s2[k]) for k in s1 if not k.startswith("policy."))
