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
    with pytest.raises(ValueError, match=rf"^T must be >= 1 \(got {T}\)$"):
        exit_fractions(0.5, T)


@pytest.mark.parametrize("q", [0, 0.0, -0.5])
def test_exit_fractions_rejects_q_not_above_zero(q):
    # q = 0 would make every q^t zero and the fractions 0/0 = nan: an error, not a nan curve.
    with pytest.raises(ValueError, match=rf"^q must be > 0 \(got {q}\)$"):
        exit_fractions(q, 3)


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
    with pytest.raises(ValueError, match=r"^fractions has 4 entries but probs has T=3 steps$"):
        find_thresholds(probs, exit_fractions(0.5, 4))


def test_find_thresholds_counts_in_float64_whatever_the_fractions_type():
    # N = 10, fractions (0.7, 0.3): floor(10 * 0.7) = 7 exit at step 1 (10 * 0.7 is 7.0 in
    # float64).  Read as float32, 0.7 is 0.699999988 and floor(6.99999988) would give 6: a list
    # of Python floats must count like the float64 fractions.
    conf = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5]
    probs = torch.zeros(2, 10, 2, dtype=torch.float64)
    probs[0, :, 0] = torch.tensor(conf, dtype=torch.float64)
    probs[1, :, 0] = 0.5
    want = [0.65, -math.inf]  # the 7th most confident sets eta_1
    assert find_thresholds(probs, torch.tensor([0.7, 0.3], dtype=torch.float64)).tolist() == want
    assert find_thresholds(probs, [0.7, 0.3]).tolist() == want


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
    message = rf"^expected 3 thresholds \(one per step\), got {bad}$"
    with pytest.raises(ValueError, match=message):
        exit_steps(probs.max(2).values, thresholds)
    with pytest.raises(ValueError, match=message):
        budgeted_accuracy(probs, targets, [1.0, 2.0, 3.0], thresholds)


def test_thresholds_compare_at_the_confidences_precision():
    # As the serving engine does (float32 thresholds against float32 probabilities): a float64
    # threshold is rounded to the confidences' dtype first.  0.69999999 rounds to float32(0.7)
    # = 0.699999988..., so a float32 confidence of 0.7 reaches it and exits at step 1; compared
    # in float64 it would fall 2e-9 short and exit at step 2.
    conf = torch.tensor([[0.7, 0.5], [0.0, 0.0]], dtype=torch.float32)
    thresholds = torch.tensor([0.69999999, -math.inf], dtype=torch.float64)
    assert exit_steps(conf, thresholds).tolist() == [1, 2]
    assert exit_steps(conf, thresholds).tolist() == exit_steps(conf, thresholds.float()).tolist()
    probs = torch.stack([conf, 1 - conf], dim=2)  # (T, N, 2): class 0 is the max where conf >= 0.5
    madds = [1.0, 3.0]
    # sample 0 exits at step 1 predicting class 0 (right), sample 1 at step 2 predicting class 1
    # (wrong): 50 % at (1 + 3) / 2 = 2 multiply-adds
    assert budgeted_accuracy(probs, torch.tensor([0, 0]), madds, thresholds) == (50.0, 2.0)


def test_budgeted_accuracy_of_step_scores_equals_that_of_the_outputs():
    from glancefocus.models.budget import StepScores

    g = torch.Generator().manual_seed(11)
    probs = random_probs(3, 40, 5, g)
    targets = torch.randint(0, 5, (40,), generator=g)
    madds = [1.0, 2.0, 4.0]
    thresholds = torch.stack([find_thresholds(probs, exit_fractions(q, 3)) for q in (0.3, 1.5)])
    scores = StepScores.of(probs)
    assert scores.prediction.tolist() == probs.argmax(dim=2).tolist()
    for th in (thresholds, thresholds[0]):
        got, want = budgeted_accuracy(scores, targets, madds, th), budgeted_accuracy(probs, targets, madds, th)
        if th.dim() == 1:
            assert got == want
        else:
            assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()


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
    from glancefocus.evaluation.evaluate import oracle_accuracy

    right, wrong = [0.9, 0.1], [0.1, 0.9]
    probs = torch.tensor([[wrong, wrong, right], [right, wrong, wrong], [wrong, wrong, right]])  # (T, N, C)
    oracle = oracle_accuracy(probs, torch.zeros(3, dtype=torch.long), [1.0, 2.0, 4.0])
    assert oracle["accuracy"] == pytest.approx(200 / 3)
    assert oracle["madds"] == pytest.approx((2.0 + 4.0 + 1.0) / 3)  # exits at steps 2, 3 (last), 1
    assert oracle["by_step"] == pytest.approx([100 / 3, 200 / 3, 200 / 3])
