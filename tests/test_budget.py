"""Budgeted batch classification (SPEC "Evaluation"): exit fractions, thresholds, accuracy.

The thresholds are checked against a brute-force, one-sample-at-a-time transcription of the
MSDNet dynamic-evaluation procedure the authors' release uses.
"""

from __future__ import annotations

import math

import pytest
import torch

from reference import reference_budgeted, reference_thresholds

from glancefocus import PAPER_QS, budgeted_accuracy, budgeted_curve, exit_fractions, exit_steps, find_thresholds

QS = (0.05, 0.3, 0.55, 0.95, 1.0, 1.05, 1.5, 1.95)


def random_probs(T: int, N: int, C: int, generator: torch.Generator, *, ties: bool = False) -> torch.Tensor:
    logits = torch.randn(T, N, C, generator=generator, dtype=torch.float64) * 2
    probs = torch.softmax(logits, dim=2)
    if ties:
        # Quantise so that many samples share their max probability (exactly equal floats).
        probs = torch.round(probs * 8) / 8
    return probs


# -------------------------------------------------------------------- exit fractions
@pytest.mark.parametrize("T", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("q", QS)
def test_exit_fractions_sum_to_one_and_follow_q_power(q, T):
    f = exit_fractions(q, T)
    assert f.shape == (T,)
    assert float(f.sum()) == pytest.approx(1.0, abs=1e-12)
    expected = [q**t for t in range(1, T + 1)]
    total = sum(expected)
    for got, want in zip(f.tolist(), expected):
        assert got == pytest.approx(want / total, rel=1e-12)
    # ratio of consecutive fractions is q
    for a, b in zip(f.tolist(), f.tolist()[1:]):
        assert b / a == pytest.approx(q, rel=1e-12)


def test_exit_fractions_shape_of_budget():
    assert exit_fractions(1.0, 4).tolist() == pytest.approx([0.25] * 4)
    small, large = exit_fractions(0.05, 5), exit_fractions(1.95, 5)
    assert torch.all(small[:-1] > small[1:])  # q < 1: most exit early
    assert torch.all(large[:-1] < large[1:])  # q > 1: most go to the end
    assert float(small[0]) > 0.9


@pytest.mark.parametrize("T", [0, -1])
def test_exit_fractions_rejects_T_below_one(T):
    with pytest.raises(ValueError):
        exit_fractions(0.5, T)


def test_paper_budgets():
    assert len(PAPER_QS) == 39
    assert PAPER_QS[0] == pytest.approx(0.05)
    assert PAPER_QS[-1] == pytest.approx(1.95)
    assert all(b - a == pytest.approx(0.05) for a, b in zip(PAPER_QS, PAPER_QS[1:]))


# ------------------------------------------------------------------------ thresholds
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("T,N,C", [(1, 10, 3), (2, 7, 3), (3, 50, 5), (4, 101, 10), (5, 64, 4), (7, 33, 2)])
def test_find_thresholds_matches_brute_force(T, N, C, ties):
    g = torch.Generator().manual_seed(1000 * T + N + C + int(ties))
    for trial in range(3):
        probs = random_probs(T, N, C, g, ties=ties)
        for q in QS:
            fractions = exit_fractions(q, T)
            got = find_thresholds(probs, fractions)
            want = reference_thresholds(probs, fractions)
            assert got.shape == (T,)
            assert got.tolist() == want, f"T={T} N={N} q={q} trial={trial}"
            assert got[-1].item() == -math.inf


def test_find_thresholds_float32_probs():
    g = torch.Generator().manual_seed(3)
    probs = random_probs(4, 40, 6, g).float()
    for q in QS:
        fractions = exit_fractions(q, 4)
        assert find_thresholds(probs, fractions).tolist() == reference_thresholds(probs, fractions)


def test_find_thresholds_handpicked_example():
    # N = 10, T = 3, fractions (0.5, 0.3, 0.2): 5 exit at step 1, 3 at step 2.
    conf1 = [0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.4, 0.35, 0.3, 0.2]
    conf2 = [0.1, 0.1, 0.1, 0.1, 0.1, 0.45, 0.95, 0.5, 0.6, 0.7]
    probs = torch.zeros(3, 10, 2, dtype=torch.float64)
    probs[0, :, 0] = torch.tensor(conf1, dtype=torch.float64)
    probs[1, :, 0] = torch.tensor(conf2, dtype=torch.float64)
    probs[2, :, 0] = 0.5
    thresholds = find_thresholds(probs, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    # step 1: the 5th most confident is 0.55; step 2, among the 5 left (0.45 0.95 0.5 0.6 0.7),
    # the 3rd most confident is 0.6 (not 0.1, the value of an already exited sample).
    assert thresholds.tolist() == [0.55, 0.6, -math.inf]


def test_find_thresholds_zero_count_and_unreachable_give_inf():
    probs = torch.full((3, 4, 2), 0.5, dtype=torch.float64)
    probs[0, :, 0] = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    # floor(4 * 0.2) = 0 at step 1 -> nobody exits there: +inf
    th = find_thresholds(probs, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))
    assert th[0].item() == math.inf
    # ties: the 2nd most confident sets eta_1 = 0.9, and all 4 (tied at 0.9) exit at step 1;
    # at step 2 nobody is left, so the asked-for count (2) is unreachable -> +inf.
    probs[0, :, 0] = 0.9
    th = find_thresholds(probs, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    assert th[0].item() == 0.9
    assert th[1].item() == math.inf
    assert th[2].item() == -math.inf


@pytest.mark.parametrize("q", QS)
def test_exits_follow_fractions_without_ties(q):
    T, N = 5, 200
    g = torch.Generator().manual_seed(int(q * 100))
    probs = random_probs(T, N, 7, g)
    conf = probs.max(dim=2).values
    assert len(set(conf.flatten().tolist())) == T * N  # no ties
    fractions = exit_fractions(q, T)
    steps = exit_steps(conf, find_thresholds(probs, fractions))
    counts = torch.bincount(steps - 1, minlength=T).tolist()
    expected = [math.floor(N * float(f)) for f in fractions[:-1]]
    assert counts[:-1] == expected
    assert counts[-1] == N - sum(expected)


def test_find_thresholds_wrong_fraction_count():
    probs = torch.rand(3, 5, 4)
    with pytest.raises(ValueError):
        find_thresholds(probs, exit_fractions(0.5, 4))


# ------------------------------------------------------------------- exits and budget
def test_exit_steps_first_step_reaching_threshold():
    conf = torch.tensor([[0.9, 0.5, 0.2, 0.7], [0.1, 0.6, 0.3, 0.2], [0.0, 0.0, 0.0, 0.0]])
    th = torch.tensor([0.7, 0.6, -math.inf])
    assert exit_steps(conf, th).tolist() == [1, 2, 3, 1]  # ">=" : 0.7 exits at 0.7; steps are 1..T
    # last step always exits, whatever its threshold
    assert exit_steps(conf, torch.tensor([2.0, 2.0, 2.0])).tolist() == [3, 3, 3, 3]
    # batched over budgets
    both = exit_steps(conf, torch.stack([th, torch.tensor([0.0, 0.0, 0.0])]))
    assert both.tolist() == [[1, 2, 3, 1], [1, 1, 1, 1]]


@pytest.mark.parametrize("bad", [2, 4])
def test_wrong_threshold_length_raises(bad):
    T = 3
    probs = torch.softmax(torch.randn(T, 6, 4), dim=2)
    targets = torch.randint(0, 4, (6,))
    thresholds = torch.zeros(bad)
    with pytest.raises(ValueError):
        exit_steps(probs.max(2).values, thresholds)
    with pytest.raises(ValueError):
        budgeted_accuracy(probs, targets, [1.0, 2.0, 3.0], thresholds)


@pytest.mark.parametrize("seed", range(4))
def test_budgeted_accuracy_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    T, N, C = 4, 120, 5
    probs = random_probs(T, N, C, g)
    targets = torch.randint(0, C, (N,), generator=g)
    madds = [1.0e8, 2.5e8, 3.0e8, 4.75e8]
    heldout = random_probs(T, 80, C, g)
    cases = [find_thresholds(heldout, exit_fractions(q, T)) for q in QS]
    cases += [torch.tensor([0.0, 0.0, 0.0, -math.inf]), torch.tensor([math.inf] * 3 + [-math.inf])]
    cases += [torch.rand(T, generator=g, dtype=torch.float64) * 0.6 + 0.2 for _ in range(5)]
    for thresholds in cases:
        accuracy, cost = budgeted_accuracy(probs, targets, madds, thresholds)
        ref_accuracy, ref_cost = reference_budgeted(probs, targets, madds, thresholds)
        assert accuracy == pytest.approx(ref_accuracy, abs=1e-9)
        assert cost == pytest.approx(ref_cost, rel=1e-12)
    # all exit at step 1 -> accuracy and cost of step 1
    acc, cost = budgeted_accuracy(probs, targets, madds, torch.tensor([0.0, 0.0, 0.0, 0.0]))
    assert cost == madds[0]
    assert acc == pytest.approx(100.0 * float((probs[0].argmax(1) == targets).double().mean()))
    # nobody exits early -> cost of all steps
    acc, cost = budgeted_accuracy(probs, targets, madds, torch.tensor([2.0, 2.0, 2.0, -math.inf]))
    assert cost == madds[-1]
    assert acc == pytest.approx(100.0 * float((probs[-1].argmax(1) == targets).double().mean()))


def test_budgeted_curve_equals_single_calls():
    g = torch.Generator().manual_seed(7)
    T, C = 3, 6
    heldout = random_probs(T, 97, C, g, ties=True)
    test = random_probs(T, 61, C, g)
    targets = torch.randint(0, C, (61,), generator=g)
    madds = [0.5e9, 1.1e9, 1.6e9]
    thresholds, curve = budgeted_curve(heldout, test, targets, madds)
    assert thresholds.shape == (39, T)
    assert len(curve) == 39
    for k, q in enumerate(PAPER_QS):
        single = find_thresholds(heldout, exit_fractions(q, T))
        assert thresholds[k].tolist() == single.tolist()
        assert thresholds[k].tolist() == reference_thresholds(heldout, exit_fractions(q, T))
        accuracy, cost = budgeted_accuracy(test, targets, madds, single)
        assert curve[k]["q"] == pytest.approx(q)
        assert curve[k]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert curve[k]["madds"] == pytest.approx(cost, rel=1e-12)
    # more budget (larger q) never exits earlier on average here: costs are increasing overall
    costs = [p["madds"] for p in curve]
    assert costs[0] < costs[-1]
    assert madds[0] <= min(costs) and max(costs) <= madds[-1]


def test_oracle_exit_by_hand() -> None:
    """Three images, T = 3: right at step 2 only, wrong throughout, right at steps 1 and 3."""
    from glancefocus.evaluate import oracle_accuracy

    right, wrong = [0.9, 0.1], [0.1, 0.9]
    probs = torch.tensor([[wrong, wrong, right], [right, wrong, wrong], [wrong, wrong, right]])  # (T, N, C)
    oracle = oracle_accuracy(probs, torch.zeros(3, dtype=torch.long), [1.0, 2.0, 4.0])
    assert oracle["accuracy"] == pytest.approx(200 / 3)
    assert oracle["madds"] == pytest.approx((2.0 + 4.0 + 1.0) / 3)  # exits at steps 2, 3 (last), 1
    assert oracle["by_step"] == pytest.approx([100 / 3, 200 / 3, 200 / 3])
