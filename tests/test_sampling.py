"""The resumable sampler and the seeded augmentation, by hand: what a resumed or distributed
run reads depends only on (seed, epoch, rank, world) and (seed, stage, epoch, index)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from glancefocus.data.sampling import ResumableSampler, SeededAugmentation


def test_ordered_sampler_pads_and_deals_round_robin() -> None:
    # 5 samples over 2 ranks: ceil(5 / 2) = 3 each, so the order 0 1 2 3 4 is padded with its
    # first sample to 0 1 2 3 4 0 and dealt round robin: rank 0 reads 0 2 4, rank 1 reads 1 3 0.
    ranks = [ResumableSampler(5, shuffle=False, rank=r, world=2) for r in (0, 1)]
    assert [list(s) for s in ranks] == [[0, 2, 4], [1, 3, 0]]
    assert [len(s) for s in ranks] == [3, 3]
    # the all-gather's rows in rank order, from either rank
    assert ranks[0].gathered_indices().tolist() == ranks[1].gathered_indices().tolist() == [0, 2, 4, 1, 3, 0]
    # one process (the defaults: rank 0 of 1) reads everything once, in order
    single = ResumableSampler(4, shuffle=False)
    assert list(single) == [0, 1, 2, 3] and len(single) == 4
    assert single.gathered_indices().tolist() == [0, 1, 2, 3]


def test_shuffled_order_depends_only_on_seed_and_epoch() -> None:
    # Pinned orders: a checkpoint saved mid-epoch resumes into exactly this order, so the
    # seeding must not change (nor read the global generator).
    torch.manual_seed(123)
    fresh = ResumableSampler(8, shuffle=True)
    assert list(fresh) == [4, 0, 7, 3, 2, 5, 1, 6]  # seed 0, epoch 0: the defaults
    torch.manual_seed(456)
    assert list(ResumableSampler(8, shuffle=True, seed=0)) == [4, 0, 7, 3, 2, 5, 1, 6]
    fresh.set_epoch(0)
    assert list(fresh) == [4, 0, 7, 3, 2, 5, 1, 6]
    assert list(ResumableSampler(8, shuffle=True, seed=1)) == [6, 1, 2, 3, 4, 7, 5, 0]
    later = ResumableSampler(8, shuffle=True, seed=1)
    later.set_epoch(2)
    assert list(later) == [6, 1, 5, 3, 7, 0, 4, 2]
    # 7 samples, 3 ranks: the shuffled order padded to 9 and dealt; rank 1 of it
    third = ResumableSampler(7, shuffle=True, seed=3, rank=1, world=3)
    third.set_epoch(1)
    gathered = third.gathered_indices().tolist()
    assert gathered == [6, 4, 5, 3, 2, 6, 1, 0, 3]
    assert list(third) == gathered[3:6] == [3, 2, 6]
    assert sorted(set(gathered)) == list(range(7))


def test_skipping_resumes_mid_epoch_and_the_next_epoch_reads_everything() -> None:
    sampler = ResumableSampler(8, shuffle=True, seed=1)
    sampler.set_epoch(2, skip_samples=3)  # 3 samples were consumed before the resume
    assert list(sampler) == [3, 7, 0, 4, 2] and len(sampler) == 5
    sampler.set_epoch(3)  # no skip given: a new epoch starts from its first sample
    assert len(list(sampler)) == len(sampler) == 8


class _Drawn(Dataset):
    """Sample i is a fresh draw from the CPU generator: what a random augmentation reads."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> float:
        return float(torch.rand(()))


def test_augmentation_depends_on_seed_stage_epoch_and_index_only() -> None:
    fresh = SeededAugmentation(_Drawn(), seed=5)
    first = [fresh[i] for i in range(4)]
    assert len(set(first)) == 4  # each index its own draw
    torch.manual_seed(99)  # the global generator plays no part
    assert [fresh[i] for i in range(4)] == first
    # a fresh wrapper is at epoch 0 of stage "": the same as setting it there explicitly
    explicit = SeededAugmentation(_Drawn(), seed=5)
    explicit.set_epoch(0)
    assert [explicit[i] for i in range(4)] == first
    explicit.set_epoch(0, "")
    assert [explicit[i] for i in range(4)] == first
    explicit.set_epoch(1)
    assert explicit[0] != first[0]
    explicit.set_epoch(0, "stage3")
    assert explicit[0] != first[0]
    assert SeededAugmentation(_Drawn(), seed=6)[0] != first[0]


def test_redraw_is_told_the_epoch_and_stage() -> None:
    calls = []
    data = SeededAugmentation(_Drawn(), seed=0, redraw=lambda epoch, stage: calls.append((epoch, stage)))
    data.set_epoch(3, "stage2")
    data.set_epoch(4)
    assert calls == [(3, "stage2"), (4, "")]
